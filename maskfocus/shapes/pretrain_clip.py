"""Pretraining of the tiny CLIP (open_clip architecture, 64-px images) used for the CLIP-score reward.

Trained contrastively on renders of random scenes with captions, saved in open_clip's `local-dir:`
layout plus the word-level tokenizer, and checked by zero-shot colour and shape classification.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerFast

from maskfocus.config import Section
from maskfocus.models.tokenizer import MAX_LENGTH, prompt_ids
from maskfocus.rewards.clip_score import ClipScorer
from maskfocus.shapes.pretrain_vq import images_to_tensor
from maskfocus.shapes.prompts import CaptionMix, pretraining_pair
from maskfocus.shapes.render import render_batch
from maskfocus.shapes.scene import random_scene
from maskfocus.shapes.world import COLORS, IMAGE_SIZE, SHAPES, article

LogFn = Callable[[dict], None]
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class ClipPretrainConfig(Section):
    """Tiny CLIP pretraining."""

    num_steps: int = Field(1200, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(128, ge=2)
    """Image-caption pairs per step (the contrastive batch)."""
    learning_rate: float = Field(1e-3, gt=0.0)
    """AdamW peak learning rate (cosine decay)."""
    caption_mix: CaptionMix = CaptionMix(p_drop=0.0, p_color=0.9, p_count=0.9, p_position=0.7)
    """Captions for CLIP are tighter than the generator's, so that the score rewards details."""


def clip_model_config(vocab_size: int, pad_id: int, eos_id: int) -> dict:
    """open_clip model_cfg of the tiny CLIP."""
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": IMAGE_SIZE, "patch_size": 8, "width": 128, "layers": 3, "head_width": 32},
        "text_cfg": {
            "context_length": MAX_LENGTH,
            "vocab_size": vocab_size,
            "width": 64,
            "heads": 2,
            "layers": 3,
            "pad_id": pad_id,
            "eos_id": eos_id,
            "pool_type": "eos",
        },
    }


def build_clip(model_cfg: dict):
    from open_clip import CLIP
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    return CLIP(model_cfg["embed_dim"], CLIPVisionCfg(**model_cfg["vision_cfg"]), CLIPTextCfg(**model_cfg["text_cfg"]))


def _tokenize(tokenizer: PreTrainedTokenizerFast, captions: list[str]) -> torch.Tensor:
    return prompt_ids(tokenizer, captions, MAX_LENGTH)


def train_clip(
    config: ClipPretrainConfig,
    tokenizer: PreTrainedTokenizerFast,
    seed: int,
    log: LogFn,
    progress: Callable[[int], None],
) -> tuple[torch.nn.Module, dict]:
    """Contrastive training on (render, caption) pairs of fresh random scenes."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model_cfg = clip_model_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    model = build_clip(model_cfg).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.learning_rate, total_steps=config.num_steps, pct_start=0.05
    )
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    for step in range(config.num_steps):
        pairs = [pretraining_pair(rng, config.caption_mix) for _ in range(config.batch_size)]
        scenes, captions = [scene for scene, _ in pairs], [caption for _, caption in pairs]
        images = (images_to_tensor(render_batch(scenes)) - mean) / std
        image_emb = F.normalize(model.encode_image(images), dim=-1)
        text_emb = F.normalize(model.encode_text(_tokenize(tokenizer, captions)), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * image_emb @ text_emb.T
        # identical captions in one batch are not negatives of each other
        same = torch.tensor([[a == b for b in captions] for a in captions], dtype=torch.float32)
        targets = same / same.sum(-1, keepdim=True)
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == config.num_steps - 1:
            log({"stage": "clip", "step": step, "loss": loss.item(), "logit_scale": model.logit_scale.exp().item()})
        progress(1)
    return model.eval(), model_cfg


def save_clip(folder: str | Path, model: torch.nn.Module, model_cfg: dict, tokenizer: PreTrainedTokenizerFast) -> None:
    """open_clip local-dir layout + our tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": list(MEAN), "std": list(STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2))
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    tokenizer.save_pretrained(str(folder / "tokenizer"))


def zero_shot_accuracy(scorer: ClipScorer, num_images: int = 300, seed: int = 1234) -> dict[str, float]:
    """Zero-shot colour and shape classification of single-object renders.

    A class's text embedding is the mean over prompt variants: shapes "a photo of a circle"; colours
    "a photo of a red circle", "... a red square", ... averaged over the shapes (prompt ensembling).
    """
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, num_objects=1) for _ in range(num_images)]
    image_emb = scorer.image_embeddings(images_to_tensor(render_batch(scenes)))
    classes = {
        "shape": {name: [f"a photo of {article(name)} {name}"] for name in SHAPES},
        "color": {name: [f"a photo of {article(name)} {name} {shape}" for shape in SHAPES] for name in COLORS},
    }
    result = {}
    for attribute, variants in classes.items():
        names = list(variants)
        class_emb = torch.stack([F.normalize(scorer.text_embeddings(v).mean(0), dim=-1) for v in variants.values()])
        predicted = (image_emb @ class_emb.T).argmax(-1)
        truth = torch.tensor([names.index(getattr(scene.objects[0], attribute)) for scene in scenes])
        result[attribute] = (predicted == truth).float().mean().item()
    return result
