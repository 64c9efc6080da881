"""Tiny random model folders in the real checkpoint formats (aMUSEd, Meissonic), written by the tests.

Same layout and loaders as amused-256/512 and MeissonFlow/Meissonic (CLIP BPE tokenizer, mask id = vocab - 1,
not the codebook size), at sizes that load and run in a second on a CPU.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import torch

CODEBOOK = 32
VOCAB = CODEBOOK + 4  # like aMUSEd's 8256 = 8192 + 64: room above the codebook, mask = VOCAB - 1
TEXT_WIDTH = 32
TEXT_LENGTH = 16
MEISSONIC_CODE = Path(__file__).with_name("tiny_meissonic_transformer.py")


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE (GPT-2 / CLIP's bytes_to_unicode)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]


def build_clip_tokenizer():
    """A real transformers CLIPTokenizer with a tiny BPE vocabulary (bytes, a few merges, the two specials)."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {token: index for index, token in enumerate(symbols + [s + "</w>" for s in symbols])}
    merges = ["a t</w>", "c at</w>", "r e", "re d</w>"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in merges], model_max_length=TEXT_LENGTH)


def build_text_encoder(tokenizer, width: int = TEXT_WIDTH):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=TEXT_LENGTH,
        projection_dim=width,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return CLIPTextModelWithProjection(config)


def build_vqvae(levels: int = 2):
    """VQ with 2**(levels-1) downscale and a CODEBOOK-entry codebook."""
    from diffusers import VQModel

    return VQModel(
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=(8, 16, 16, 16)[:levels],
        layers_per_block=1,
        latent_channels=8,
        num_vq_embeddings=CODEBOOK,
        norm_num_groups=4,
        mid_block_add_attention=False,
        lookup_from_codebook=True,
    )


def build_uvit(sample_size: int = 8):
    from diffusers import UVit2DModel

    return UVit2DModel(
        hidden_size=32,
        cond_embed_dim=TEXT_WIDTH,
        micro_cond_encode_dim=4,
        micro_cond_embed_dim=20,
        encoder_hidden_size=TEXT_WIDTH,
        vocab_size=VOCAB,
        codebook_size=CODEBOOK,
        in_channels=16,
        block_out_channels=16,
        num_res_blocks=1,
        block_num_heads=2,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        sample_size=sample_size,
    )


def write_amused_folder(folder: Path) -> Path:
    """An AmusedPipeline folder (save_pretrained) with a CLIP BPE tokenizer and mask id VOCAB - 1."""
    from diffusers import AmusedPipeline, AmusedScheduler

    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer()
    pipeline = AmusedPipeline(
        vqvae=build_vqvae(),
        tokenizer=tokenizer,
        text_encoder=build_text_encoder(tokenizer),
        transformer=build_uvit(),
        scheduler=AmusedScheduler(mask_token_id=VOCAB - 1),
    )
    pipeline.save_pretrained(str(folder), safe_serialization=True)
    return folder


def import_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_meissonic_folder(folder: Path) -> Path:
    """vqvae/, text_encoder/, tokenizer/, scheduler/ and transformer/ with config, weights and the module file."""
    from diffusers import AmusedScheduler

    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer()
    build_vqvae().save_pretrained(str(folder / "vqvae"))
    build_text_encoder(tokenizer).save_pretrained(str(folder / "text_encoder"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    AmusedScheduler(mask_token_id=VOCAB - 1).save_pretrained(str(folder / "scheduler"))
    code = import_file(MEISSONIC_CODE, "tiny_meissonic_for_saving")
    transformer = code.Transformer2DModel(
        vocab_size=VOCAB, codebook_size=CODEBOOK, joint_attention_dim=TEXT_WIDTH, pooled_projection_dim=TEXT_WIDTH
    )
    transformer.save_pretrained(str(folder / "transformer"))
    shutil.copy(MEISSONIC_CODE, folder / "transformer" / "transformer.py")
    return folder
