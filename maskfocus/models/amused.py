"""aMUSEd adapter: diffusers VQModel + UVit2DModel + transformers CLIP text encoder, from a local folder.

Serves real amused-256 / amused-512 folders and the built-in tiny model, which is saved in the same format.
Inputs follow diffusers 0.42.1's AmusedPipeline: micro-conditioning (width, height, crop 0 0, aesthetic 6)
at the generated resolution, the CLIP projection as pooled embedding and the penultimate hidden layer as
the sequence. Timestep convention: UVit2DModel takes no timestep (AmusedPipeline feeds the scheduler's
timestep only to the scheduler, never to the transformer): the mask tokens carry the schedule, so `step` is
unused here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from maskfocus.config import BUILTIN_MODEL
from maskfocus.models.base import Condition, ModelLoadError
from maskfocus.models.image_codec import native_resolution
from maskfocus.models.loading import (
    builtin_folder,
    check_codebooks,
    check_generator_folder,
    check_text_parts,
    folder_hint,
    load_text_encoder,
    load_tokenizer,
    load_vqvae,
    load_weights,
    mask_token_id,
    resolve_model_path,
    torch_dtype,
    vq_pixel_range,
)
from maskfocus.models.vq_text import VQTextGenerator

__all__ = ["AmusedGenerator", "builtin_folder", "resolve_model_path"]


class AmusedGenerator(VQTextGenerator):
    """MaskedGenerator over an aMUSEd-format folder (see maskfocus.models.base for the interface)."""

    PER_SAMPLE_INPUTS = (0, 1, 2, 3)
    """`logits` passes token ids, text states, pooled embedding and micro-conditions positionally, all (B, ...)."""

    @classmethod
    def from_folder(
        cls,
        path: str | Path = BUILTIN_MODEL,
        device: str = "cpu",
        dtype: str = "float32",
        resolution: int | None = None,
        text_encoder: str | None = None,
    ) -> AmusedGenerator:
        """Load transformer and text encoder in `dtype` (the VQ stays float32); `resolution` in pixels
        (None = transformer sample_size x VQ downscale, the model's own); `text_encoder` replaces text_encoder/."""
        from diffusers import UVit2DModel

        folder = check_generator_folder(path, "amused")
        hint = folder_hint(path)
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(f"{folder} has no model_index.json: not a diffusers aMUSEd folder; {hint}")
        check_codebooks(folder)
        weights_dtype = torch_dtype(dtype)
        vqvae = load_vqvae(folder, hint)
        transformer = load_weights(UVit2DModel.from_pretrained, folder, "transformer", hint, torch_dtype=weights_dtype)
        encoder = load_text_encoder(folder, hint, weights_dtype, text_encoder)
        tokenizer = load_tokenizer(folder, hint)
        check_text_parts(folder, tokenizer, encoder)
        _check_conditioning(folder, transformer, encoder)
        codebook = int(transformer.config.codebook_size)
        return cls(
            vqvae,
            transformer,
            encoder,
            tokenizer,
            mask_token_id=mask_token_id(folder, codebook, int(transformer.config.vocab_size)),
            codebook_size=codebook,
            image_size=resolution or native_resolution("amused", transformer.config, vqvae.config),
            pixel_range=vq_pixel_range(folder),
            device=device,
        )

    def logits(
        self,
        tokens_BL: torch.Tensor,
        condition: Condition,
        step: int | torch.Tensor = 0,
        num_steps: int = 1,
        module: nn.Module | None = None,
    ) -> torch.Tensor:
        """(B, L, V) float32. `module` replaces the transformer (a frozen reference copy, an FSDP-wrapped one);
        `step` is unused (see the module docstring)."""
        module = self.transformer if module is None else module
        batch = tokens_BL.shape[0]
        hidden, pooled, micro = self._inputs(module, condition)
        logits_BVhw = module(tokens_BL.view(batch, *self.grid_size), hidden, pooled, micro)
        return self._to_logits(logits_BVhw)

    def blocks(self) -> list[nn.Module]:
        """The down UVit block, every middle transformer layer and the up UVit block, for FSDP2's per-block
        `fully_shard` (the built-in model keeps most of its weights in the UVit blocks around one layer)."""
        model = self.transformer
        return [model.down_block, *model.transformer_layers, model.up_block]


def _check_conditioning(folder: Path, transformer, text_encoder) -> None:
    """The transformer's text inputs must match the text encoder's widths."""
    config, text = transformer.config, text_encoder.config
    if int(config.encoder_hidden_size) != int(text.hidden_size):
        raise ModelLoadError(
            f"{folder}: transformer encoder_hidden_size={config.encoder_hidden_size} but the text encoder's "
            f"hidden_size is {text.hidden_size}"
        )
    if int(config.cond_embed_dim) != int(text.projection_dim):
        raise ModelLoadError(
            f"{folder}: transformer cond_embed_dim={config.cond_embed_dim} but the text encoder's "
            f"projection_dim is {text.projection_dim}"
        )
