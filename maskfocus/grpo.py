"""GRPO on the selected steps: group advantages, training inputs, the clipped policy loss (ALGORITHM.md section 4).

Pure functions, no process group: a learner spread over several workers passes the global masked-token count as
`num_tokens`, so that summing the workers' losses (or averaging their gradients times the worker count) gives the
mean over all masked tokens of the batch.

Shape legend: B samples, P groups (prompts), G group size, T sampling steps, K selected steps, L image tokens,
V codebook size, N masked tokens gathered into one vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from maskfocus.router import token_entropy

RemaskMode = Literal["random", "trajectory"]
REMASK_MODES: tuple[str, ...] = ("random", "trajectory")


@dataclass(frozen=True)
class AdvantageInfo:
    """What `group_advantages` saw, for metrics and for dropping groups without signal."""

    num_groups: int
    num_zero_groups: int
    """Groups with finite, all-equal rewards: advantages exactly 0, no learning signal."""
    num_nan_groups: int
    """Groups with a NaN or infinite reward: skipped (advantages 0)."""
    valid_B: torch.Tensor
    """False for the samples of skipped (non-finite) groups."""
    has_signal_B: torch.Tensor
    """True for the samples of groups that are valid and not all-equal."""


def group_advantages(
    rewards_B: torch.Tensor, group_size: int, eps: float = 1e-4, std_normalize: bool = True
) -> tuple[torch.Tensor, AdvantageInfo]:
    """A = (r - mean) / (std + eps) within each contiguous group (b // group_size), unbiased std; (B,) float32.
    With `std_normalize` false, A = r - mean.

    Groups with equal rewards (and any group of size 1) get exactly 0. A group holding a NaN/inf reward gets 0 for
    every sample and is marked invalid; it never produces a NaN and never affects other groups.
    """
    if group_size < 1 or rewards_B.shape[0] % group_size != 0:
        raise ValueError(f"batch size {rewards_B.shape[0]} is not a multiple of the group size {group_size}")
    rewards_PG = rewards_B.double().view(-1, group_size)
    finite_P = torch.isfinite(rewards_PG).all(-1)
    safe_PG = torch.where(torch.isfinite(rewards_PG), rewards_PG, torch.zeros_like(rewards_PG))
    equal_P = finite_P & (safe_PG.amax(-1) == safe_PG.amin(-1))
    mean_P1 = safe_PG.mean(-1, keepdim=True)
    std_P1 = safe_PG.std(-1, keepdim=True) if group_size > 1 else torch.zeros_like(mean_P1)
    signal_P = finite_P & ~equal_P
    scale_P1 = std_P1 + eps if std_normalize else torch.ones_like(std_P1)
    advantages_PG = torch.where(signal_P.unsqueeze(-1), (safe_PG - mean_P1) / scale_P1, 0.0)
    info = AdvantageInfo(
        num_groups=rewards_PG.shape[0],
        num_zero_groups=int(equal_P.sum()),
        num_nan_groups=int((~finite_P).sum()),
        valid_B=finite_P.repeat_interleave(group_size),
        has_signal_B=signal_P.repeat_interleave(group_size),
    )
    return advantages_PG.flatten().float(), info


def build_training_inputs(
    final_tokens_BL: torch.Tensor,
    num_masked_B: torch.Tensor,
    mask_id: int,
    generator: torch.Generator | None = None,
    remask: RemaskMode = "random",
    trajectory_mask_BL: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs_BL, loss_mask_BL): the final tokens with num_masked_B[b] positions of sample b set to `mask_id`.

    remask "random": uniformly random positions, a fresh draw per sample from `generator`.
    remask "trajectory": the rollout's own input mask of the step (`trajectory_mask_BL`, its counts must match).
    The loss mask is the masked positions: every masked token is scored ("all masked token optimization").
    """
    if remask not in REMASK_MODES:
        raise ValueError(f"remask must be one of {REMASK_MODES}, got {remask!r}")
    num_tokens = final_tokens_BL.shape[1]
    num_masked_B = num_masked_B.to(final_tokens_BL.device)
    assert ((num_masked_B >= 0) & (num_masked_B <= num_tokens)).all(), "mask counts out of [0, L]"
    if remask == "trajectory":
        if trajectory_mask_BL is None:
            raise ValueError("remask 'trajectory' needs the rollout's mask (trajectory_mask_BL)")
        mask_BL = trajectory_mask_BL.to(device=final_tokens_BL.device, dtype=torch.bool)
        assert torch.equal(mask_BL.sum(-1), num_masked_B.long()), "trajectory mask counts differ from num_masked_B"
    else:
        if generator is None:
            raise ValueError("remask 'random' needs a torch.Generator")
        mask_BL = random_mask(num_masked_B, num_tokens, generator).to(final_tokens_BL.device)
    return final_tokens_BL.masked_fill(mask_BL, mask_id), mask_BL


def random_mask(num_masked_B: torch.Tensor, num_tokens: int, generator: torch.Generator) -> torch.Tensor:
    """Exactly num_masked_B[b] uniformly random True positions in row b, (B, L) bool, on the generator's device."""
    keys_BL = torch.rand(num_masked_B.shape[0], num_tokens, generator=generator, device=generator.device)
    rank_BL = keys_BL.argsort(-1).argsort(-1)  # a uniformly random permutation of 0..L-1 per row
    return rank_BL < num_masked_B.to(rank_BL.device).unsqueeze(-1)


def gather_steps(values_BT: torch.Tensor, steps_BK: torch.Tensor) -> torch.Tensor:
    """values_BT[b, steps_BK[b, k], ...] -> (B, K, ...): pick per-step records (masks, counts) of the selected steps."""
    index = steps_BK.view(*steps_BK.shape, *([1] * (values_BT.dim() - 2)))
    return values_BT.gather(1, index.expand(*steps_BK.shape, *values_BT.shape[2:]))


def newly_unmasked_mask(masks_BTL: torch.Tensor, steps_BK: torch.Tensor) -> torch.Tensor:
    """Tokens committed at each selected step, (B, K, L) bool: m_j & ~m_{j+1}, and m_j itself at the last step.

    `masks_BTL` are the recorded input masks (True = masked going into the step); the `tokens: newly_unmasked`
    baseline scores only these tokens, on the trajectory state m_j.
    """
    after_BTL = torch.cat([masks_BTL[:, 1:], torch.zeros_like(masks_BTL[:, :1])], dim=1)
    return gather_steps(masks_BTL & ~after_BTL, steps_BK)


def token_log_probs(logits_BLV: torch.Tensor, targets_BL: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[target] at every position, (B, L) float32, without materialising the log-softmax."""
    logits_BLV = logits_BLV.float()
    picked_BL = logits_BLV.gather(-1, targets_BL.unsqueeze(-1)).squeeze(-1)
    return picked_BL - torch.logsumexp(logits_BLV, dim=-1)


def policy_loss(
    logp_BL: torch.Tensor,
    old_logp_BL: torch.Tensor,
    advantages_B: torch.Tensor,
    loss_mask_BL: torch.Tensor,
    *,
    clip_eps: float | None,
    beta: float,
    ref_logp_BL: torch.Tensor | None = None,
    num_tokens: int | float | None = None,
    behaviour_logp_BL: torch.Tensor | None = None,
    behaviour_cap: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """-sum over masked tokens of (surrogate - beta * k3) / num_tokens; gradients reach `logp_BL` only.

    ratio = exp(logp - old); surrogate = min(ratio A, clip(ratio, 1 - eps, 1 + eps) A) (plain ratio A when
    `clip_eps` is None); k3 = exp(ref - logp) - (ref - logp) - 1. `num_tokens` defaults to the local masked count;
    a multi-worker caller passes the global one. With beta == 0 no reference is needed (if one is given, k3 is
    still reported). Metrics: loss/policy and loss/kl use the loss's normalisation (loss = policy + beta * kl);
    ratio mean/max and the clip fraction (share of tokens where the clip binds) are over the local masked tokens.

    With `behaviour_logp_BL` (a stale batch: the log-probs under the policy version that sampled it) each token's
    surrogate is weighted by w = min(exp(old - behaviour), behaviour_cap), detached: the decoupled PPO objective,
    whose ratio and clip stay around the old (proximal) policy. Extra metrics, over the local masked tokens:
    loss/behaviour_weight_mean, loss/behaviour_capped_fraction and loss/behaviour_abs_log_ratio (mean |old -
    behaviour|, how far the policy moved since the batch was sampled).
    """
    if beta > 0 and ref_logp_BL is None:
        raise ValueError(f"beta = {beta} > 0 needs the reference log-probs (ref_logp_BL)")
    mask_BL = loss_mask_BL.bool()
    # Zero the log-probs outside the mask so that no -inf there can turn the masked sums (or their grads) into NaN.
    logp_BL = torch.where(mask_BL, logp_BL, torch.zeros_like(logp_BL))
    old_BL = torch.where(mask_BL, old_logp_BL.detach(), torch.zeros_like(logp_BL))
    adv_B1 = advantages_B.detach().to(logp_BL.dtype).unsqueeze(-1)
    ratio_BL = torch.exp(logp_BL - old_BL)
    unclipped_BL = ratio_BL * adv_B1
    surrogate_BL = unclipped_BL
    if clip_eps is not None:
        surrogate_BL = torch.minimum(unclipped_BL, ratio_BL.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv_B1)
    behaviour_metrics = {}
    if behaviour_logp_BL is not None:
        weight_BL, behaviour_metrics = behaviour_weights(old_BL, behaviour_logp_BL, mask_BL, behaviour_cap)
        surrogate_BL, unclipped_BL = surrogate_BL * weight_BL, unclipped_BL * weight_BL
    k3_BL = torch.zeros_like(logp_BL)
    if ref_logp_BL is not None:
        delta_BL = torch.where(mask_BL, ref_logp_BL.detach(), torch.zeros_like(logp_BL)) - logp_BL
        k3_BL = torch.exp(delta_BL) - delta_BL - 1.0
    denominator = float(mask_BL.sum() if num_tokens is None else num_tokens)
    denominator = denominator if denominator > 0 else 1.0  # none scored: a zero loss; a share below 1 is kept
    policy = -(surrogate_BL * mask_BL).sum() / denominator
    kl = (k3_BL * mask_BL).sum() / denominator
    loss = policy + beta * kl if beta > 0 else policy
    metrics = _loss_metrics(loss, policy, kl, ratio_BL, unclipped_BL, surrogate_BL, mask_BL)
    return loss, {**metrics, **behaviour_metrics}


def behaviour_weights(
    old_BL: torch.Tensor, behaviour_logp_BL: torch.Tensor, mask_BL: torch.Tensor, cap: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """Truncated importance weights min(exp(old - behaviour), cap) of a stale batch's tokens (1 off the mask,
    detached), and their metrics over the masked tokens."""
    with torch.no_grad():
        behaviour_BL = torch.where(mask_BL, behaviour_logp_BL.to(old_BL.dtype), old_BL)
        log_ratio_BL = old_BL - behaviour_BL
        raw_BL = torch.exp(log_ratio_BL)
        weight_BL = raw_BL.clamp(max=cap)
        log_ratio_N, raw_N = log_ratio_BL[mask_BL], raw_BL[mask_BL]
        empty = raw_N.numel() == 0
        return weight_BL, {
            "loss/behaviour_weight_mean": 1.0 if empty else float(weight_BL[mask_BL].mean()),
            "loss/behaviour_capped_fraction": 0.0 if empty else float((raw_N > cap).float().mean()),
            "loss/behaviour_abs_log_ratio": 0.0 if empty else float(log_ratio_N.abs().mean()),
        }


def _loss_metrics(
    loss: torch.Tensor,
    policy: torch.Tensor,
    kl: torch.Tensor,
    ratio_BL: torch.Tensor,
    unclipped_BL: torch.Tensor,
    surrogate_BL: torch.Tensor,
    mask_BL: torch.Tensor,
) -> dict[str, float]:
    with torch.no_grad():
        ratio_N = ratio_BL[mask_BL]
        clipped_N = (surrogate_BL < unclipped_BL)[mask_BL]
        empty = ratio_N.numel() == 0
        return {
            "loss/total": float(loss),
            "loss/policy": float(policy),
            "loss/kl": float(kl),
            "loss/ratio_mean": 1.0 if empty else float(ratio_N.mean()),
            "loss/ratio_max": 1.0 if empty else float(ratio_N.max()),
            "loss/clip_fraction": 0.0 if empty else float(clipped_N.float().mean()),
        }


def masked_entropy_mean(logits_BLV: torch.Tensor, loss_mask_BL: torch.Tensor) -> float:
    """Mean policy entropy (nats) over the masked tokens, a detached metric (`loss/entropy`); 0 with no tokens."""
    with torch.no_grad():
        mask_BL = loss_mask_BL.bool()
        entropy_N = token_entropy(logits_BLV)[mask_BL]
        return float(entropy_N.mean()) if entropy_N.numel() else 0.0
