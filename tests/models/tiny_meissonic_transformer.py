"""A tiny stand-in for Meissonic's `transformer/transformer.py`: the released class name, config keys and forward
signature (hidden_states = token ids (B, h, w), text states, pooled projection, step timestep, img/txt ids,
micro-conditions; returns (B, V, h, w) logits as a bare tensor), with a few small layers inside.

The tests copy it into a model folder; when imported from there it leaves an `IMPORTED` file beside itself, so a
test can tell whether the folder's code ran.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

if Path(__file__).parent.name == "transformer":
    (Path(__file__).parent / "IMPORTED").touch()

MICRO_COND_ENCODE_DIM = 4


class Transformer2DModel(ModelMixin, ConfigMixin):
    """Embed tokens, optionally downsample 2x, run a joint text+image sequence, upsample, predict the codebook."""

    @register_to_config
    def __init__(
        self,
        num_layers: int = 1,
        num_single_layers: int = 1,
        attention_head_dim: int = 16,
        num_attention_heads: int = 2,
        joint_attention_dim: int = 32,
        pooled_projection_dim: int = 32,
        vocab_size: int = 36,
        codebook_size: int = 32,
        downsample: bool = True,
        upsample: bool = True,
    ):
        super().__init__()
        width = attention_head_dim * num_attention_heads
        self.embed = nn.Embedding(vocab_size, width)
        self.down_block = nn.Conv2d(width, width, 2, stride=2) if downsample else nn.Identity()
        self.up_block = nn.ConvTranspose2d(width, width, 2, stride=2) if upsample else nn.Identity()
        self.context_embedder = nn.Linear(joint_attention_dim, width)
        self.cond_embed = nn.Linear(pooled_projection_dim + 5 * MICRO_COND_ENCODE_DIM + width, width)
        self.pos_embed = nn.Linear(3, width)

        def layer() -> nn.Module:
            return nn.TransformerEncoderLayer(width, num_attention_heads, 2 * width, dropout=0.0, batch_first=True)

        self.transformer_blocks = nn.ModuleList(layer() for _ in range(num_layers))
        self.single_transformer_blocks = nn.ModuleList(layer() for _ in range(num_single_layers))
        self.mlm_layer = nn.Linear(width, codebook_size)
        self.last_inputs: dict[str, torch.Tensor] = {}

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor = None,
        pooled_projections: torch.Tensor = None,
        timestep: torch.LongTensor = None,
        img_ids: torch.Tensor = None,
        txt_ids: torch.Tensor = None,
        guidance: torch.Tensor = None,
        joint_attention_kwargs=None,
        controlnet_block_samples=None,
        controlnet_single_block_samples=None,
        return_dict: bool = True,
        micro_conds: torch.Tensor = None,
    ) -> torch.Tensor:
        self.last_inputs = {
            "hidden_states": hidden_states,
            "encoder_hidden_states": encoder_hidden_states,
            "pooled_projections": pooled_projections,
            "timestep": timestep,
            "img_ids": img_ids,
            "txt_ids": txt_ids,
            "micro_conds": micro_conds,
        }
        batch = hidden_states.shape[0]
        x = self.down_block(self.embed(hidden_states).permute(0, 3, 1, 2))
        _, channels, h, w = x.shape
        image = x.flatten(2).transpose(1, 2)
        text = self.context_embedder(encoder_hidden_states)
        ids = torch.cat((txt_ids, img_ids), dim=0).to(image.dtype)  # like the release: must cover S + h*w rows
        micro = get_timestep_embedding(micro_conds.flatten(), MICRO_COND_ENCODE_DIM, True, 0).reshape(batch, -1)
        time = get_timestep_embedding(timestep.flatten().expand(batch).float() * 1000, channels, True, 0)
        cond = self.cond_embed(torch.cat([pooled_projections, micro.to(image.dtype), time.to(image.dtype)], dim=1))
        sequence = torch.cat([text, image], dim=1) + self.pos_embed(ids) + cond[:, None]
        for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
            sequence = block(sequence)
        x = sequence[:, text.shape[1] :].transpose(1, 2).reshape(batch, channels, h, w)
        return self.mlm_layer(self.up_block(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
