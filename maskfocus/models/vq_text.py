"""What the aMUSEd and Meissonic adapters share: a VQ image tokenizer, a CLIP text encoder and a transformer.

Each adapter adds only how its transformer is called (`logits`) and how its folder is loaded. Both condition
on the same aMUSEd-style micro-conditioning and the same text features (the CLIP projection as the pooled
embedding, the penultimate hidden layer as the sequence), as their reference pipelines build them.

Shape legend: B samples, L image tokens (h*w), V codebook size, S text tokens, D embedding width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from maskfocus.compiled import declare_per_sample_inputs
from maskfocus.models.base import Condition
from maskfocus.models.image_codec import VQImageCodec
from maskfocus.models.tokenizer import check_prompts, prompt_ids

AESTHETIC_SCORE = 6.0
"""Micro-conditioning aesthetic score: the default of AmusedPipeline and of Meissonic's pipeline."""
CROP_TOP_LEFT = (0.0, 0.0)
"""Micro-conditioning crop coordinates: no crop, as both pipelines default."""


def module_dtype(module: nn.Module) -> torch.dtype:
    """Dtype of the first floating parameter (the compute dtype the inputs must match)."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


def micro_conditions(batch: int, height: int, width: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(B, 5): original width, height, crop top, crop left, aesthetic score - in the order (width before height)
    that AmusedPipeline and Meissonic's pipeline pass them, at the resolution being generated."""
    row = torch.tensor([width, height, *CROP_TOP_LEFT, AESTHETIC_SCORE], dtype=dtype, device=device)
    return row.expand(batch, 5)


def step_tensor(step: int | torch.Tensor, batch: int, device: torch.device) -> torch.Tensor:
    """The sampling step index of every sample, (B,) long."""
    return torch.as_tensor(step, device=device, dtype=torch.long).expand(batch)


class VQTextGenerator:
    """MaskedGenerator parts common to VQ + CLIP-text + transformer models (see maskfocus.models.base)."""

    PER_SAMPLE_INPUTS: tuple[int | str, ...] = ()
    """The transformer inputs, as `logits` passes them (positional index or keyword), that hold one row per
    sample: the only ones maskfocus.compiled pads to a compiled batch size. Each adapter names its own."""

    def __init__(
        self,
        vqvae,
        transformer: nn.Module,
        text_encoder,
        tokenizer,
        *,
        mask_token_id: int,
        codebook_size: int,
        image_size: int,
        pixel_range: tuple[float, float],
        device: str | torch.device = "cpu",
    ):
        self.codec = VQImageCodec(vqvae, image_size, pixel_range, device)
        self.device = self.codec.device
        self.vqvae = self.codec.vqvae
        self.grid_size = self.codec.grid_size
        self.image_size = self.codec.image_size
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.transformer = transformer.to(self.device).eval()
        assert self.PER_SAMPLE_INPUTS, f"{type(self).__name__} must name its PER_SAMPLE_INPUTS"
        declare_per_sample_inputs(self.transformer, self.PER_SAMPLE_INPUTS)
        self.tokenizer = tokenizer
        self.codebook_size = codebook_size
        self.mask_token_id = mask_token_id

    @property
    def text_max_length(self) -> int:
        """Padded prompt length: the tokenizer's limit, capped by the text encoder's positions (CLIP: 77)."""
        return min(int(self.tokenizer.model_max_length), int(self.text_encoder.config.max_position_embeddings))

    def check_prompts(self, prompts: Sequence[str]) -> None:
        check_prompts(self.tokenizer, prompts)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Condition:
        """As both pipelines: pooled = the CLIP text projection, sequence = the penultimate hidden layer."""
        return self.encode_prompts_with(self.text_encoder, prompts)

    def encode_prompts_with(self, encoder: nn.Module, prompts: Sequence[str]) -> Condition:
        """`encode_prompts` by another encoder of the same tokenizer (a trainable or frozen copy), with gradients."""
        ids = prompt_ids(self.tokenizer, prompts, self.text_max_length).to(self.device)
        output = encoder(ids, return_dict=True, output_hidden_states=True)
        return Condition(hidden_BSD=output.hidden_states[-2], pooled_BD=output.text_embeds)

    def _inputs(self, module: nn.Module, condition: Condition) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Text states, pooled embedding and micro-conditions in the dtype of `module`."""
        dtype = module_dtype(module)
        height = width = self.image_size
        micro = micro_conditions(len(condition), height, width, dtype, self.device)
        return condition.hidden_BSD.to(dtype), condition.pooled_BD.to(dtype), micro

    def _to_logits(self, logits_BVhw: torch.Tensor) -> torch.Tensor:
        """(B, V, h, w) -> (B, h*w, V) float32 in row-major token order. Channels other than the codebook's size
        are an error: a reshape would split them across positions without a word (64 x 64 x 8256 by 8192 does)."""
        if logits_BVhw.shape[1] != self.codebook_size:
            raise ValueError(
                f"the transformer gave {logits_BVhw.shape[1]} logits per token for a codebook of {self.codebook_size}"
            )
        return logits_BVhw.flatten(2).transpose(1, 2).float()

    def decode(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W), by codebook lookup and the VQ decoder."""
        return self.codec.decode(tokens_BL)

    def encode_images(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) of images in [0, 1]."""
        return self.codec.encode_images(images_B3HW)

    def codebook_vectors(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        """(B, L, D) VQ codebook embedding of each token."""
        return self.codec.codebook_vectors(tokens_BL)

    def trainable_module(self) -> nn.Module:
        return self.transformer
