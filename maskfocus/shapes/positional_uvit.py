"""UVit2D with a learned 2D position embedding, in Meissonic's folder format (code shipped in the folder).

UVit2D has no position embedding: a token sees where it sits only through the 3x3 depthwise convolutions of its
ConvNeXt blocks, so its attention layers cannot tell whether another object lies left of it or above it, and
"a circle left of a square" cannot be followed whatever the caption says (benchmarks/RESULTS.md, tenth session:
the relation word went unused even under direct supervision). This class adds one (C, h, w) table to the token
embeddings, initialised with 2D sine-cosine features (half the channels for the row, half for the column), and
is otherwise the same network.

The file is self-contained (torch and diffusers only): `maskfocus pretrain`-style scripts copy it into a model
folder as `transformer/transformer.py`, which `model.kind: meissonic` loads with `model.trust_checkpoint_code`.
It accepts Meissonic's keyword call (hidden_states, encoder_hidden_states, pooled_projections, micro_conds,
timestep, img_ids, txt_ids: the last three unused) and UVit2D's positional one.
"""

from __future__ import annotations

import math

import torch
from diffusers import UVit2DModel
from diffusers.configuration_utils import register_to_config
from torch import nn

INIT_AMPLITUDE = 0.4
"""Scale of the initial sine-cosine table; the shapes model's token embeddings have a standard deviation ~0.7."""


def sincos_table(channels: int, height: int, width: int) -> torch.Tensor:
    """(channels, height, width): channels/2 row features then channels/2 column features, each half made of
    sin and cos at geometrically spaced frequencies (periods 4 .. ~4 * side)."""
    if channels % 4:
        raise ValueError(f"channels must be a multiple of 4 for a 2D sine-cosine table, got {channels}")
    quarter = channels // 4
    periods = 4.0 * (max(height, width)) ** (torch.arange(quarter, dtype=torch.float64) / max(1, quarter - 1))

    def features(length: int) -> torch.Tensor:
        angle = 2 * math.pi * torch.arange(length, dtype=torch.float64)[:, None] / periods[None, :]
        return torch.cat([angle.sin(), angle.cos()], dim=1).T  # (channels/2, length)

    rows = features(height)[:, :, None].expand(-1, height, width)
    columns = features(width)[:, None, :].expand(-1, height, width)
    return torch.cat([rows, columns]).float()


class PositionalEmbed(nn.Module):
    """The UVit2D token embedding plus a learned (1, C, h, w) position table."""

    def __init__(self, tokens: nn.Module, channels: int, side: int):
        super().__init__()
        self.tokens = tokens
        self.position = nn.Parameter(INIT_AMPLITUDE * sincos_table(channels, side, side)[None])

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        embedded = self.tokens(input_ids)
        if embedded.shape[-2:] != self.position.shape[-2:]:
            raise ValueError(
                f"token grid {tuple(embedded.shape[-2:])} but the position table is {self.position.shape[-2:]}"
            )
        return embedded + self.position.to(embedded.dtype)


class PositionalUVit2DModel(UVit2DModel):
    """UVit2DModel whose token embedding adds a learned position table over the `sample_size` grid."""

    @register_to_config
    def __init__(
        self,
        hidden_size: int = 1024,
        use_bias: bool = False,
        hidden_dropout: float = 0.0,
        cond_embed_dim: int = 768,
        micro_cond_encode_dim: int = 256,
        micro_cond_embed_dim: int = 1280,
        encoder_hidden_size: int = 768,
        vocab_size: int = 8256,
        codebook_size: int = 8192,
        in_channels: int = 768,
        block_out_channels: int = 768,
        num_res_blocks: int = 3,
        downsample: bool = False,
        upsample: bool = False,
        block_num_heads: int = 12,
        num_hidden_layers: int = 22,
        num_attention_heads: int = 16,
        attention_dropout: float = 0.0,
        intermediate_size: int = 2816,
        layer_norm_eps: float = 1e-06,
        ln_elementwise_affine: bool = True,
        sample_size: int = 64,
    ):
        super().__init__(
            hidden_size=hidden_size,
            use_bias=use_bias,
            hidden_dropout=hidden_dropout,
            cond_embed_dim=cond_embed_dim,
            micro_cond_encode_dim=micro_cond_encode_dim,
            micro_cond_embed_dim=micro_cond_embed_dim,
            encoder_hidden_size=encoder_hidden_size,
            vocab_size=vocab_size,
            codebook_size=codebook_size,
            in_channels=in_channels,
            block_out_channels=block_out_channels,
            num_res_blocks=num_res_blocks,
            downsample=downsample,
            upsample=upsample,
            block_num_heads=block_num_heads,
            num_hidden_layers=num_hidden_layers,
            num_attention_heads=num_attention_heads,
            attention_dropout=attention_dropout,
            intermediate_size=intermediate_size,
            layer_norm_eps=layer_norm_eps,
            ln_elementwise_affine=ln_elementwise_affine,
            sample_size=sample_size,
        )
        self.embed = PositionalEmbed(self.embed, block_out_channels, sample_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        micro_conds: torch.Tensor,
        timestep: torch.Tensor | None = None,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        return_dict: bool = True,
        **unused,
    ) -> torch.Tensor:
        """(B, V, h, w) logits of token ids `hidden_states` (B, h, w); `timestep` and the ids are ignored (the
        position table replaces Meissonic's rotary ids; UVit2D has no timestep input)."""
        return super().forward(hidden_states, encoder_hidden_states, pooled_projections, micro_conds)
