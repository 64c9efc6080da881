"""CLIP score reward: cosine(image embedding, prompt embedding) with an open_clip model from local disk.

A model is named in one of three ways, none of which downloads anything:
- a folder in open_clip's `local-dir:` layout (open_clip_config.json + weights), e.g. a local copy of
  laion/CLIP-ViT-H-14-laion2B-s32B-b79K; a `tokenizer/` subfolder holding a transformers tokenizer (the
  built-in tiny CLIP's word-level one) takes precedence over open_clip's own tokenizer;
- `builtin:shapes-clip`, the packaged tiny CLIP of the shapes world;
- an open_clip architecture name (`ViT-H-14`) plus a checkpoint file (.safetensors, or a torch file read with
  `weights_only=True`; a {"state_dict": ...} wrapper and a `module.` prefix are accepted). HPS v2.1 is such a
  checkpoint (see hps.py).
A checkpoint given with a folder replaces the folder's weights.

Architectures whose text tower or tokenizer is a Hugging Face model (`text_cfg.hf_model_name` /
`hf_tokenizer_name`: the roberta, mt5, nllb, CLIPA, worldwide and SigLIP families) are refused by name, since
open_clip would fetch them from the Hub; so are those whose released weights all use another image mean/std than
OpenAI's (SigLIP, MobileCLIP, PE-Core), which open_clip keeps with the pretrained tag, not the architecture. Such
a model loads from a local-dir folder: its open_clip_config.json carries `preprocess_cfg`, the tokenizer comes
from the folder (or its `tokenizer/`), and `hf_model_name` must name a local transformers folder by absolute path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from maskfocus.models.base import ModelLoadError
from maskfocus.models.loading import resolve_model_path

TINY_CLIP = "builtin:shapes-clip"

Fit = Literal["crop", "pad"]
"""How a non-square image becomes square: CLIP's centre crop of the short side, or HPSv2's zero padding."""


@dataclass
class LoadedClip:
    """An open_clip model with what it needs around it: tokenizer and image normalization."""

    model: torch.nn.Module
    tokenize: Callable[[Sequence[str]], torch.Tensor]
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]


def read_state_dict(path: Path, field: str) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, never unpickling arbitrary objects; errors name `field` and the path."""
    if not path.is_file():
        raise ModelLoadError(f"{field}: checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ModelLoadError(f"{field}: cannot read checkpoint {path}: {type(error).__name__}: {error}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{field}: {path} holds no state dict (a mapping of names to tensors)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def load_weights(model: torch.nn.Module, path: Path, field: str) -> None:
    """Load a checkpoint file strictly; a mismatch names the first missing and unexpected keys."""
    state = read_state_dict(path, field)
    if "logit_scale" in state and state["logit_scale"].shape != model.logit_scale.shape:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches raise even with strict=False
        message = " ".join(str(error).split())
        raise ModelLoadError(f"{field}: {path} does not fit the model architecture: {message}") from None
    missing = [k for k in result.missing_keys if k != "logit_bias"]
    if missing or result.unexpected_keys:
        raise ModelLoadError(
            f"{field}: {path} does not fit the model architecture: {len(missing)} missing keys {missing[:5]}, "
            f"{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:5]}"
        )


def open_clip_problems(
    model: str, checkpoint: str | None, field: str = "model", checkpoint_field: str = "checkpoint"
) -> list[str]:
    """What would stop `load_open_clip` from finding its files, without loading anything (`maskfocus train --check`
    runs it before a run starts), every problem at once; empty when the folder, or the architecture name and its
    weights file, are there."""
    try:
        folder = resolve_model_path(model)
    except ModelLoadError as error:
        return [f"{field}: {error}"]
    problems = [] if folder.is_dir() else _architecture_problems(model, folder, checkpoint, field, checkpoint_field)
    if folder.is_dir():
        try:
            read_folder_config(folder, field)
        except ModelLoadError as error:
            problems.append(str(error))
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        problems.append(f"{checkpoint_field}: checkpoint file not found: {Path(checkpoint).expanduser()}")
    return problems


def _architecture_problems(
    model: str, folder: Path, checkpoint: str | None, field: str, checkpoint_field: str
) -> list[str]:
    """`model` is no folder, so it must name an open_clip architecture that builds offline, and have a weights
    file."""
    import open_clip

    if model not in open_clip.list_models():
        if "/" in model or model.startswith((".", "~")):
            return [f"{field}: CLIP model folder not found: {folder}"]
        return [
            f"{field}: {model!r} is neither a local folder nor an open_clip architecture name (e.g. ViT-H-14, ViT-L-14)"
        ]
    try:
        check_offline_architecture(model, field)
    except ModelLoadError as error:
        return [str(error)]  # it advises a folder instead, so no weights file is asked for
    if checkpoint is None:
        return [f"{checkpoint_field}: the architecture {model!r} needs a weights file on local disk"]
    return []


def load_open_clip(
    model: str, checkpoint: str | None = None, field: str = "model", checkpoint_field: str = "checkpoint"
) -> LoadedClip:
    """An open_clip model from a local folder, `builtin:...`, or an architecture name + checkpoint file."""
    problems = open_clip_problems(model, checkpoint, field, checkpoint_field)
    if problems:
        raise ModelLoadError("; ".join(problems))
    folder = resolve_model_path(model)
    if not folder.is_dir():
        return _load_architecture(model, Path(checkpoint).expanduser(), checkpoint_field)
    loaded = _load_folder(folder, field)
    if checkpoint is not None:
        load_weights(loaded.model, Path(checkpoint).expanduser(), checkpoint_field)
    return loaded


def read_folder_config(folder: Path, field: str) -> dict[str, Any]:
    """The open_clip_config.json of a local-dir CLIP folder, as a dict; a missing or damaged one is named."""
    config_file = folder / "open_clip_config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{field}: CLIP folder {folder} has no open_clip_config.json (open_clip local-dir layout)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{field}: {config_file} is not readable JSON: {error}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_cfg"), dict):
        raise ModelLoadError(f"{field}: {config_file} has no `model_cfg` object (open_clip local-dir layout)")
    return config


@contextmanager
def quiet_root_logger() -> Iterator[None]:
    """open_clip logs its loading at INFO on the root logger: raised to WARNING while it loads, then put back."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _load_folder(folder: Path, field: str) -> LoadedClip:
    import open_clip

    config_file = folder / "open_clip_config.json"
    config = read_folder_config(folder, field)
    text_model = config.get("model_cfg", {}).get("text_cfg", {}).get("hf_model_name")
    if text_model is not None and not (Path(text_model).is_absolute() and Path(text_model).is_dir()):
        raise ModelLoadError(
            f"{field}: {config_file} names the text model {text_model!r} (model_cfg.text_cfg.hf_model_name), which "
            "open_clip would download from the Hugging Face Hub; set it to the absolute path of a local "
            "transformers folder of that model"
        )
    try:
        with quiet_root_logger():
            model = open_clip.create_model(f"local-dir:{folder}", device="cpu", require_pretrained=True)
            tokenize = _folder_tokenizer(folder) or open_clip.get_tokenizer(f"local-dir:{folder}")
    except Exception as error:
        raise ModelLoadError(f"{field}: cannot load CLIP from {folder}: {type(error).__name__}: {error}") from None
    preprocess = config.get("preprocess_cfg", {})
    return LoadedClip(
        model=model,
        tokenize=tokenize,
        image_size=int(config["model_cfg"]["vision_cfg"]["image_size"]),
        mean=preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN),
        std=preprocess.get("std", open_clip.OPENAI_DATASET_STD),
    )


def check_offline_architecture(name: str, field: str = "model") -> None:
    """Refuse an open_clip architecture name that cannot be built from local files alone, or whose image
    normalization its config does not carry (see the module docstring); the error names `field` and the reason."""
    import open_clip

    text = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
    hub = {key: text[key] for key in ("hf_model_name", "hf_tokenizer_name") if key in text}
    if hub or "siglip" in name.lower():
        names = ", ".join(f"{key}={value!r}" for key, value in hub.items()) or "a SigLIP tokenizer"
        raise ModelLoadError(
            f"{field}: the open_clip architecture {name!r} takes its text model or tokenizer from the Hugging Face "
            f"Hub ({names}), which open_clip would download; use a local-dir folder instead (open_clip_config.json "
            "with preprocess_cfg, weights, tokenizer files, and hf_model_name set to a local folder)"
        )
    openai = (tuple(open_clip.OPENAI_DATASET_MEAN), tuple(open_clip.OPENAI_DATASET_STD))
    tags = open_clip.list_pretrained_tags_by_model(name)
    configs = [open_clip.get_pretrained_cfg(name, tag) for tag in tags]
    norms = {(tuple(c.get("mean", openai[0])), tuple(c.get("std", openai[1]))) for c in configs}
    if norms and openai not in norms:
        mean, std = sorted(norms)[0]
        raise ModelLoadError(
            f"{field}: the released weights of the open_clip architecture {name!r} use image mean {list(mean)} and "
            f"std {list(std)}, which open_clip keeps with its pretrained tags and which a bare checkpoint would not "
            "get (it would be normalized as OpenAI's CLIP); use a local-dir folder whose open_clip_config.json "
            "has preprocess_cfg"
        )


def _load_architecture(name: str, path: Path, checkpoint_field: str) -> LoadedClip:
    """An architecture `open_clip_problems` has passed, with the weights file at `path`."""
    import open_clip

    model = open_clip.create_model(name, pretrained=None, device="cpu")
    load_weights(model, path, checkpoint_field)
    preprocess = open_clip.get_model_preprocess_cfg(model)
    image_size = preprocess.get("size", model.visual.image_size)
    return LoadedClip(
        model=model,
        tokenize=open_clip.get_tokenizer(name),
        image_size=int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size),
        mean=preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN),
        std=preprocess.get("std", open_clip.OPENAI_DATASET_STD),
    )


def fit_square(image_3HW: torch.Tensor, size: int, fit: Fit = "crop") -> torch.Tensor:
    """One image in [0, 1] -> (3, size, size): bicubic resize after a centre crop or a zero pad to a square."""
    _, height, width = image_3HW.shape
    if height != width:
        side = min(height, width) if fit == "crop" else max(height, width)
        if fit == "crop":
            top, left = (height - side) // 2, (width - side) // 2
            image_3HW = image_3HW[:, top : top + side, left : left + side]
        else:  # HPSv2's ResizeMaxSize: the image centred on a zero square
            pad_w, pad_h = side - width, side - height
            image_3HW = F.pad(image_3HW, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
    if image_3HW.shape[-1] == size:
        return image_3HW
    resized = F.interpolate(image_3HW[None], size=size, mode="bicubic", align_corners=False, antialias=True)
    return resized[0].clamp(0, 1)


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
        fit: Fit = "crop",
    ):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.tokenize = tokenize
        self.image_size = image_size
        self.fit = fit
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def load(
        cls,
        model: str = TINY_CLIP,
        checkpoint: str | None = None,
        device: str = "cpu",
        fit: Fit = "crop",
        field: str = "model",
        checkpoint_field: str = "checkpoint",
    ) -> ClipScorer:
        """From a local folder, `builtin:...`, or an architecture name + checkpoint (see the module docstring)."""
        loaded = load_open_clip(model, checkpoint, field, checkpoint_field)
        return cls(loaded.model, loaded.tokenize, loaded.image_size, loaded.mean, loaded.std, device, fit)

    @classmethod
    def from_folder(
        cls, path: str | Path = TINY_CLIP, device: str = "cpu", field: str = "rewards[].model"
    ) -> ClipScorer:
        """From a local open_clip folder or `builtin:...`; errors name `field`, the option or key that gave `path`."""
        folder = resolve_model_path(path)
        if not folder.is_dir():
            raise ModelLoadError(
                f"CLIP model folder not found: {folder} ({field}; "
                "`maskfocus pretrain --stages clip` rebuilds builtin:shapes-clip)"
            )
        return cls.load(str(folder), device=device, field=field)

    def preprocess(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Images in [0, 1] ((B, 3, H, W), or a list of (3, H_b, W_b) crops) -> normalized (B, 3, S, S)."""
        if isinstance(images, torch.Tensor) and images.shape[-1] == images.shape[-2] == self.image_size:
            batch = images.to(self.device).float()
        else:
            batch = torch.stack([fit_square(i.to(self.device).float(), self.image_size, self.fit) for i in images])
        return (batch - self.mean) / self.std

    def image_embeddings(self, images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        """Unit-norm image embeddings of images in [0, 1], (B, D)."""
        with torch.no_grad():
            return F.normalize(self.model.encode_image(self.preprocess(images)), dim=-1)

    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm text embeddings, (B, D)."""
        with torch.no_grad():
            return F.normalize(self.model.encode_text(self.tokenize(prompts).to(self.device)), dim=-1)

    def score(self, images_B3HW: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """cosine(image_b, prompt_b) per pair, (B,)."""
        if len(images_B3HW) != len(prompts):  # one prompt would broadcast over every image
            raise ValueError(f"{len(images_B3HW)} images but {len(prompts)} prompts: one prompt per image")
        return (self.image_embeddings(images_B3HW) * self.text_embeddings(prompts)).sum(-1)


def _folder_tokenizer(folder: Path) -> Callable[[Sequence[str]], torch.Tensor] | None:
    if not (folder / "tokenizer").is_dir():
        return None
    from transformers import AutoTokenizer

    from maskfocus.models.tokenizer import prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(str(folder / "tokenizer"), local_files_only=True)

    def tokenize(prompts: Sequence[str]) -> torch.Tensor:
        return prompt_ids(tokenizer, prompts, tokenizer.model_max_length)

    return tokenize
