"""Critical step selection by information gain (ALGORITHM.md section 3).

Each step's x0 prediction is embedded (VQ codebook vectors by default, a CLIP image embedding as an option) and
compared with the final image: s_j = cosine(embed(x0_j), embed(x_T)). The gain of step j >= 1 is |s_j - s_{j-1}|;
the K steps with the largest gain are trained on. Baselines: K uniformly random steps, or all T steps.

Shape legend: B samples, G group size, T sampling steps, K selected steps, L image tokens, D embedding width,
C/H/W image channels/height/width, N rows of a batched call (groups, or B*T images), S selectable steps 1..T-1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch

SelectStrategy = Literal["critical", "random", "all"]
SELECT_STRATEGIES: tuple[str, ...] = ("critical", "random", "all")

NOT_SELECTABLE = float("-inf")
"""Gain of step 0, which has no previous prediction to compare with: it is never a critical step."""


def vq_step_embeddings(
    codebook_vectors_fn: Callable[[torch.Tensor], torch.Tensor], x0_BTL: torch.Tensor
) -> torch.Tensor:
    """Flattened codebook vectors of every step's x0 prediction: (B, T, L) ids -> (B, T, L*D).

    `codebook_vectors_fn` maps token ids (N, L) to vectors (N, L, D) (MaskedGenerator.codebook_vectors).
    """
    batch, num_steps, _ = x0_BTL.shape
    vectors_NLD = codebook_vectors_fn(x0_BTL.flatten(0, 1))
    return vectors_NLD.reshape(batch, num_steps, -1)


def final_embeddings(
    codebook_vectors_fn: Callable[[torch.Tensor], torch.Tensor], tokens_BL: torch.Tensor
) -> torch.Tensor:
    """Flattened codebook vectors of the final tokens: (B, L) -> (B, L*D)."""
    return codebook_vectors_fn(tokens_BL).reshape(tokens_BL.shape[0], -1)


def clip_step_embeddings(
    decode_fn: Callable[[torch.Tensor], torch.Tensor],
    image_embed_fn: Callable[[torch.Tensor], torch.Tensor],
    x0_BTL: torch.Tensor,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Image embeddings of every step's decoded x0 prediction: (B, T, L) ids -> (B, T, D).

    `decode_fn` maps ids (N, L) to images (N, C, H, W); `image_embed_fn` maps images to embeddings (N, D).
    `chunk_size` bounds how many of the B*T images are decoded at once (None: all). For the final image pass
    `tokens_BL.unsqueeze(1)` and take `[:, 0]`.
    """
    batch, num_steps, _ = x0_BTL.shape
    ids_NL = x0_BTL.flatten(0, 1)
    size = chunk_size or ids_NL.shape[0]
    embeds_ND = torch.cat([image_embed_fn(decode_fn(chunk_NL)) for chunk_NL in ids_NL.split(size)])
    return embeds_ND.reshape(batch, num_steps, -1)


def step_similarity(step_embed_BTD: torch.Tensor, final_embed_BD: torch.Tensor) -> torch.Tensor:
    """s[b, t] = cosine(step_embed[b, t], final_embed[b]), (B, T), float32; 0 where an embedding is all zeros."""
    step_BTD = step_embed_BTD.float()
    final_B1D = final_embed_BD.float().unsqueeze(1)
    return torch.nn.functional.cosine_similarity(step_BTD, final_B1D, dim=-1, eps=1e-8)


def group_mean_similarity(s_BT: torch.Tensor, group_size: int) -> torch.Tensor:
    """Every sample gets its group's mean similarity, (B, T); groups are contiguous (b // group_size)."""
    _check_groups(s_BT.shape[0], group_size)
    mean_PT = s_BT.view(-1, group_size, s_BT.shape[-1]).mean(1)
    return mean_PT.repeat_interleave(group_size, dim=0)


def information_gain(s_BT: torch.Tensor) -> torch.Tensor:
    """gain[:, j] = |s_j - s_{j-1}| for j >= 1; gain[:, 0] = NOT_SELECTABLE (-inf), (B, T)."""
    first_B1 = torch.full_like(s_BT[:, :1], NOT_SELECTABLE)
    return torch.cat([first_B1, (s_BT[:, 1:] - s_BT[:, :-1]).abs()], dim=1)


def step_gains(
    step_embed_BTD: torch.Tensor, final_embed_BD: torch.Tensor, group_size: int, per_sample: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(s_BT, gain_BT) from the embeddings: similarity, group mean unless `per_sample`, then the gain."""
    s_BT = step_similarity(step_embed_BTD, final_embed_BD)
    if not per_sample:
        s_BT = group_mean_similarity(s_BT, group_size)
    return s_BT, information_gain(s_BT)


def select_steps(
    gain_BT: torch.Tensor,
    num_selected: int,
    strategy: SelectStrategy,
    group_size: int,
    generator: torch.Generator | None = None,
    per_sample: bool = False,
) -> torch.Tensor:
    """Steps to train on, (B, K) long, sorted ascending within each row.

    - "critical": the K steps of 1..T-1 with the largest gain (ties to the lower step); needs K <= T-1.
    - "random": K distinct steps of 0..T-1, uniformly at random from `generator`; needs K <= T.
    - "all": every step, (B, T); `num_selected` is ignored.
    Unless `per_sample`, the samples of a group share their steps: "critical" ranks the group's mean gain (equal to
    each sample's gain when the similarities were group-averaged) and "random" makes one draw per group.
    """
    if strategy not in SELECT_STRATEGIES:
        raise ValueError(f"select strategy must be one of {SELECT_STRATEGIES}, got {strategy!r}")
    batch, num_steps = gain_BT.shape
    if strategy == "all":
        return torch.arange(num_steps, device=gain_BT.device).expand(batch, num_steps).clone()
    unit = 1 if per_sample else group_size
    _check_groups(batch, unit)
    if num_selected < 1:
        raise ValueError(f"select num_selected must be >= 1, got {num_selected}")
    if strategy == "critical":
        steps_NK = _top_gain_steps(gain_BT.view(-1, unit, num_steps).mean(1), num_selected)
    else:
        if generator is None:
            raise ValueError("select strategy 'random' needs a torch.Generator")
        steps_NK = _random_steps(batch // unit, num_steps, num_selected, generator).to(gain_BT.device)
    return steps_NK.repeat_interleave(unit, dim=0)


def _top_gain_steps(gain_NT: torch.Tensor, num_selected: int) -> torch.Tensor:
    num_steps = gain_NT.shape[-1]
    if num_selected > num_steps - 1:
        raise ValueError(
            f"select num_selected ({num_selected}) must be <= num_steps - 1 ({num_steps - 1}) for 'critical' "
            "(step 0 has no gain)"
        )
    gain_NS = gain_NT[:, 1:].nan_to_num(nan=NOT_SELECTABLE)  # a NaN gain must not outrank real ones
    order_NS = torch.sort(gain_NS, dim=-1, descending=True, stable=True).indices
    return (order_NS[:, :num_selected] + 1).sort(dim=-1).values


def _random_steps(num_draws: int, num_steps: int, num_selected: int, generator: torch.Generator) -> torch.Tensor:
    if num_selected > num_steps:
        raise ValueError(f"select num_selected ({num_selected}) must be <= num_steps ({num_steps}) for 'random'")
    keys_NT = torch.rand(num_draws, num_steps, generator=generator, device=generator.device)
    return keys_NT.argsort(dim=-1)[:, :num_selected].sort(dim=-1).values


def _check_groups(batch: int, group_size: int) -> None:
    if group_size < 1 or batch % group_size != 0:
        raise ValueError(f"batch size {batch} is not a multiple of the group size {group_size}")
