"""Pieces of benchmarks/gpu_check.py: FLOP and MFU accounting, and a random-init stand-in of Meissonic's size.

The FLOP functions are plain arithmetic (tested on the CPU in tests/test_gpu_perf.py). The stand-in is built
from diffusers' FluxTransformer2DModel (Meissonic's transformer is a Flux-style MMDiT) with Meissonic's
call signature and released sizes: 14 dual-stream + 28 single-stream blocks of width 1024 (8 heads of 128),
a 64 x 64 token grid downsampled 2x to 32 x 32 inside, 77 text tokens of width 1024 (CLIP-H), codebook 8192.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.0))
"""Dense bf16 tensor-core peaks (no sparsity), matched by substring of torch.cuda.get_device_name in this order."""


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak in TFLOP/s, or None for an unknown card."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in device_name:
            return tflops
    return None


def count_flops(fn, *args, **kwargs) -> int:
    """FLOPs of the matmuls, convolutions and attention that `fn(*args, **kwargs)` runs (torch's FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def rollout_flops(forward_flops: float, num_images: int, num_steps: int, use_cfg: bool) -> float:
    """Sampling: one forward per image per step, twice with CFG (conditional and negative prompt)."""
    return forward_flops * num_images * num_steps * (2 if use_cfg else 1)


def learner_flops(
    forward_flops: float, num_samples: int, num_selected: int, use_reference: bool, update: str = "per_step"
) -> float:
    """One rollout's updates: for each of the K selected steps a reference forward when beta > 0 and the trained
    forward + backward (3 forwards' worth), plus the frozen old-log-prob forwards of the steps scored after an
    optimizer step: K - 1 with `per_step` updates, none with `accumulate` (the steps scored before the first
    step take theirs from their own training forward, maskfocus/update.py)."""
    passes = num_selected * ((1 if use_reference else 0) + 3)
    passes += num_selected - 1 if update == "per_step" else 0
    return forward_flops * num_samples * passes


def mfu(flops: float, seconds: float, peak_tflops_value: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the card's peak (None when the peak is unknown)."""
    if peak_tflops_value is None or seconds <= 0:
        return None
    return flops / seconds / (peak_tflops_value * 1e12)


@dataclass(frozen=True)
class ScaleSpec:
    """Sizes of the stand-in transformer and text encoder."""

    num_layers: int = 14
    num_single_layers: int = 28
    num_heads: int = 8
    head_dim: int = 128
    grid: int = 64
    codebook_size: int = 8192
    text_width: int = 1024
    text_layers: int = 24
    text_heads: int = 16
    text_length: int = 77

    @property
    def width(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + 64  # Meissonic: 8256 = 8192 + 64, mask id 8255


MEISSONIC = ScaleSpec()
SMALL = ScaleSpec(
    num_layers=1,
    num_single_layers=2,
    num_heads=2,
    head_dim=32,
    grid=16,
    codebook_size=512,
    text_width=64,
    text_layers=2,
    text_heads=2,
)
"""For a CPU dry run of the same code paths."""


class MeissonicScaleTransformer(nn.Module):
    """Token embedding, 2x2 conv downsampling, a Flux MMDiT over text + image, conv upsampling, a codebook head.

    Forward takes Meissonic's keyword arguments and returns (B, V, h, w) logits."""

    def __init__(self, spec: ScaleSpec):
        super().__init__()
        from diffusers import FluxTransformer2DModel

        width = spec.width
        self.embed = nn.Embedding(spec.vocab_size, width)
        self.down = nn.Conv2d(width, width, 2, stride=2)
        self.cond_embed = nn.Linear(spec.text_width + 5 * 256, width)
        self.flux = FluxTransformer2DModel(
            in_channels=width,
            out_channels=width,
            num_layers=spec.num_layers,
            num_single_layers=spec.num_single_layers,
            attention_head_dim=spec.head_dim,
            num_attention_heads=spec.num_heads,
            joint_attention_dim=spec.text_width,
            pooled_projection_dim=width,
            axes_dims_rope=(spec.head_dim // 8, 7 * spec.head_dim // 16, 7 * spec.head_dim // 16),
        )
        self.up = nn.ConvTranspose2d(width, width, 2, stride=2)
        self.head = nn.Linear(width, spec.codebook_size)

    @property
    def transformer_blocks(self) -> nn.ModuleList:
        return self.flux.transformer_blocks

    @property
    def single_transformer_blocks(self) -> nn.ModuleList:
        return self.flux.single_transformer_blocks

    def forward(
        self, hidden_states, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids, micro_conds, **_
    ) -> torch.Tensor:
        from diffusers.models.embeddings import get_timestep_embedding

        batch, height, width = hidden_states.shape
        x = self.down(self.embed(hidden_states).permute(0, 3, 1, 2))
        channels, h, w = x.shape[1:]
        micro = get_timestep_embedding(micro_conds.flatten(), 256, True, 0).reshape(batch, -1).to(x.dtype)
        pooled = self.cond_embed(torch.cat([pooled_projections, micro], dim=1))
        x = self.flux(
            hidden_states=x.flatten(2).transpose(1, 2),
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled,
            timestep=timestep.to(x.dtype),  # Flux multiplies by 1000 itself, as Meissonic does
            img_ids=img_ids,
            txt_ids=txt_ids,
            return_dict=False,
        )[0]
        x = self.up(x.transpose(1, 2).reshape(batch, channels, h, w))
        return self.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


def parameter_count(spec: ScaleSpec) -> int:
    """Parameters of the stand-in transformer, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in MeissonicScaleTransformer(spec).parameters())


def build_parts(spec: ScaleSpec, device: torch.device):
    """Random VQ (16x downscale), CLIP text encoder and word tokenizer of `spec`'s sizes, on `device`."""
    from diffusers import VQModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from maskfocus.models.tokenizer import build_word_tokenizer

    words = ("a", "photo", "of", "one", "two", "red", "blue", "cat", "dog", "car")
    tokenizer = build_word_tokenizer(words, spec.text_length)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_width,
        intermediate_size=4 * spec.text_width,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        max_position_embeddings=spec.text_length,
        projection_dim=spec.text_width,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.device(device):
        vqvae = VQModel(
            down_block_types=("DownEncoderBlock2D",) * 5,
            up_block_types=("UpDecoderBlock2D",) * 5,
            block_out_channels=(32,) * 5,
            layers_per_block=1,
            latent_channels=8,
            num_vq_embeddings=spec.codebook_size,
            norm_num_groups=8,
            mid_block_add_attention=False,
            lookup_from_codebook=True,
        )
        text_encoder = CLIPTextModelWithProjection(text_config)
    return vqvae, text_encoder, tokenizer


if __name__ == "__main__":
    raise SystemExit("gpu_perf.py is part of benchmarks/gpu_check.py: python benchmarks/gpu_check.py --help")
