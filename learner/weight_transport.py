"""Weight broadcast from learner rank 0 to every rollout worker over `ray.util.collective`
(`ray.weight_transport: collective`; DESIGN.md, Data flow step 4).

Both sides derive the same WeightLayout from their own copy of the transformer's state dict, so only numbers
travel: tensors in name order, grouped by dtype into flat buckets of at most `bucket_bytes` each (a handful of
broadcasts instead of hundreds of tiny ones). Floating tensors travel in the wire dtype, the rollout model's
(`model.dtype`): a bfloat16 rollout receives half the bytes of the learner's float32 master weights.
One broadcast from rank 0 is
  1. int64 [version, layout fingerprint, number of buckets]
  2. int64 [dtype code, numel] per bucket
  3. every bucket, one flat buffer each, sent as its bytes (uint8): Ray's NCCL dtype map has no int16, and has
     bfloat16 only with a cupy that defines it, while uint8 and int64 travel everywhere.
A receiver whose layout differs still receives every bucket (into scratch buffers of the announced sizes), so
the group stays in step, then raises a ValueError naming both layouts.

Backends. NCCL (ray.util.collective's cupy-based communicator, independent of torch.distributed) joins GPU
processes, one GPU per member (NCCL refuses two ranks of a group on one device). GLOO cannot serve a run on
CPU: Ray 2.60's GLOO group (collective_group/torch_gloo_collective_group.py) calls init_process_group only
when the process has no default torch.distributed group and otherwise builds on the existing one, and a Ray
Train learner worker already has one (its learner group's). So the driver accepts `collective` only with GPUs
(NCCL) and CPU runs use the object store; GLOO between plain actors is what the CPU tests run this code on.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import ray.util.collective as collective
import torch
from torch import nn

from maskfocus.config import RunConfig

WIRE_DTYPES = (
    torch.float32,
    torch.bfloat16,
    torch.float16,
    torch.float64,
    torch.int64,
    torch.int32,
    torch.int16,
    torch.int8,
    torch.uint8,
    torch.bool,
)
"""Dtypes that can travel, in bucket order; a dtype's index is its code in the header."""

DEFAULT_BUCKET_BYTES = 512 * 2**20
"""Largest flat buffer (a tensor larger than this travels alone): bounds the sender's extra memory."""

HEADER_LENGTH = 3
"""[version, fingerprint, number of buckets]."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    """Dtype on the wire."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Bucket:
    """Tensors of one dtype, back to back in one flat buffer."""

    dtype: torch.dtype
    tensors: tuple[TensorSpec, ...]

    @property
    def numel(self) -> int:
        return sum(spec.numel for spec in self.tensors)


@dataclass(frozen=True)
class WeightLayout:
    buckets: tuple[Bucket, ...]

    @property
    def nbytes(self) -> int:
        return sum(bucket.numel * bucket.dtype.itemsize for bucket in self.buckets)

    @property
    def fingerprint(self) -> int:
        """A signed 64-bit hash of every tensor's name, shape and wire dtype, in bucket order."""
        text = "\n".join(f"{s.name} {list(s.shape)} {s.dtype}" for b in self.buckets for s in b.tensors)
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)

    def sizes(self) -> list[int]:
        """[dtype code, numel] of each bucket, flattened (the header's second part)."""
        return [value for b in self.buckets for value in (WIRE_DTYPES.index(b.dtype), b.numel)]

    def describe(self) -> str:
        num_tensors = sum(len(bucket.tensors) for bucket in self.buckets)
        return f"{num_tensors} tensors, {self.nbytes} bytes in {describe_sizes(self.sizes())}"


def describe_sizes(sizes: list[int]) -> str:
    buckets = [f"{WIRE_DTYPES[code]}[{numel}]" for code, numel in zip(sizes[::2], sizes[1::2], strict=True)]
    return f"buckets {', '.join(buckets)}"


def weight_layout(
    state_dict: Mapping[str, torch.Tensor],
    wire_dtype: torch.dtype | None = None,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> WeightLayout:
    """The layout of `state_dict`: names sorted, floating tensors in `wire_dtype` (None: their own dtype),
    grouped by dtype in WIRE_DTYPES order and cut into buckets of at most `bucket_bytes`."""
    specs = []
    for name in sorted(state_dict):
        tensor = state_dict[name]
        dtype = wire_dtype if wire_dtype is not None and tensor.is_floating_point() else tensor.dtype
        if dtype not in WIRE_DTYPES:
            raise ValueError(f"weight transport: {name} has dtype {dtype}, which cannot travel ({WIRE_DTYPES})")
        specs.append(TensorSpec(name, tuple(tensor.shape), dtype))
    buckets: list[Bucket] = []
    for dtype in WIRE_DTYPES:
        current: list[TensorSpec] = []
        for spec in (spec for spec in specs if spec.dtype == dtype):
            if current and (sum(s.numel for s in current) + spec.numel) * dtype.itemsize > bucket_bytes:
                buckets.append(Bucket(dtype, tuple(current)))
                current = []
            current.append(spec)
        if current:
            buckets.append(Bucket(dtype, tuple(current)))
    return WeightLayout(tuple(buckets))


def pack(bucket: Bucket, state_dict: Mapping[str, torch.Tensor], device: torch.device | str = "cpu") -> torch.Tensor:
    """One bucket's tensors, cast to its dtype and concatenated into a flat buffer on `device` (concatenated
    where the tensors are, then moved in one copy)."""
    parts = [state_dict[spec.name].detach().reshape(-1).to(bucket.dtype) for spec in bucket.tensors]
    return torch.cat(parts).to(device)


def as_bytes(buffer: torch.Tensor) -> torch.Tensor:
    """A flat buffer's bytes, as a uint8 view (no copy): what travels, whatever the bucket's dtype."""
    return buffer.view(torch.uint8)


def unpack(bucket: Bucket, buffer: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views into a flat buffer, one per tensor of the bucket, in their shapes."""
    assert buffer.numel() == bucket.numel and buffer.dtype == bucket.dtype, (buffer.shape, buffer.dtype, bucket)
    pieces = buffer.split([spec.numel for spec in bucket.tensors])
    return {spec.name: piece.view(spec.shape) for spec, piece in zip(bucket.tensors, pieces, strict=True)}


def flatten(
    layout: WeightLayout, state_dict: Mapping[str, torch.Tensor], device: torch.device | str = "cpu"
) -> list[torch.Tensor]:
    return [pack(bucket, state_dict, device) for bucket in layout.buckets]


def unflatten(layout: WeightLayout, buffers: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for bucket, buffer in zip(layout.buckets, buffers, strict=True):
        tensors.update(unpack(bucket, buffer))
    return tensors


@dataclass(frozen=True)
class WeightGroup:
    """What every member needs to join the broadcast group (picklable: the driver hands it to each of them)."""

    name: str
    world_size: int
    """1 (learner rank 0, the source) + the number of rollout workers."""
    backend: str
    """"nccl" (GPU) or "gloo" (plain CPU actors only; see the module docstring)."""
    wire_dtype: str | None = None
    """Floating tensors travel in this dtype (a torch dtype name); None = the sender's own."""
    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    timeout_s: float = 600.0
    """Longest wait for one collective call (NCCL has no timeout of its own: a missing peer would hang it)."""

    @classmethod
    def for_run(cls, config: RunConfig, name: str) -> WeightGroup:
        ray_config = config.ray
        return cls(
            name=name,
            world_size=1 + ray_config.num_rollout_workers,
            backend="nccl" if ray_config.learner_gpus > 0 else "gloo",
            wire_dtype=config.model.dtype,
            timeout_s=ray_config.timeout_s,
        )

    def layout(self, state_dict: Mapping[str, torch.Tensor]) -> WeightLayout:
        wire_dtype = getattr(torch, self.wire_dtype) if self.wire_dtype else None
        return weight_layout(state_dict, wire_dtype, self.bucket_bytes)

    def device(self) -> torch.device:
        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")


class _Member:
    """One process's membership of the group: joining it and bounded broadcasts."""

    def __init__(self, group: WeightGroup, rank: int, device: torch.device | None):
        if group.backend == "nccl" and not collective.nccl_available():
            raise RuntimeError(
                "ray.weight_transport: collective needs ray.util.collective's NCCL backend, which needs cupy on every "
                "GPU node (pip install cupy-cuda12x or cupy-cuda13x, matching torch's CUDA)"
            )
        self.group, self.rank = group, rank
        self.device = device if device is not None else group.device()
        self.stuck = False
        """A broadcast timed out: its call may still be running in its helper thread."""
        # GLOO joins here (all ranks must call at once); NCCL meets at the first broadcast.
        collective.init_collective_group(
            group.world_size, rank, backend=group.backend, group_name=group.name, gloo_timeout=_ms(group.timeout_s)
        )

    def _broadcast(self, tensor: torch.Tensor, what: str) -> None:
        """Broadcast from rank 0 in place, finished on the device within the group's timeout."""

        def step() -> None:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)  # this runs in a helper thread
            collective.broadcast(tensor, src_rank=0, group_name=self.group.name)
            if self.device.type == "cuda":  # NCCL runs on its own stream; the buffer is ready (or free) after this
                torch.cuda.synchronize(self.device)

        try:
            _bounded(
                step, self.group.timeout_s, f"weight broadcast of {what} (group {self.group.name}, rank {self.rank})"
            )
        except TimeoutError:
            self.stuck = True
            raise

    def close(self) -> None:
        """Leave the group (rank 0 of NCCL also removes the group's named rendezvous actor). After a timed-out
        broadcast the group is left as it is: destroying a communicator that a call is still inside can block for
        good, and the run is stopping anyway (the process and its communicator go with it). rank 0's NCCL
        rendezvous actor, which Ray detaches, then stays until the cluster stops."""
        if self.stuck:
            return
        if collective.is_group_initialized(self.group.name):
            collective.destroy_collective_group(self.group.name)


class WeightSender(_Member):
    """Rank 0: broadcasts versioned weights."""

    def __init__(self, group: WeightGroup, device: torch.device | None = None):
        super().__init__(group, 0, device)

    def broadcast(self, version: int, state_dict: Mapping[str, torch.Tensor]) -> int:
        """Send `state_dict` as `version` to every receiver (blocks until they have it); returns the bytes sent."""
        layout = self.group.layout(state_dict)
        sizes = layout.sizes()
        header = [version, layout.fingerprint, len(layout.buckets)]
        self._broadcast(torch.tensor(header, dtype=torch.int64, device=self.device), "the header")
        self._broadcast(torch.tensor(sizes, dtype=torch.int64, device=self.device), "the bucket sizes")
        for index, bucket in enumerate(layout.buckets):  # one bucket in memory at a time
            self._broadcast(as_bytes(pack(bucket, state_dict, self.device)), f"bucket {index}")
        return layout.nbytes


class WeightReceiver(_Member):
    """Rank >= 1: receives versioned weights into a module."""

    def __init__(self, group: WeightGroup, rank: int, device: torch.device | None = None):
        assert 1 <= rank < group.world_size, (rank, group.world_size)
        super().__init__(group, rank, device)

    def receive(self, into: nn.Module, expect_version: int | None = None) -> int:
        """Take part in rank 0's next broadcast and copy the weights into `into` (its state dict tensors, in place);
        returns the version received. Raises ValueError, after the whole broadcast and with the module's weights
        unchanged, when the layouts differ or the version is not `expect_version`."""
        targets = into.state_dict()
        layout = self.group.layout(targets)
        header = torch.zeros(HEADER_LENGTH, dtype=torch.int64, device=self.device)
        self._broadcast(header, "the header")
        version, fingerprint, num_buckets = header.tolist()
        sizes = torch.zeros(2 * num_buckets, dtype=torch.int64, device=self.device)
        self._broadcast(sizes, "the bucket sizes")
        sizes_list = sizes.tolist()
        problem = None
        if fingerprint != layout.fingerprint or sizes_list != layout.sizes():
            problem = (
                f"weight layout mismatch in group {self.group.name}: the sender's weights (fingerprint {fingerprint}, "
                f"{describe_sizes(sizes_list)}) differ from this receiver's module (fingerprint {layout.fingerprint}, "
                f"{layout.describe()}); both sides must hold the same transformer architecture"
            )
        elif expect_version is not None and version != expect_version:
            problem = f"weight broadcast in group {self.group.name}: expected version {expect_version}, got {version}"
        if problem is not None:  # take part in the rest of the broadcast, keeping the module's weights as they are
            for index, (code, numel) in enumerate(zip(sizes_list[::2], sizes_list[1::2], strict=True)):
                self._broadcast(self._empty_bytes(numel, WIRE_DTYPES[code]), f"bucket {index}")
            raise ValueError(problem)
        with torch.no_grad():
            for index, bucket in enumerate(layout.buckets):
                buffer = self._empty_bytes(bucket.numel, bucket.dtype)
                self._broadcast(buffer, f"bucket {index}")
                for name, value in unpack(bucket, buffer.view(bucket.dtype)).items():
                    targets[name].copy_(value)
        return version

    def _empty_bytes(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A receive buffer for `numel` elements of `dtype`, as the bytes they travel in."""
        return torch.empty(numel * dtype.itemsize, dtype=torch.uint8, device=self.device)


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 1)


def _bounded(step: Callable[[], None], timeout_s: float, what: str) -> None:
    """Run `step` in a helper thread and wait at most `timeout_s`: an NCCL collective whose peer never comes (or
    died) blocks forever, so the caller fails with this message instead of hanging (the process is then unusable
    for the group, and the run stops)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            step()
        except BaseException as error:  # re-raised in the caller's thread
            errors.append(error)

    thread = threading.Thread(target=run, name="weight-broadcast", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"{what}: not finished after {timeout_s:.0f} s (a group member is missing or dead)")
    if errors:
        raise errors[0]
