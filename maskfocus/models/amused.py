"""aMUSEd-style adapter: diffusers VQModel + UVit2DModel + transformers CLIP text encoder, from a local folder.

The built-in tiny model uses the same folder format, so one adapter serves both. aMUSEd's transformer
takes no timestep: the mask tokens carry the schedule, so `step` is unused here.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from maskfocus.config import BUILTIN_MODEL
from maskfocus.models.base import Condition, ModelLoadError
from maskfocus.models.tokenizer import check_prompts

PARTS = ("vqvae", "transformer", "text_encoder", "tokenizer")
REBUILD_HINT = "rebuild the built-in weights with `maskfocus pretrain` (about 30 minutes on 2 CPU cores)"


def builtin_folder(name: str = "shapes-tiny") -> Path:
    """Where the shipped tiny model lives inside the package."""
    return Path(__file__).resolve().parents[1] / "pretrained" / name


def resolve_model_path(path: str | Path) -> Path:
    """`builtin:shapes-tiny` -> the packaged folder; anything else is a local folder."""
    text = str(path)
    if text.startswith("builtin:"):
        return builtin_folder(text.removeprefix("builtin:"))
    return Path(text).expanduser()


def _check_folder(folder: Path, hint: str) -> None:
    if not folder.is_dir():
        raise ModelLoadError(f"model folder not found: {folder}; {hint}")
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"{folder} has no model_index.json: not a diffusers aMUSEd folder; {hint}")
    missing = [part for part in PARTS if not (folder / part).is_dir()]
    if missing:
        raise ModelLoadError(f"{folder} is missing part(s) {', '.join(missing)} (needs {', '.join(PARTS)}); {hint}")


def _load_part(loader, folder: Path, part: str, hint: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return loader(str(folder / part), local_files_only=True)
    except Exception as error:  # corrupt safetensors, missing weight file, bad json: all user-fixable
        raise ModelLoadError(
            f"cannot load {part} from {folder / part}: {type(error).__name__}: {error}; {hint}"
        ) from None


class AmusedGenerator:
    """MaskedGenerator over an aMUSEd-format folder (see maskfocus.models.base for the interface)."""

    def __init__(self, vqvae, transformer, text_encoder, tokenizer, device: str | torch.device = "cpu"):
        from maskfocus.shapes.tiny_model import default_micro_conds

        self._micro_conds = default_micro_conds
        self.device = torch.device(device)
        self.vqvae = vqvae.to(self.device).eval().requires_grad_(False)
        self.text_encoder = text_encoder.to(self.device).eval().requires_grad_(False)
        self.transformer = transformer.to(self.device).eval()
        self.tokenizer = tokenizer
        self.codebook_size = int(transformer.config.codebook_size)
        self.mask_token_id = self.codebook_size
        side = int(transformer.config.sample_size)
        self.grid_size = (side, side)
        self.image_size = side * 2 ** (len(vqvae.config.block_out_channels) - 1)
        self.latent_channels = int(vqvae.config.latent_channels)

    @classmethod
    def from_folder(cls, path: str | Path = BUILTIN_MODEL, device: str = "cpu") -> AmusedGenerator:
        from diffusers import UVit2DModel, VQModel
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        folder = resolve_model_path(path)
        hint = REBUILD_HINT if str(path).startswith("builtin:") else "check the folder against the README"
        _check_folder(folder, hint)
        _check_configs(folder)
        vqvae = _load_part(VQModel.from_pretrained, folder, "vqvae", hint)
        transformer = _load_part(UVit2DModel.from_pretrained, folder, "transformer", hint)
        text_encoder = _load_part(CLIPTextModelWithProjection.from_pretrained, folder, "text_encoder", hint)
        tokenizer = _load_part(AutoTokenizer.from_pretrained, folder, "tokenizer", hint)
        _check_consistent(folder, vqvae, transformer, text_encoder, tokenizer)
        return cls(vqvae, transformer, text_encoder, tokenizer, device)

    def check_prompts(self, prompts: Sequence[str]) -> None:
        check_prompts(self.tokenizer, prompts)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> Condition:
        """Like AmusedPipeline: pooled projection + the penultimate hidden layer."""
        ids = self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)
        output = self.text_encoder(ids, return_dict=True, output_hidden_states=True)
        return Condition(hidden_BSD=output.hidden_states[-2], pooled_BD=output.text_embeds)

    def logits(
        self,
        tokens_BL: torch.Tensor,
        condition: Condition,
        step: int | torch.Tensor = 0,
        num_steps: int = 1,
        module: nn.Module | None = None,
    ) -> torch.Tensor:
        """`module` replaces the transformer (a frozen reference copy, or an FSDP-wrapped one)."""
        batch = tokens_BL.shape[0]
        h, w = self.grid_size
        micro = self._micro_conds(batch, self.image_size).to(self.device)
        logits_BVhw = (module or self.transformer)(
            tokens_BL.view(batch, h, w), condition.hidden_BSD, condition.pooled_BD, micro
        )
        return logits_BVhw.permute(0, 2, 3, 1).reshape(batch, h * w, self.codebook_size).float()

    @torch.no_grad()
    def decode(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        batch = tokens_BL.shape[0]
        h, w = self.grid_size
        shape = (batch, h, w, self.latent_channels)
        images = self.vqvae.decode(tokens_BL.reshape(-1), force_not_quantize=True, shape=shape).sample
        return ((images + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images_B3HW: torch.Tensor) -> torch.Tensor:
        latents = self.vqvae.encode(images_B3HW.to(self.device) * 2 - 1).latents
        _, _, (_, _, indices) = self.vqvae.quantize(latents)
        return indices.view(images_B3HW.shape[0], -1)

    def codebook_vectors(self, tokens_BL: torch.Tensor) -> torch.Tensor:
        return self.vqvae.quantize.embedding(tokens_BL)

    def trainable_module(self) -> nn.Module:
        return self.transformer


def _read_config(folder: Path, part: str) -> dict:
    path = folder / part / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"cannot read {path}: {error}") from None


def _check_configs(folder: Path) -> None:
    """Compare the parts' configs before loading any weights, so a mismatch reads as one clear sentence."""
    codebook = _read_config(folder, "vqvae").get("num_vq_embeddings")
    predicted = _read_config(folder, "transformer").get("codebook_size")
    if codebook != predicted:
        raise ModelLoadError(
            f"{folder}: codebook sizes disagree: vqvae/config.json has num_vq_embeddings={codebook}, "
            f"transformer/config.json has codebook_size={predicted}; the two parts come from different models"
        )


def _check_consistent(folder: Path, vqvae, transformer, text_encoder, tokenizer) -> None:
    codebook = int(vqvae.config.num_vq_embeddings)
    if int(transformer.config.codebook_size) != codebook:
        raise ModelLoadError(
            f"{folder}: codebook sizes disagree: vqvae has {codebook} codes, "
            f"transformer predicts {transformer.config.codebook_size}"
        )
    if int(transformer.config.vocab_size) <= codebook:
        raise ModelLoadError(f"{folder}: transformer vocab_size must exceed the codebook size to hold the mask token")
    if len(tokenizer) > text_encoder.config.vocab_size:
        raise ModelLoadError(
            f"{folder}: tokenizer has {len(tokenizer)} entries, text encoder only {text_encoder.config.vocab_size}"
        )
    index = json.loads((folder / "model_index.json").read_text())
    if "transformer" not in index:
        raise ModelLoadError(f"{folder}/model_index.json does not list a transformer")
