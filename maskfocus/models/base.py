"""The MaskedGenerator protocol: the one interface the sampler and the learner see (DESIGN.md, Models).

Shape legend: B samples, L image tokens (h*w), V codebook size, S text tokens, D embedding width.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import torch
from torch import nn


class ModelLoadError(RuntimeError):
    """A model folder that cannot be loaded: missing parts, corrupt weights, inconsistent configs."""


@dataclass(frozen=True)
class Condition:
    """Encoded prompts: sequence states for cross-attention and a pooled embedding."""

    hidden_BSD: torch.Tensor
    pooled_BD: torch.Tensor

    def __len__(self) -> int:
        return self.pooled_BD.shape[0]

    def select(self, index: torch.Tensor | slice) -> Condition:
        return Condition(*(getattr(self, f.name)[index] for f in fields(self)))

    def repeat_interleave(self, repeats: int) -> Condition:
        return Condition(*(getattr(self, f.name).repeat_interleave(repeats, dim=0) for f in fields(self)))

    @staticmethod
    def cat(parts: Sequence[Condition]) -> Condition:
        return Condition(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(Condition)))


class ImageCodec(Protocol):
    """What the reward role needs of a model: its image tokenizer (maskfocus.models.image_codec, or a generator)."""

    device: torch.device

    def decode(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W)."""

    def codebook_vectors(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        """Codebook embedding of each token, (B, L, D)."""


class MaskedGenerator(Protocol):
    """What a masked image generator offers; adapters in maskfocus.models implement it."""

    mask_token_id: int
    codebook_size: int
    grid_size: tuple[int, int]
    image_size: int
    device: torch.device

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Raise a clear error for prompts the model cannot read."""

    def encode_prompts(self, prompts: Sequence[str]) -> Condition:
        """Text condition for each prompt (B)."""

    def logits(
        self,
        tokens_BL: torch.Tensor,
        condition: Condition,
        step: int | torch.Tensor,
        num_steps: int,
        module: nn.Module | None = None,
    ) -> torch.Tensor:
        """Logits over the codebook for every position, (B, L, V), float32; `step` may be per sample (B,).

        `module` replaces the trainable module for this call (a frozen reference, a sharded wrapper).
        """

    def decode(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W)."""

    def encode_images(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) of images in [0, 1]."""

    def codebook_vectors(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        """Codebook embedding of each token, (B, L, D)."""

    def trainable_module(self) -> nn.Module:
        """The module RL updates (the transformer)."""

    def blocks(self) -> list[nn.Module]:
        """The repeated blocks of trainable_module() that FSDP2 shards one by one (`fully_shard` per block)."""
