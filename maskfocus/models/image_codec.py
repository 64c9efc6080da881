"""The VQ image tokenizer alone: token ids <-> images, and codebook vectors, without the transformer or text encoder.

The reward role needs only this (the step embeddings of the critical-step gains, the decode of CLIP step
embeddings); `load_image_codec` reads a generator folder's vqvae/ and the transformer's config, never its weights,
so a reward worker beside a Meissonic rollout worker does not hold a second copy of the 1B-parameter transformer
and the CLIP-H text encoder. The generator adapters hold one of these for the same work.

Shape legend: B samples, L image tokens (h*w), D codebook embedding width.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import torch

from maskfocus.models.base import ModelLoadError
from maskfocus.models.loading import (
    check_codebooks,
    check_generator_folder,
    folder_hint,
    load_vqvae,
    read_config,
    vq_downscale,
    vq_pixel_range,
)

if TYPE_CHECKING:
    from maskfocus.config import ModelConfig

MEISSONIC_RESOLUTION = 1024
"""Meissonic's transformer config has no sample size; its pipeline generates 1024 x 1024 by default."""


class VQImageCodec:
    """A diffusers VQModel (float32, frozen) at a fixed generated resolution."""

    def __init__(self, vqvae, image_size: int, pixel_range: tuple[float, float], device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.vqvae = vqvae.to(self.device).eval().requires_grad_(False)
        self.vae_scale_factor = vq_downscale(vqvae.config)
        check_tileable(image_size, self.vae_scale_factor)
        side = image_size // self.vae_scale_factor
        self.grid_size = (side, side)
        self.image_size = image_size
        self.latent_channels = int(vqvae.config.latent_channels)
        self.pixel_range = pixel_range

    @torch.no_grad()
    def decode(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W), by codebook lookup and the VQ decoder."""
        h, w = self.grid_size
        if tokens_BL.shape[1] != h * w:  # a codec at another resolution than the generator that sampled them
            raise ValueError(f"{tokens_BL.shape[1]} tokens per image, but this VQ decodes a {h}x{w} grid")
        shape = (tokens_BL.shape[0], h, w, self.latent_channels)
        images = self.vqvae.decode(tokens_BL.reshape(-1), force_not_quantize=True, shape=shape).sample
        low, high = self.pixel_range
        return ((images.float() - low) / (high - low)).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) of images in [0, 1]."""
        low, high = self.pixel_range
        latents = self.vqvae.encode(images_B3HW.to(self.device) * (high - low) + low).latents
        _, _, (_, _, indices) = self.vqvae.quantize(latents)
        return indices.view(images_B3HW.shape[0], -1)

    def codebook_vectors(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        """(B, L, D) VQ codebook embedding of each token."""
        return self.vqvae.quantize.embedding(tokens_BL)


def check_tileable(image_size: int, downscale: int) -> None:
    """The VQ tiles `image_size` pixels into whole tokens (it was floored without a word: 500 px sampled 496)."""
    if image_size % downscale:
        lower = image_size // downscale * downscale
        raise ModelLoadError(
            f"model.resolution {image_size} is not a multiple of the VQ's downscale {downscale}: "
            f"use {lower} or {lower + downscale}"
        )


def check_resolution(folder: Path, resolution: int | None) -> None:
    """`check_tileable` from the folder's vqvae/config.json alone (cheap: `maskfocus train` checks it before a run
    starts, which found it only once a worker loaded the model)."""
    if resolution is not None:
        check_tileable(resolution, vq_downscale(SimpleNamespace(**read_config(folder, "vqvae"))))


def native_resolution(kind: str, transformer_config, vq_config) -> int:
    """Pixels per side a folder generates by default: the transformer's `sample_size` (its token grid side) times
    the VQ's downscale. Without one, an aMUSEd UVit2DModel takes its class default; Meissonic, which states none,
    generates 1024."""
    sample_size = getattr(transformer_config, "sample_size", None)
    if sample_size is None and kind == "amused":
        from diffusers import UVit2DModel

        sample_size = inspect.signature(UVit2DModel.__init__).parameters["sample_size"].default
    if sample_size is None:
        return MEISSONIC_RESOLUTION
    return int(sample_size) * vq_downscale(vq_config)


def load_image_codec(config: ModelConfig, device: str | None = None) -> VQImageCodec:
    """The VQ of the generator folder `config.path` (checked as `load_generator` checks it), at the resolution the
    generator samples: `config.resolution`, else the folder's native one. Reads the transformer's config only."""
    from maskfocus.models import check_device

    check_device(device or config.device)
    folder = check_generator_folder(config.path, config.kind)
    check_codebooks(folder)
    vqvae = load_vqvae(folder, folder_hint(config.path))
    transformer_config = SimpleNamespace(**read_config(folder, "transformer"))  # attributes, as diffusers
    image_size = config.resolution or native_resolution(config.kind, transformer_config, vqvae.config)
    return VQImageCodec(vqvae, image_size, vq_pixel_range(folder), device or config.device)
