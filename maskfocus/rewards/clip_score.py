"""CLIP score reward: cosine(image embedding, prompt embedding) with an open_clip model from a local folder.

The folder is open_clip's `local-dir:` layout (open_clip_config.json + weights). A `tokenizer/` subfolder
holding a transformers tokenizer (the built-in tiny CLIP's word-level one) takes precedence over
open_clip's own tokenizer. Nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from maskfocus.models.base import ModelLoadError

TINY_CLIP = "builtin:shapes-clip"


def resolve_clip_path(path: str | Path) -> Path:
    """`builtin:shapes-clip` -> the packaged folder; anything else is a local folder."""
    text = str(path)
    if text.startswith("builtin:"):
        return Path(__file__).resolve().parents[1] / "pretrained" / text.removeprefix("builtin:")
    return Path(text).expanduser()


class ClipScorer:
    """Embeds images and prompts with one CLIP model and scores their cosine similarity."""

    def __init__(
        self,
        model,
        tokenize: Callable[[Sequence[str]], torch.Tensor],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenize = tokenize
        self.image_size = image_size
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def from_folder(cls, path: str | Path = TINY_CLIP, device: str = "cpu") -> ClipScorer:
        import open_clip

        folder = resolve_clip_path(path)
        if not folder.is_dir():
            raise ModelLoadError(
                f"CLIP reward model folder not found: {folder} (rewards[].model; "
                "`maskfocus pretrain --stages clip` rebuilds builtin:shapes-clip)"
            )
        config_file = folder / "open_clip_config.json"
        if not config_file.is_file():
            raise ModelLoadError(f"CLIP folder {folder} has no open_clip_config.json (open_clip local-dir layout)")
        config = json.loads(config_file.read_text())
        try:
            logging.getLogger().setLevel(max(logging.getLogger().level, logging.WARNING))
            model = open_clip.create_model(f"local-dir:{folder}", device="cpu", require_pretrained=True)
        except Exception as error:
            raise ModelLoadError(f"cannot load CLIP from {folder}: {type(error).__name__}: {error}") from None
        tokenize = _folder_tokenizer(folder) or open_clip.get_tokenizer(f"local-dir:{folder}")
        preprocess = config.get("preprocess_cfg", {})
        image_size = int(config["model_cfg"]["vision_cfg"]["image_size"])
        mean = preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN)
        std = preprocess.get("std", open_clip.OPENAI_DATASET_STD)
        return cls(model, tokenize, image_size, mean, std, device)

    def image_embeddings(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        """Unit-norm image embeddings of images in [0, 1], (B, D)."""
        images = images_B3HW.to(self.device).float()
        if images.shape[-1] != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bicubic", align_corners=False).clamp(0, 1)
        with torch.no_grad():
            return F.normalize(self.model.encode_image((images - self.mean) / self.std), dim=-1)

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings, (B, D)."""
        with torch.no_grad():
            return F.normalize(self.model.encode_text(self.tokenize(prompts).to(self.device)), dim=-1)

    def score(self, images_B3HW: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """cosine(image_b, prompt_b) per pair, (B,)."""
        return (self.image_embeddings(images_B3HW) * self.text_embeddings(prompts)).sum(-1)


def _folder_tokenizer(folder: Path) -> Callable[[Sequence[str]], torch.Tensor] | None:
    if not (folder / "tokenizer").is_dir():
        return None
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)

    def tokenize(prompts: Sequence[str]) -> torch.Tensor:
        return tokenizer(
            list(prompts),
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    return tokenize
