"""What the machine can do: the dtype that `model.dtype: auto` resolves to, the device of the Ray driver's model, and
waiting for a device's queued work before a clock is read.

bfloat16 halves the weights' bytes, but it is only faster where the hardware computes in it. On a CPU with
AVX512-BF16 the shipped model's compiled rollouts sampled ~30% faster in bfloat16 than in float32; on an
AVX2-only CPU (no bfloat16 instructions) one compiled forward of 64 images took 3.80 s in bfloat16 against
0.50 s in float32 (benchmarks/RESULTS.md, nineteenth session).
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from maskfocus.config import RunConfig


def cpu_has_native_bfloat16() -> bool:
    """AVX512-BF16 or AMX tiles: the CPU instructions torch's bfloat16 kernels use."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def cuda_has_native_bfloat16(device: str) -> bool:
    """The GPU of `device` computes in bfloat16 (compute capability 8.0 or above: A100, H100, L4, ...; not V100 or
    T4). True where this process does not see that GPU: the config of a cluster run is resolved on the head node,
    which may have none, for the workers' GPUs, assumed current."""
    index = torch.device(device).index
    try:
        if not torch.cuda.is_available() or (index or 0) >= torch.cuda.device_count():
            return True
        return torch.cuda.get_device_capability(index) >= (8, 0)
    except RuntimeError:  # a GPU the driver cannot open here (exclusive mode, a failed init): as one not seen
        return True


def wait_for_device(device: torch.device) -> None:
    """Finish the work queued on `device`: CUDA runs it asynchronously, so a clock read before this misses it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def native_sampling_dtype(device: str) -> str:
    """bfloat16 on CUDA GPUs and CPUs with bfloat16 instructions, float32 elsewhere."""
    kind = torch.device(device).type
    if kind == "cuda":
        return "bfloat16" if cuda_has_native_bfloat16(device) else "float32"
    if kind == "cpu" and cpu_has_native_bfloat16():
        return "bfloat16"
    return "float32"


def driver_model_config(config: RunConfig, cuda_available: bool) -> RunConfig:
    """The config of the driver's own copy of the model (final model, evaluation; a rollout worker draws the
    previews): `config`, or with model.device cpu when that is CUDA and this process has no GPU (the head node under
    deploy/submit.sh); says so."""
    if torch.device(config.model.device).type != "cuda" or cuda_available:
        return config
    tqdm.write(
        f"model.device is {config.model.device} but the driver has no GPU: its copy of the model (final model, "
        "evaluation) runs on the CPU"
    )
    return config.model_copy(update={"model": config.model.model_copy(update={"device": "cpu"})})
