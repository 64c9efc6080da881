"""Data parallelism of the trainable transformer: FSDP2 `fully_shard` per block then the root, or DDP.

The model code holds no sharding (STYLE.md); this file applies it. On CPU the process group is gloo
(Ray Train's default without GPUs), on GPU NCCL. Each rank's loss is normalised by the global count of
scored tokens divided by the world size: FSDP2's reduce-scatter and DDP's all-reduce both average the
gradients over ranks, so the mean of the ranks' gradients equals the single-worker gradient.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from maskfocus.update import merge_metrics


def wrap(module: nn.Module, strategy: Literal["fsdp", "ddp"], blocks: Sequence[nn.Module]) -> nn.Module:
    """FSDP2: shard each of `blocks` (the adapter's `MaskedGenerator.blocks()`: every repeated block, so that one
    block's weights are gathered at a time) then the root, in place (the same object, its parameters now
    DTensors). DDP: a wrapper whose forward is the module's. Needs an initialized process group."""
    if strategy == "fsdp":
        if not blocks:  # the root alone would gather every weight at once: no sharding's memory saving
            raise ValueError(
                f"FSDP2 needs the model's repeated blocks, and the adapter's blocks() found none in "
                f"{type(module).__name__}; use ray.learner_strategy: ddp, or name its blocks in the adapter"
            )
        quiet_view_output_warning()
        for block in blocks:
            fully_shard(block)
        fully_shard(module)
        return module
    device_ids = [torch.cuda.current_device()] if next(module.parameters()).is_cuda else None
    return DistributedDataParallel(module, device_ids=device_ids)


def shard_reference(
    reference: nn.Module | None, policy: nn.Module, strategy: Literal["fsdp", "ddp"], blocks: Sequence[nn.Module]
) -> nn.Module | None:
    """The frozen reference (a copy of `policy` made before it was wrapped) sharded as `wrap` shards the policy:
    FSDP2 on the copy's blocks of the same names, then its root, so each rank holds its share of the reference
    rather than a whole float32 copy. Every rank runs the same reference forwards (one per selected step), so its
    gathers line up. DDP (full replicas anyway) and no reference: as given. Call before `wrap(policy, ...)`."""
    if reference is None or strategy != "fsdp":
        return reference
    names = {id(module): name for name, module in policy.named_modules()}
    for block in blocks:
        fully_shard(reference.get_submodule(names[id(block)]))
    fully_shard(reference)
    return reference


def quiet_view_output_warning() -> None:
    """diffusers' UVitBlock returns a view (`permute(...).view(...)`), and FSDP2 warns at every backward that an
    in-place op on such a view would skip its pre-backward hook. UVit2DModel applies none to a block's output, and
    the sharded learner's updates equal the in-process learner's (tests/test_driver.py, eager learners), so the
    warning - three per iteration, about 750 per run - says nothing here; other warnings stay."""
    warnings.filterwarnings(
        "ignore", message=r"FSDP2-wrapped module \(FSDPUVitBlock\) returned a view", category=UserWarning
    )


def unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def global_token_count(world_size: int, device: torch.device) -> Callable[[torch.Tensor], float]:
    """count_tokens for PolicyUpdater: the all-reduced number of scored tokens, divided by the world size
    (see the module docstring); with one rank it is the local count."""

    def count(loss_mask_BL: torch.Tensor) -> float:
        total = loss_mask_BL.sum().to(device=device, dtype=torch.float64)
        if world_size > 1:
            dist.all_reduce(total)
        return float(total) / world_size

    return count


def average_metrics(metrics: dict[str, float], world_size: int) -> dict[str, float]:
    """The ranks' metrics merged (maskfocus.update.merge_metrics: rank-mean, max for `*_max`, token-weighted for
    per-token means); keys missing on a rank are left out of its mean."""
    if world_size == 1:
        return metrics
    gathered: list[dict[str, float]] = [{} for _ in range(world_size)]
    dist.all_gather_object(gathered, metrics)
    return merge_metrics(gathered)
