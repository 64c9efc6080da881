"""Training rollouts: P prompts x G samples with the entropy router, recording the trajectory (sections 1-2)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from maskfocus.config import RouterConfig, SamplerConfig
from maskfocus.images import to_uint8
from maskfocus.models.base import MaskedGenerator
from maskfocus.router import EntropyRouter
from maskfocus.sampling import sample_with_config
from maskfocus.types import Trajectory


def make_router(config: RouterConfig, group_size: int) -> EntropyRouter | None:
    if not config.enabled:
        return None
    return EntropyRouter(config.a, config.b, config.c, group_size=group_size, scope=config.scope)


def rollout(
    model: MaskedGenerator,
    metadata: Sequence[dict[str, Any]],
    group_size: int,
    sampler: SamplerConfig,
    router: RouterConfig,
    generator: torch.Generator,
    policy_version: int = 0,
    iteration: int = 0,
) -> Trajectory:
    """Sample G images per prompt (groups contiguous) and return the recorded Trajectory."""
    start = time.perf_counter()
    prompts = [meta["prompt"] for meta in metadata for _ in range(group_size)]
    result = sample_with_config(
        model, prompts, sampler, generator, record=True, token_temperature=make_router(router, group_size)
    )
    images = to_uint8(model.decode(result.tokens_BL))
    return Trajectory(
        metadata=list(metadata),
        group_size=group_size,
        tokens_BL=result.tokens_BL,
        masks_BTL=result.masks_BTL,
        x0_BTL=result.x0_BTL,
        entropy_BT=result.entropy_BT,
        routes_BT=result.routes_BT,
        images_BHWC=images,
        policy_version=policy_version,
        iteration=iteration,
        seconds=time.perf_counter() - start,
    )
