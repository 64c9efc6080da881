"""Architecture of the built-in tiny model and its folder format (diffusers aMUSEd layout).

Sizes are chosen so that a whole GenEval-style evaluation (2,400 images) samples in minutes on two CPU
cores and the whole folder stays well under 25 MB: 64x64 images, 16x16 tokens, a 384-entry codebook.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AmusedPipeline, AmusedScheduler, UVit2DModel, VQModel
from pydantic import Field
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, PreTrainedTokenizerFast

from maskfocus.config import Section
from maskfocus.models.loading import VQ_RANGE_FILE
from maskfocus.models.tokenizer import MAX_LENGTH

IMAGE_SIZE = 64
GRID_SIZE = 16  # tokens per side: the VQ downsamples by 4
CODEBOOK_SIZE = 384  # the shapes world has 349 distinct patches, one code each (see shapes/patches.py)
TEXT_WIDTH = 64
TEXT_PROJECTION = 64
MICRO_COND_ENCODE_DIM = 8
NUM_MICRO_CONDS = 5  # aMUSEd: original width, height, crop top, crop left, aesthetic score


def build_vqvae() -> VQModel:
    """VQ tokenizer: 64x64 RGB in [-1, 1] -> 16x16 codes of a 384-entry codebook (decode by code lookup)."""
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=16,  # = code width: AmusedPipeline decodes codes with this shape
        num_vq_embeddings=CODEBOOK_SIZE,
        norm_num_groups=8,
        mid_block_add_attention=False,  # attention at 16x16 doubled the cost for no visible gain here
        sample_size=IMAGE_SIZE,
        lookup_from_codebook=True,
    )


def build_text_encoder(vocab_size: int, pad_id: int, bos_id: int, eos_id: int) -> CLIPTextModelWithProjection:
    """Tiny CLIP text encoder; special ids must lie inside the vocabulary."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        projection_dim=TEXT_PROJECTION,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
    )
    return CLIPTextModelWithProjection(config)


class TransformerShape(Section):
    """Size of the tiny UVit2D transformer (`maskfocus pretrain` builds it from these)."""

    hidden_size: int = Field(64, ge=8)
    """Width of every block."""
    num_hidden_layers: int = Field(1, ge=1)
    """Plain transformer layers in the middle of the network."""
    num_res_blocks: int = Field(4, ge=1)
    """ConvNeXt + attention pairs before and after the middle layers. UVit2D has no position embedding: its only
    spatial signal is each ConvNeXt block's 3x3 depthwise convolution, so these set how far apart two tokens can
    be and still see each other's place."""
    intermediate_size: int = Field(128, ge=8)
    """Feed-forward width of the middle layers."""
    num_attention_heads: int = Field(4, ge=1)
    """Heads of the middle layers (the res-block attention has 2)."""


def build_transformer(
    shape: TransformerShape | None = None, model_class: type[UVit2DModel] = UVit2DModel
) -> UVit2DModel:
    """Tiny masked transformer that attends over the full 16x16 token grid.

    No 2x downsample: UVit2D downsamples before its first block and has no skip connection, so with it every
    2x2 group of tokens is predicted by a linear map from one 8x8 cell vector; its teacher-forced accuracy on
    object tokens with 90% of the grid visible was 0.68 against 0.90 without (same steps). `model_class` may be a
    subclass with the same constructor (maskfocus.shapes.positional_uvit.PositionalUVit2DModel).
    """
    shape = shape or TransformerShape()
    return model_class(
        hidden_size=shape.hidden_size,
        use_bias=False,
        cond_embed_dim=TEXT_PROJECTION,
        micro_cond_encode_dim=MICRO_COND_ENCODE_DIM,
        micro_cond_embed_dim=MICRO_COND_ENCODE_DIM * NUM_MICRO_CONDS,
        encoder_hidden_size=TEXT_WIDTH,
        vocab_size=CODEBOOK_SIZE + 1,  # + the mask token, id CODEBOOK_SIZE
        codebook_size=CODEBOOK_SIZE,
        in_channels=shape.hidden_size,
        block_out_channels=shape.hidden_size,
        num_res_blocks=shape.num_res_blocks,
        downsample=False,
        upsample=False,
        block_num_heads=2,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        intermediate_size=shape.intermediate_size,
        sample_size=GRID_SIZE,
    )


def default_micro_conds(batch_size: int, image_size: int = IMAGE_SIZE) -> torch.Tensor:
    """aMUSEd's micro-conditioning as its pipeline sets it: (width, height, crop top, crop left, aesthetic 6)."""
    row = torch.tensor([image_size, image_size, 0, 0, 6], dtype=torch.float32)
    return row.expand(batch_size, NUM_MICRO_CONDS).clone()


def save_folder(
    folder: str | Path,
    vqvae: VQModel,
    tokenizer: PreTrainedTokenizerFast,
    text_encoder: CLIPTextModelWithProjection,
    transformer: UVit2DModel,
) -> None:
    """Write the model as a diffusers AmusedPipeline folder (model_index.json + subfolders, safetensors)."""
    scheduler = AmusedScheduler(mask_token_id=transformer.config.codebook_size, masking_schedule="cosine")
    pipeline = AmusedPipeline(
        vqvae=vqvae, tokenizer=tokenizer, text_encoder=text_encoder, transformer=transformer, scheduler=scheduler
    )
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    (Path(folder) / VQ_RANGE_FILE).write_text(json.dumps({"pixel_range": [-1.0, 1.0]}) + "\n")
