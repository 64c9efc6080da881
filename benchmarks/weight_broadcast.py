"""Check 4 of benchmarks/gpu_check.py: learner/weight_transport.py between two Ray actors (sender and receiver).

The payload is the tiny transformer's state dict plus `mib` MiB of float32 tensors of 4 MiB each; the sender
keeps it on the CPU (as the learner's gathered full weights are), the receiver's copy lives on its device (as a
rollout model does). Floating tensors travel in `wire_dtype`. Each broadcast is timed from the driver (the
receive is queued first, as the driver of a run does) and the receiver's tensors are compared with the sender's.

Backends: NCCL between GPU actors, gloo on the CPU (`--device cpu`, a dry run of the same code). NCCL refuses
two ranks of a group on one GPU ("Duplicate GPU detected"), so on a one-GPU machine the two actors (0.5 GPU
each) are expected to fail at communicator set-up: the check reports that error and then times a one-rank
group, the sender alone (packing, headers, the host-to-device copy and the NCCL call, no link). With two or
more GPUs each actor takes a whole GPU and the link is measured.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
TENSOR_MIB = 4


def payload(mib: int, seed: int) -> nn.Module:
    """The tiny transformer beside `mib` MiB of float32 buffers (random from `seed`)."""
    from maskfocus.config import load_config
    from maskfocus.models import load_generator

    torch.manual_seed(seed)
    tiny = load_generator(load_config(ROOT / "configs" / "shapes_tiny.yaml").model).transformer
    big = nn.Module()
    for index in range(max(mib // TENSOR_MIB, 0)):
        big.register_buffer(f"block{index}", torch.randn(TENSOR_MIB * 2**18))
    with torch.no_grad():
        for tensor in tiny.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor))  # differs from the receiver's copy of the shipped weights
    return nn.ModuleDict({"tiny": tiny, "big": big})


def checksum(module: nn.Module, wire_dtype: str | None) -> float:
    """Sum of every tensor as it travels (floating ones in the wire dtype), in float64 on the CPU: the sender's and
    a GPU receiver's sums then add the same numbers in the same order, so equal weights give equal sums exactly."""
    dtype = getattr(torch, wire_dtype) if wire_dtype else None
    total = 0.0
    for tensor in module.state_dict().values():
        value = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        total += float(value.detach().cpu().double().sum())
    return total


class BroadcastEnd:
    """One member of the weight group in a Ray actor: rank 0 sends its payload, rank >= 1 receives into its own."""

    def __init__(self, mib: int, rank: int):
        self.rank = rank
        self.module = payload(mib, seed=rank)
        self.end = None

    def join(self, group) -> str:
        from maskfocus.learner.weight_transport import WeightReceiver, WeightSender

        if self.rank == 0:
            self.end = WeightSender(group)
        else:
            self.end = WeightReceiver(group, self.rank)
            self.module.to(self.end.device)
        return str(self.end.device)

    def broadcast(self, version: int) -> tuple[float, int]:
        start = time.perf_counter()
        nbytes = self.end.broadcast(version, self.module.state_dict())
        return time.perf_counter() - start, nbytes

    def receive(self, version: int) -> float:
        start = time.perf_counter()
        self.end.receive(self.module, expect_version=version)
        return time.perf_counter() - start

    def checksum(self, wire_dtype: str | None) -> float:
        return checksum(self.module, wire_dtype)

    def close(self) -> None:
        self.end.close()


def run_group(ray, ends: list, group, repeats: int, timeout_s: float) -> dict:
    """Join, then `repeats` broadcasts (the first sets up the communicator and is reported apart)."""
    devices = ray.get([end.join.remote(group) for end in ends], timeout=timeout_s)
    seconds, nbytes = [], 0
    for version in range(1, repeats + 2):
        received = [end.receive.remote(version) for end in ends[1:]]
        start = time.perf_counter()
        _, nbytes = ray.get(ends[0].broadcast.remote(version), timeout=timeout_s)
        ray.get(received, timeout=timeout_s)
        seconds.append(time.perf_counter() - start)
    sums = ray.get([end.checksum.remote(group.wire_dtype) for end in ends], timeout=timeout_s)
    assert all(value == sums[0] for value in sums), f"receivers differ from the sender: {sums}"
    ray.get([end.close.remote() for end in ends], timeout=timeout_s)
    steady = sorted(seconds[1:])[len(seconds[1:]) // 2]
    return {
        "world_size": group.world_size,
        "devices": devices,
        "bytes_per_broadcast": nbytes,
        "first_broadcast_s": round(seconds[0], 4),
        "seconds_per_broadcast": round(steady, 4),
        "gbytes_per_s": round(nbytes / steady / 1e9, 3),
        "receivers_equal_sender": len(ends) > 1,
    }


NCCL_DUPLICATE_GPU = ("duplicate gpu", "invalid usage")
"""How NCCL words its refusal of two ranks of one communicator on one device (ncclInvalidUsage)."""


def is_duplicate_gpu_refusal(error: BaseException) -> bool:
    """The error expected on one GPU: NCCL refuses two ranks of a group on one device (ncclInvalidUsage, "Duplicate
    GPU detected" with NCCL_DEBUG=WARN). Any other invalid usage would pass too; the error text is in the result."""
    return any(text in str(error).lower() for text in NCCL_DUPLICATE_GPU)


def check_weight_broadcast(device: torch.device, mib: int, wire_dtype: str, repeats: int, timeout_s: float) -> dict:
    import ray

    from maskfocus.learner.weight_transport import WeightGroup

    is_cuda = device.type == "cuda"
    num_gpus = torch.cuda.device_count() if is_cuda else 0
    per_actor = (1.0 if num_gpus >= 2 else 0.5) if is_cuda else 0.0
    backend = "nccl" if is_cuda else "gloo"
    ray.init(num_cpus=4, num_gpus=num_gpus, include_dashboard=False, log_to_driver=False)
    actor = ray.remote(BroadcastEnd).options(num_cpus=1, num_gpus=per_actor)

    def group(world_size: int) -> WeightGroup:
        name = f"gpu-check-{uuid.uuid4().hex[:8]}"
        return WeightGroup(name, world_size, backend, wire_dtype=wire_dtype, timeout_s=timeout_s)

    result: dict = {"backend": backend, "gpus": num_gpus, "gpu_per_actor": per_actor, "payload_mib": mib}
    try:
        ends = [actor.remote(mib, rank) for rank in range(2)]
        try:
            result["two_ranks"] = run_group(ray, ends, group(2), repeats, timeout_s)
        except Exception as error:
            if not is_cuda or num_gpus >= 2 or not is_duplicate_gpu_refusal(error):
                raise  # anything else (no cupy, a dead actor, a timeout, unequal checksums) is a real failure
            result["two_ranks"] = {"failed": f"{type(error).__name__}: {str(error)[-400:]}"}
            for end in ends:
                ray.kill(end)
            result["one_rank"] = run_group(ray, [actor.remote(mib, 0)], group(1), repeats, timeout_s)
    finally:
        ray.shutdown()
    result["ok"] = True
    return result


if __name__ == "__main__":
    raise SystemExit("weight_broadcast.py is part of benchmarks/gpu_check.py: python benchmarks/gpu_check.py --help")
