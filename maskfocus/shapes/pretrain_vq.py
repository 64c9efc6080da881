"""Pretraining of the tiny VQ tokenizer on random shapes-world scenes (reconstruction + commitment loss).

Dead codes (unused over a window of steps) are re-seeded from encoder outputs, the usual remedy for
codebook collapse on small data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import VQModel
from pydantic import Field

from maskfocus.config import Section
from maskfocus.shapes.render import render_batch
from maskfocus.shapes.scene import random_scene
from maskfocus.shapes.tiny_model import build_vqvae
from maskfocus.shapes.world import BACKGROUND, COLORS

LogFn = Callable[[dict], None]


class VQPretrainConfig(Section):
    """VQ tokenizer pretraining."""

    num_steps: int = Field(1500, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(32, ge=1)
    """Images per step."""
    learning_rate: float = 2e-3
    """AdamW learning rate (cosine decay to 10%)."""
    restart_every: int = Field(100, ge=1)
    """Steps between dead-code restarts (stops after 80% of training)."""
    foreground_weight: float = Field(4.0, ge=0.0)
    """Extra reconstruction weight on object pixels: the background dominates the image but not the score."""
    prune_distance: float = Field(0.2, ge=0.0)
    """After training, disable every code closer than this to a reserved solid-colour code: the canonical loss
    alone left near-duplicates of the background code (restarted codes sit on background latents) that took
    a quarter of the background patches; 0.2 sends ~77% of them to code 0 and keeps the round trip >= 0.97."""
    canonical_weight: float = Field(1.0, ge=0.0)
    """Pull every solid patch (background, or one palette colour) to one fixed code per colour, so the same
    content always gets the same token: without it the background spread over >150 codes and the generator
    could not predict it."""


def images_to_tensor(images_NHWC: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1]."""
    return torch.from_numpy(images_NHWC).permute(0, 3, 1, 2).float() / 255.0


def random_images(rng: np.random.Generator, count: int) -> torch.Tensor:
    """A batch of renders of random scenes, (N, 3, 64, 64) in [0, 1]."""
    return images_to_tensor(render_batch([random_scene(rng) for _ in range(count)]))


def reconstruction_loss(reconstruction: torch.Tensor, images: torch.Tensor, foreground_weight: float) -> torch.Tensor:
    """Weighted L1 + L2; pixels that differ from the plain background weigh 1 + foreground_weight."""
    background = torch.tensor(BACKGROUND, dtype=images.dtype).view(1, 3, 1, 1) / 127.5 - 1
    foreground = ((images - background).abs().amax(1, keepdim=True) > 0.05).float()
    weight = 1 + foreground_weight * foreground
    error = reconstruction - images
    return ((error.abs() + error.pow(2)) * weight).mean() / weight.mean()


def solid_patch_labels(images: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Per token (N, h, w): 0 for a pure-background patch, 1..C for a patch of one palette colour, -1 otherwise."""
    palette = torch.tensor([BACKGROUND, *COLORS.values()], dtype=images.dtype) / 127.5 - 1  # (C+1, 3)
    distance = (images.unsqueeze(1) - palette.view(1, -1, 3, 1, 1)).abs().amax(2)  # (N, C+1, H, W)
    exact = F.max_pool2d(distance, patch) < 0.02  # every pixel of the patch within ~2/255 of that colour
    labels = torch.where(exact.any(1), exact.float().argmax(1), torch.full_like(exact[:, 0], -1, dtype=torch.long))
    return labels.long()


def canonical_code_loss(latents: torch.Tensor, labels: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared distance of solid patches' latents to their reserved code (codes 0..C), both ways."""
    chosen = labels >= 0
    if not chosen.any():
        return latents.sum() * 0
    vectors = latents.permute(0, 2, 3, 1)[chosen]
    targets = codebook[labels[chosen]]
    return (vectors - targets.detach()).pow(2).mean() + (vectors.detach() - targets).pow(2).mean()


DISABLED_CODE = 100.0  # an embedding this far from every latent is never the nearest code


@torch.no_grad()
def prune_near_solid_codes(model: VQModel, distance: float, usage: torch.Tensor | None = None) -> int:
    """Disable codes within `distance` of a reserved solid code (0..C), and unused codes; returns how many."""
    codebook = model.quantize.embedding.weight
    reserved = len(COLORS) + 1
    near = torch.cdist(codebook, codebook[:reserved]).min(1).values < distance
    near[:reserved] = False
    if usage is not None:
        near |= usage == 0
        near[:reserved] = False
    codebook[near] = DISABLED_CODE
    return int(near.sum())


def code_usage(model: VQModel, images: torch.Tensor) -> torch.Tensor:
    """How often each code is chosen for images in [-1, 1]."""
    with torch.no_grad():
        _, _, (_, _, indices) = model.quantize(model.encode(images).latents)
    return torch.bincount(indices.flatten(), minlength=model.config.num_vq_embeddings)


def _restart_dead_codes(model: VQModel, usage: torch.Tensor, latents_NDhw: torch.Tensor, rng: torch.Generator) -> int:
    usage[: len(COLORS) + 1] = 1  # reserved solid-colour codes are never re-seeded
    dead = (usage == 0).nonzero().flatten()
    if len(dead) == 0:
        return 0
    flat = latents_NDhw.permute(0, 2, 3, 1).reshape(-1, latents_NDhw.shape[1])
    pick = torch.randint(0, flat.shape[0], (len(dead),), generator=rng)
    with torch.no_grad():
        model.quantize.embedding.weight[dead] = flat[pick] + 0.01 * torch.randn(len(dead), flat.shape[1], generator=rng)
    return len(dead)


def _lr_at(step: int, num_steps: int, base: float) -> float:
    warmup = max(1, num_steps // 50)
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, num_steps - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))


def train_vqvae(config: VQPretrainConfig, seed: int, log: LogFn, progress: Callable[[int], None]) -> VQModel:
    """Train a fresh VQModel; `log` receives a metrics dict every 50 steps, `progress(1)` ticks per step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    torch_rng = torch.Generator().manual_seed(seed)
    model = build_vqvae().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    usage = torch.zeros(model.config.num_vq_embeddings)
    for step in range(config.num_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config.num_steps, config.learning_rate)
        images = random_images(rng, config.batch_size) * 2 - 1
        latents = model.encode(images).latents
        quantized, commit_loss, (_, _, indices) = model.quantize(latents)
        reconstruction = model.decoder(model.post_quant_conv(quantized))
        recon_loss = reconstruction_loss(reconstruction, images, config.foreground_weight)
        canonical = canonical_code_loss(latents, solid_patch_labels(images), model.quantize.embedding.weight)
        loss = recon_loss + commit_loss.mean() + config.canonical_weight * canonical
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        usage += torch.bincount(indices.flatten(), minlength=len(usage)).float()
        restarted = 0
        if (step + 1) % config.restart_every == 0:
            if step < 0.8 * config.num_steps:
                restarted = _restart_dead_codes(model, usage, latents.detach(), torch_rng)
            usage.zero_()
        if step % 50 == 0 or step == config.num_steps - 1 or restarted:
            log(
                {
                    "stage": "vq",
                    "step": step,
                    "loss": loss.item(),
                    "recon": recon_loss.item(),
                    "commit": commit_loss.mean().item(),
                    "canonical": canonical.item(),
                    "restarted_codes": restarted,
                }
            )
        progress(1)
    model.eval()
    usage = code_usage(model, random_images(rng, 256) * 2 - 1)
    disabled = prune_near_solid_codes(model, config.prune_distance, usage)
    log({"stage": "vq", "step": config.num_steps, "disabled_codes": disabled})
    return model
