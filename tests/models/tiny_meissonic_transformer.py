"""A tiny stand-in for Meissonic's `transformer/transformer.py`: the released class name, config keys and forward
signature (hidden_states = token ids (B, h, w), text states, pooled projection, step timestep, img/txt ids,
micro-conditions; returns (B, V, h, w) logits as a bare tensor), with a few small layers inside. Its dual-stream and
single-stream blocks build their attention exactly as the release does - diffusers' legacy `Attention` with
`processor=FluxAttnProcessor2_0()` - and feed it the rotary embedding of txt_ids + img_ids, so the tests meet what
the installed diffusers makes of that code.

The tests copy it into a model folder; when imported from there it leaves an `IMPORTED` file beside itself, so a
test can tell whether the folder's code ran.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, FluxAttnProcessor2_0
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_flux import FluxPosEmbed
from torch import nn

if Path(__file__).parent.name == "transformer":
    (Path(__file__).parent / "IMPORTED").touch()

MICRO_COND_ENCODE_DIM = 4
ROPE_AXES = (4, 6, 6)
"""Rotary widths of the three id axes; they sum to the head width."""


class TransformerBlock(nn.Module):
    """The released dual-stream block's attention, built as there; a plain residual MLP instead of its modulation."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int):
        super().__init__()
        self.attn = Attention(
            query_dim=dim,
            cross_attention_dim=None,
            added_kv_proj_dim=dim,
            dim_head=attention_head_dim,
            heads=num_attention_heads,
            out_dim=dim,
            context_pre_only=False,
            bias=True,
            processor=FluxAttnProcessor2_0(),
            qk_norm="rms_norm",
            eps=1e-6,
        )
        self.ff = nn.Linear(dim, dim)

    def forward(self, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None):
        attn_output, context_attn_output = self.attn(
            hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, image_rotary_emb=image_rotary_emb
        )
        hidden_states = hidden_states + attn_output + temb[:, None]
        hidden_states = hidden_states + self.ff(F.gelu(hidden_states, approximate="tanh"))
        return encoder_hidden_states + context_attn_output, hidden_states


class SingleTransformerBlock(nn.Module):
    """The released single-stream block's attention (pre_only), built as there; attention and MLP side by side."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int):
        super().__init__()
        self.proj_mlp = nn.Linear(dim, 2 * dim)
        self.proj_out = nn.Linear(3 * dim, dim)
        self.attn = Attention(
            query_dim=dim,
            cross_attention_dim=None,
            dim_head=attention_head_dim,
            heads=num_attention_heads,
            out_dim=dim,
            bias=True,
            processor=FluxAttnProcessor2_0(),
            qk_norm="rms_norm",
            eps=1e-6,
            pre_only=True,
        )

    def forward(self, hidden_states, temb, image_rotary_emb=None):
        attn_output = self.attn(hidden_states=hidden_states, image_rotary_emb=image_rotary_emb)
        mlp_hidden_states = F.gelu(self.proj_mlp(hidden_states), approximate="tanh")
        return hidden_states + self.proj_out(torch.cat([attn_output, mlp_hidden_states], dim=2)) + temb[:, None]


class Transformer2DModel(ModelMixin, ConfigMixin):
    """Embed tokens, optionally downsample 2x, run dual- then single-stream blocks, upsample, predict the codebook."""

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
        self.pos_embed = FluxPosEmbed(theta=10000, axes_dim=list(ROPE_AXES))
        heads = (width, num_attention_heads, attention_head_dim)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(*heads) for _ in range(num_layers))
        self.single_transformer_blocks = nn.ModuleList(SingleTransformerBlock(*heads) for _ in range(num_single_layers))
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
        rotary = self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))  # like the release: must cover S + h*w rows
        micro = get_timestep_embedding(micro_conds.flatten(), MICRO_COND_ENCODE_DIM, True, 0).reshape(batch, -1)
        # as the release: the timestep scaled in the module's dtype (bfloat16 rounds 63 * 1000 to 62976)
        time = get_timestep_embedding(timestep.flatten().expand(batch).to(image.dtype) * 1000, channels, True, 0)
        temb = self.cond_embed(torch.cat([pooled_projections, micro.to(image.dtype), time.to(image.dtype)], dim=1))
        for block in self.transformer_blocks:
            text, image = block(image, text, temb, rotary)
        sequence = torch.cat([text, image], dim=1)
        for block in self.single_transformer_blocks:
            sequence = block(sequence, temb, rotary)
        x = sequence[:, text.shape[1] :].transpose(1, 2).reshape(batch, channels, h, w)
        return self.mlm_layer(self.up_block(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
