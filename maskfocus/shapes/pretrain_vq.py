"""Pretraining of the tiny VQ tokenizer: one code per distinct patch of the shapes world.

The world has a small, closed set of 4x4 patches (`maskfocus.shapes.patches`). Code k of the codebook is patch k of
the patch table: the encoder is trained to put every patch nearest its own code (cross-entropy over negative squared
distances), the decoder to rebuild the image from the true codes. Codes past the table are copies of the background
code (code 0): the nearest-code search never picks them (a tie goes to the lower index) and they decode to
background, so a generator that draws one does no harm.

An earlier tokenizer, trained only to reconstruct, gave the same patch different codes depending on its
neighbours (29% of patches), which a masked generator cannot predict; this one is exact by construction.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import VQModel
from pydantic import Field

from maskfocus.config import Section
from maskfocus.shapes.patches import patch_ids, patch_table
from maskfocus.shapes.render import render_batch
from maskfocus.shapes.scene import random_scene
from maskfocus.shapes.tiny_model import CODEBOOK_SIZE, build_vqvae
from maskfocus.shapes.world import BACKGROUND

LogFn = Callable[[dict], None]


class VQPretrainConfig(Section):
    """VQ tokenizer pretraining."""

    num_steps: int = Field(800, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(32, ge=1)
    """Images per step."""
    learning_rate: float = Field(2e-3, gt=0.0)
    """AdamW learning rate (linear warm-up, cosine decay to 10%)."""
    table_scenes: int = Field(4000, ge=1)
    """Random scenes whose distinct patches make the code table (4,000 find all 349 of this world)."""
    foreground_weight: float = Field(4.0, ge=0.0)
    """Extra reconstruction weight on object pixels: the background dominates the image but not the score."""
    code_weight: float = Field(1.0, ge=0.0)
    """Weight of the cross-entropy that puts each patch nearest its own code."""


def images_to_tensor(images_NHWC: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images_NHWC).permute(0, 3, 1, 2).float() / 255.0


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor, foreground_weight: float) -> torch.Tensor:
    """Weighted L1 + L2 in [-1, 1] pixels; pixels that differ from the plain background weigh 1 + foreground_weight."""
    background = torch.tensor(BACKGROUND, dtype=images.dtype).view(1, 3, 1, 1) / 127.5 - 1
    foreground = ((images - background).abs().amax(1, keepdim=True) > 0.05).float()
    weight = 1 + foreground_weight * foreground
    error = reconstruction - images
    return ((error.abs() + error.pow(2)) * weight).mean() / weight.mean()


def code_logits(latents_NDhw: torch.Tensor, codebook_KD: torch.Tensor) -> torch.Tensor:
    """(N*h*w, K) negative squared distance of every latent to every code: the argmax is the VQ's choice."""
    flat = latents_NDhw.permute(0, 2, 3, 1).reshape(-1, latents_NDhw.shape[1])
    return -torch.cdist(flat, codebook_KD).pow(2)


def decode_codes(model: VQModel, codes_Nhw: torch.Tensor) -> torch.Tensor:
    """Decoder output (N, 3, H, W) for given code ids, the path `VQModel.decode(..., force_not_quantize=True)` takes."""
    quantized = model.quantize.embedding(codes_Nhw).permute(0, 3, 1, 2)
    return model.decoder(model.post_quant_conv(quantized))


@torch.no_grad()
def alias_unused_codes(model: VQModel, num_used: int) -> None:
    """Codes past the patch table become copies of code 0 (background): never chosen, harmless when drawn."""
    weight = model.quantize.embedding.weight
    weight[num_used:] = weight[0]


@torch.no_grad()
def code_accuracy(model: VQModel, images_NHWC: np.ndarray, table: np.ndarray) -> float:
    """Fraction of patches whose VQ code is their patch-table index."""
    pixels = images_to_tensor(images_NHWC) * 2 - 1
    _, _, (_, _, indices) = model.quantize(model.encode(pixels).latents)
    return float((indices.flatten() == torch.from_numpy(patch_ids(images_NHWC, table)).flatten()).float().mean())


def _lr_at(step: int, num_steps: int, base: float) -> float:
    warmup = max(1, num_steps // 50)
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, num_steps - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))


def train_vqvae(config: VQPretrainConfig, seed: int, log: LogFn, progress: Callable[[int], None]) -> VQModel:
    """Train a fresh VQModel whose code k is patch k of `patch_table`; `log` gets metrics every 50 steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    table = patch_table(config.table_scenes, seed)
    if len(table) > CODEBOOK_SIZE:
        raise ValueError(f"the shapes world has {len(table)} distinct patches, more than the {CODEBOOK_SIZE} codes")
    model = build_vqvae().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    for step in range(config.num_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config.num_steps, config.learning_rate)
        renders = render_batch([random_scene(rng) for _ in range(config.batch_size)])
        images = images_to_tensor(renders) * 2 - 1
        codes_Nhw = torch.from_numpy(patch_ids(renders, table))
        logits = code_logits(model.encode(images).latents, model.quantize.embedding.weight[: len(table)])
        code_loss = F.cross_entropy(logits, codes_Nhw.flatten())
        recon_loss = reconstruction_loss(decode_codes(model, codes_Nhw), images, config.foreground_weight)
        loss = recon_loss + config.code_weight * code_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == config.num_steps - 1:
            accuracy = (logits.argmax(-1) == codes_Nhw.flatten()).float().mean()
            log(
                {
                    "stage": "vq",
                    "step": step,
                    "loss": loss.item(),
                    "recon": recon_loss.item(),
                    "code_loss": code_loss.item(),
                    "code_accuracy": accuracy.item(),
                }
            )
        progress(1)
    model.eval()
    alias_unused_codes(model, len(table))
    held_out = render_batch([random_scene(rng) for _ in range(256)])
    log(
        {
            "stage": "vq",
            "step": config.num_steps,
            "codes": len(table),
            "held_out_code_accuracy": code_accuracy(model, held_out, table),
        }
    )
    return model
