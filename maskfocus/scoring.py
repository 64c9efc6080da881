"""The reward worker's job: rewards, step gains, critical-step selection, advantages -> TrainBatch.

Sections 3-5 of ALGORITHM.md. Pure: of the model only the image tokenizer is used, for embeddings (codebook
vectors, or decode + CLIP image embedding).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from maskfocus.config import GRPOConfig, SelectionConfig
from maskfocus.critical import (
    clip_step_embeddings,
    final_embeddings,
    select_steps,
    step_gains,
    vq_step_embeddings,
)
from maskfocus.grpo import gather_steps, group_advantages, newly_unmasked_mask
from maskfocus.models.base import ImageCodec
from maskfocus.rewards.combined import WeightedReward
from maskfocus.types import TrainBatch, Trajectory

ImageEmbed = Callable[[torch.Tensor], torch.Tensor]


def trajectory_gains(
    trajectory: Trajectory, codec: ImageCodec, selection: SelectionConfig, image_embed: ImageEmbed | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_BT, gain_BT): similarity of each step's x0 prediction to the final image, and its change."""
    if selection.embedding == "clip" and image_embed is None:
        raise ValueError("selection.embedding 'clip' needs a CLIP reward model to embed images")
    with torch.no_grad():
        if selection.embedding == "clip":
            # B*T decodes, B at a time: the batch the rollout decoded at once, so memory is bounded as there
            chunk = trajectory.tokens_BL.shape[0]
            step_BTD = clip_step_embeddings(codec.decode, image_embed, trajectory.x0_BTL, chunk_size=chunk)
            final_BD = clip_step_embeddings(codec.decode, image_embed, trajectory.tokens_BL.unsqueeze(1))[:, 0]
        else:
            step_BTD = vq_step_embeddings(codec.codebook_vectors, trajectory.x0_BTL)
            final_BD = final_embeddings(codec.codebook_vectors, trajectory.tokens_BL)
    return step_gains(step_BTD, final_BD, trajectory.group_size, per_sample=selection.per_sample)


def score_trajectory(
    trajectory: Trajectory,
    reward_fn: WeightedReward,
    codec: ImageCodec,
    selection: SelectionConfig,
    grpo: GRPOConfig,
    generator: torch.Generator,
    image_embed: ImageEmbed | None = None,
) -> TrainBatch:
    """Rewards -> advantages, gains -> selected steps, and the states the learner rebuilds."""
    start = time.perf_counter()
    rewards_B, parts = reward_fn(trajectory.images_BHWC, trajectory.metadata_B)
    advantages_B, info = group_advantages(rewards_B, trajectory.group_size, grpo.advantage_eps, grpo.std_normalize)
    valid_B = info.has_signal_B if grpo.drop_zero_groups else info.valid_B
    similarity_BT, gain_BT = trajectory_gains(trajectory, codec, selection, image_embed)
    steps_BK = select_steps(
        gain_BT,
        selection.num_steps,
        selection.strategy,
        trajectory.group_size,
        generator,
        per_sample=selection.per_sample,
    )
    masks_BKL = gather_steps(trajectory.masks_BTL, steps_BK)
    scored_BKL = newly_unmasked_mask(trajectory.masks_BTL, steps_BK) if grpo.tokens == "newly_unmasked" else None
    keep_masks = grpo.remask == "trajectory" or grpo.tokens == "newly_unmasked"
    stats = _batch_stats(trajectory, rewards_B, parts, info, similarity_BT, gain_BT, steps_BK)
    stats["perf/reward_seconds"] = time.perf_counter() - start
    return TrainBatch(
        prompts_B=trajectory.prompts_B,
        tokens_BL=trajectory.tokens_BL,
        steps_BK=steps_BK,
        num_masked_BK=masks_BKL.sum(-1),
        masks_BKL=masks_BKL if keep_masks else None,
        scored_BKL=scored_BKL,
        advantages_B=advantages_B.float(),
        valid_B=valid_B,
        policy_version=trajectory.policy_version,
        iteration=trajectory.iteration,
        stats=stats,
    )


def tag_rewards(metadata_B: list[dict], rewards_B: torch.Tensor) -> dict[str, float]:
    """`reward/tag/<tag>`: mean finite reward of this batch's samples of each tag it holds (none without tags); the
    finite rewards of a group skipped for a non-finite one count, as in reward/mean."""
    by_tag: dict[str, list[float]] = {}
    for meta, reward in zip(metadata_B, rewards_B.tolist(), strict=True):
        if "tag" in meta and math.isfinite(reward):  # NaN or infinite: left out, as in reward/mean
            by_tag.setdefault(meta["tag"], []).append(reward)
    return {f"reward/tag/{tag}": sum(values) / len(values) for tag, values in by_tag.items()}


def _batch_stats(trajectory, rewards_B, parts, info, similarity_BT, gain_BT, steps_BK) -> dict[str, float]:
    finite = torch.isfinite(rewards_B)
    stats = {
        "reward/mean": rewards_B[finite].mean().item() if finite.any() else float("nan"),
        "reward/std": rewards_B[finite].std().item() if finite.sum() > 1 else 0.0,
        # every group without learning signal: all-equal rewards, or skipped for a non-finite reward
        "reward/zero_adv_group_fraction": (info.num_zero_groups + info.num_nan_groups) / info.num_groups,
        "reward/nan_groups": float(info.num_nan_groups),
        "reward/nan_group_fraction": info.num_nan_groups / info.num_groups,
        "router/exploratory_fraction": trajectory.routes_BT.float().mean().item(),
        "rollout/entropy_mean": trajectory.entropy_BT.mean().item(),
        "rollout/seconds": trajectory.seconds,
        "select/similarity_first": similarity_BT[:, 0].mean().item(),
        "select/gain_max": gain_BT[:, 1:].max().item() if gain_BT.shape[1] > 1 else 0.0,
        "select/mean_step": steps_BK.float().mean().item(),
    }
    for name, values in parts.items():
        ok = torch.isfinite(values)
        stats[f"reward/{name}"] = values[ok].mean().item() if ok.any() else float("nan")
    stats.update(tag_rewards(trajectory.metadata_B, rewards_B))
    histogram = torch.bincount(steps_BK.flatten(), minlength=trajectory.masks_BTL.shape[1]).tolist()
    stats.update({f"select/step_{t:02d}": float(count) / steps_BK.shape[0] for t, count in enumerate(histogram)})
    return stats
