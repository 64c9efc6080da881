"""Records passed between the roles: rollout -> reward -> learner (DESIGN.md, Data flow).

Shape legend: B samples (P prompts x G, groups contiguous), T steps, K selected steps, L image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Trajectory:
    """One rollout batch: the final images and the recorded sampling trajectory of every sample."""

    metadata: list[dict[str, Any]]
    """GenEval metadata of the P prompts."""
    group_size: int
    tokens_BL: torch.Tensor
    masks_BTL: torch.Tensor
    x0_BTL: torch.Tensor
    entropy_BT: torch.Tensor
    routes_BT: torch.Tensor
    images_BHWC: np.ndarray
    """Decoded final images, uint8."""
    policy_version: int
    """Version of the weights that sampled this batch."""
    iteration: int
    seconds: float = 0.0

    @property
    def metadata_B(self) -> list[dict[str, Any]]:
        return [meta for meta in self.metadata for _ in range(self.group_size)]

    @property
    def prompts_B(self) -> list[str]:
        return [meta["prompt"] for meta in self.metadata_B]


@dataclass
class TrainBatch:
    """Only what the learner needs: final tokens, the selected steps' states, advantages, conditioning."""

    prompts_B: list[str]
    tokens_BL: torch.Tensor
    steps_BK: torch.Tensor
    """Selected steps, ascending per row."""
    num_masked_BK: torch.Tensor
    """|m_j| of each selected step j: the training state's mask count."""
    masks_BKL: torch.Tensor | None
    """The rollout's input masks m_j of the selected steps (for remask: trajectory / tokens: newly_unmasked)."""
    scored_BKL: torch.Tensor | None
    """tokens: newly_unmasked only: the tokens committed at each selected step."""
    advantages_B: torch.Tensor
    valid_B: torch.Tensor
    """False: left out of the loss (non-finite reward group, or a zero-signal group when dropping those)."""
    policy_version: int
    iteration: int
    stats: dict[str, float] = field(default_factory=dict)
    """reward/, select/, router/, rollout/ metrics of this batch."""

    def __len__(self) -> int:
        return len(self.prompts_B)

    def shard(self, rank: int, world_size: int) -> TrainBatch:
        """The rank-th contiguous slice (whole groups stay together when B is divisible)."""
        size = -(-len(self) // world_size)
        return self.rows(slice(rank * size, (rank + 1) * size))

    def rows(self, part: slice | torch.Tensor) -> TrainBatch:
        """The samples picked by a slice or a boolean mask of length B."""
        if isinstance(part, slice):
            prompts_B = self.prompts_B[part]
        else:
            prompts_B = [prompt for prompt, keep in zip(self.prompts_B, part.tolist(), strict=True) if keep]

        def cut(value):
            return None if value is None else value[part]

        return TrainBatch(
            prompts_B,
            self.tokens_BL[part],
            self.steps_BK[part],
            self.num_masked_BK[part],
            cut(self.masks_BKL),
            cut(self.scored_BKL),
            self.advantages_B[part],
            self.valid_B[part],
            self.policy_version,
            self.iteration,
            dict(self.stats),
        )
