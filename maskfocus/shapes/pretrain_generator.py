"""Pretraining of the tiny text encoder + masked transformer with the MaskGIT objective.

Each example is a random scene, tokenized by the (already trained, frozen) VQ, with a loose caption
drawn afresh every time the scene is used: the captions mention only some objects and often leave out
counts, positions and colours, so the model learns to draw shapes but not to follow every detail.
Loss: cross-entropy on masked tokens, mask ratio cos(pi/2 r) with r ~ U(0, 1), caption dropped (empty)
with some probability so that classifier-free guidance works.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UVit2DModel, VQModel
from pydantic import Field
from transformers import CLIPTextModelWithProjection, PreTrainedTokenizerFast

from maskfocus.config import Section
from maskfocus.models.tokenizer import prompt_ids
from maskfocus.shapes.prompts import CaptionMix, loose_caption, pretraining_pair
from maskfocus.shapes.render import render_batch
from maskfocus.shapes.scene import Scene
from maskfocus.shapes.tiny_model import TransformerShape, build_text_encoder, build_transformer, default_micro_conds

LogFn = Callable[[dict], None]


class GeneratorPretrainConfig(Section):
    """Masked transformer + text encoder pretraining."""

    num_scenes: int = Field(40_000, ge=1)
    """Distinct random scenes in the corpus (re-captioned at every use)."""
    num_steps: int = Field(3000, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(64, ge=1)
    """Examples per step."""
    learning_rate: float = Field(1e-3, gt=0.0)
    """AdamW peak learning rate (linear warm-up, cosine decay to 10%)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    condition_dropout: float = Field(0.1, ge=0.0, le=1.0)
    """Probability of training on the empty caption (for classifier-free guidance)."""
    caption_mix: CaptionMix = CaptionMix(object_sizes=(16.0,))
    """How loosely scenes are captioned (looser captions leave more headroom for RL), and the scenes' object
    sizes: one size (16 px, 4x4 tokens) makes each shape a fixed stamp of tokens (single_object 0.750 against
    0.530 with all three sizes, same steps and transformer: benchmarks/RESULTS.md)."""
    foreground_first: float = Field(0.0, ge=0.0, le=1.0)
    """Fraction of examples whose mask covers the object tokens before any background token, as the sampler
    leaves them (see `mask_random_positions`); 0 = uniform MaskGIT masks only."""
    transformer: TransformerShape = TransformerShape()
    """Size of the masked transformer."""
    train_text_encoder: bool = True
    """Train the text encoder with the transformer; false keeps a given one frozen (as aMUSEd keeps its CLIP text
    encoder), e.g. the tiny CLIP's text tower (maskfocus.shapes.clip_text)."""


def mask_random_positions(
    tokens_BL: torch.Tensor,
    mask_id: int,
    generator: torch.Generator,
    foreground_first: float = 0.0,
    background_code: int | None = None,
) -> torch.Tensor:
    """MaskGIT training mask: per sample ceil(L cos(pi/2 r)) positions (at least 1), r ~ U(0, 1).

    Positions are uniformly random, except that with probability `foreground_first` a sample masks every
    token other than `background_code` before any background token (random order within each group). The
    sampler commits the confident background first and leaves whole objects masked until the last steps; with
    uniform masks alone the model almost never sees an object that is masked entirely while the background
    around it is known, and learns to leave such holes empty.
    """
    batch, num_tokens = tokens_BL.shape
    ratio_B = torch.cos(math.pi / 2 * torch.rand(batch, generator=generator))
    count_B = (ratio_B * num_tokens).ceil().clamp(min=1).long()
    priority_BL = torch.rand(batch, num_tokens, generator=generator)
    if foreground_first > 0:
        assert background_code is not None, "foreground_first needs the background code"
        chosen_B = torch.rand(batch, generator=generator) < foreground_first
        priority_BL = priority_BL - (chosen_B.unsqueeze(-1) & (tokens_BL != background_code)).float()
    rank_BL = priority_BL.argsort(-1).argsort(-1)  # lowest priority value masked first
    return rank_BL < count_B.unsqueeze(-1)


@torch.no_grad()
def tokenize_scenes(vqvae: VQModel, scenes: list[Scene], batch_size: int = 256) -> torch.Tensor:
    """VQ token ids (N, L) of the renders of `scenes`."""
    chunks = []
    for start in range(0, len(scenes), batch_size):
        images = render_batch(scenes[start : start + batch_size])
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        _, _, (_, _, indices) = vqvae.quantize(vqvae.encode(pixels).latents)
        chunks.append(indices.view(len(images), -1))
    return torch.cat(chunks)


def _lr_at(step: int, num_steps: int, base: float) -> float:
    warmup = max(1, num_steps // 20)
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, num_steps - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _encode_text(text_encoder, tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = prompt_ids(tokenizer, captions, tokenizer.model_max_length)
    output = text_encoder(ids, return_dict=True, output_hidden_states=True)
    return output.hidden_states[-2], output.text_embeds


def train_generator(
    config: GeneratorPretrainConfig,
    vqvae: VQModel,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    log: LogFn,
    progress: Callable[[int], None],
    start_from: tuple[CLIPTextModelWithProjection, UVit2DModel] | None = None,
) -> tuple[CLIPTextModelWithProjection, UVit2DModel]:
    """Train a text encoder and transformer on VQ tokens of random scenes with loose captions: fresh ones
    (`config.transformer`'s size), or `start_from`'s, trained further in place."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    scenes = [pretraining_pair(rng, config.caption_mix)[0] for _ in range(config.num_scenes)]
    corpus_NL = tokenize_scenes(vqvae, scenes)
    background = int(tokenize_scenes(vqvae, [Scene(objects=())])[0, 0])
    if start_from is None:
        text_encoder = build_text_encoder(
            len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
        )
        transformer = build_transformer(config.transformer)
    else:
        text_encoder, transformer = start_from
    text_encoder = text_encoder.requires_grad_(config.train_text_encoder).train(config.train_text_encoder)
    transformer = transformer.requires_grad_(True).train()
    parameters = list(transformer.parameters())
    if config.train_text_encoder:
        parameters += list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    mask_id = transformer.config.codebook_size
    side = transformer.config.sample_size
    for step in range(config.num_steps):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config.num_steps, config.learning_rate)
        pick = rng.integers(0, len(scenes), config.batch_size)
        captions = [
            "" if rng.random() < config.condition_dropout else loose_caption(scenes[i], rng, config.caption_mix)
            for i in pick
        ]
        targets_BL = corpus_NL[torch.from_numpy(pick)]
        masked_BL = mask_random_positions(targets_BL, mask_id, generator, config.foreground_first, background)
        inputs_BL = targets_BL.masked_fill(masked_BL, mask_id)
        hidden, pooled = _encode_text(text_encoder, tokenizer, captions)
        micro = default_micro_conds(len(pick))
        logits_BVhw = transformer(inputs_BL.view(-1, side, side), hidden, pooled, micro)
        logits_BLV = logits_BVhw.permute(0, 2, 3, 1).reshape(len(pick), -1, mask_id)
        loss = F.cross_entropy(logits_BLV[masked_BL], targets_BL[masked_BL])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == config.num_steps - 1:
            accuracy = (logits_BLV[masked_BL].argmax(-1) == targets_BL[masked_BL]).float().mean()
            log(
                {
                    "stage": "generator",
                    "step": step,
                    "loss": loss.item(),
                    "masked_accuracy": accuracy.item(),
                    "grad_norm": grad_norm.item(),
                    "lr": optimizer.param_groups[0]["lr"],
                }
            )
        progress(1)
    return text_encoder.eval(), transformer.eval()
