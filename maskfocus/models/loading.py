"""Loading the parts of a model folder from local disk, with errors a user can act on (DESIGN.md, Models).

Shared by the aMUSEd and Meissonic adapters: both folders hold a diffusers `VQModel` (vqvae/), a transformers
CLIP text encoder (text_encoder/) with its tokenizer (tokenizer/), a transformer (transformer/) and a
scheduler config naming the mask token (scheduler/). Nothing here downloads: every loader gets
`local_files_only=True`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from maskfocus.models.base import ModelLoadError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REBUILD_HINT = "rebuild the built-in weights with `maskfocus pretrain` (about 30 minutes on 2 CPU cores)"
FOLDER_HINT = "check the folder against the README section 'Using a real checkpoint'"
CLIP_TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")


def builtin_folder(name: str = "shapes-tiny") -> Path:
    """Where the shipped tiny model lives inside the package."""
    return Path(__file__).resolve().parents[1] / "pretrained" / name


BUILTIN_MODELS = ("shapes-tiny", "shapes-clip")
"""The models that ship inside the package (`builtin:NAME`): the tiny generator and the tiny CLIP."""


def resolve_model_path(path: str | Path) -> Path:
    """`builtin:shapes-tiny` -> the packaged folder; anything else is a local folder. An unknown built-in name is an
    error naming the known ones (else a typo read as missing weights, with a hint to rebuild them)."""
    text = str(path)
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        if name not in BUILTIN_MODELS:
            known = ", ".join(f"builtin:{known}" for known in BUILTIN_MODELS)
            raise ModelLoadError(f"{text}: no such built-in model; the built-in ones are {known}")
        return builtin_folder(name)
    return Path(text).expanduser()


def folder_hint(path: str | Path) -> str:
    """What to tell the user when the folder at `path` is broken."""
    return REBUILD_HINT if str(path).startswith("builtin:") else FOLDER_HINT


def torch_dtype(name: str) -> torch.dtype:
    """`float32` | `bfloat16` | `float16` -> the torch dtype."""
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


GENERATOR_PARTS = ("vqvae", "transformer", "text_encoder", "tokenizer")
"""The subfolders of an aMUSEd or Meissonic folder."""
GENERATOR_KINDS = {"amused": "diffusers aMUSEd", "meissonic": "Meissonic"}


def check_generator_folder(path: str | Path, kind: str, extra_parts: tuple[str, ...] = ()) -> Path:
    """The model folder of `model.path` exists and has a generator's parts (and `extra_parts`, for a caller that
    needs more of it): checked before a run starts, so that a wrong path is one clear error rather than workers that
    fail to start. Returns the resolved folder."""
    folder = resolve_model_path(path)
    if str(path) == "builtin:shapes-clip":
        raise ModelLoadError(
            "builtin:shapes-clip is the built-in CLIP (a reward and judge model), not a generator; the built-in "
            "generator is builtin:shapes-tiny"
        )
    check_folder(folder, GENERATOR_PARTS + extra_parts, GENERATOR_KINDS[kind], folder_hint(path))
    check_transformer_kind(folder, kind)
    return folder


def own_transformer_class(folder: Path) -> str | None:
    """The transformer's class (transformer/config.json `_class_name`) where it is not diffusers' UVit2DModel: a
    Meissonic-format folder's, whose code the folder ships; None for an aMUSEd folder."""
    return class_beyond_amused(read_config(folder, "transformer").get("_class_name"))


def class_beyond_amused(class_name: str | None) -> str | None:
    """`class_name` unless it is aMUSEd's (UVit2DModel, or none named)."""
    return None if class_name in (None, "UVit2DModel") else class_name


def check_transformer_kind(folder: Path, kind: str) -> None:
    """The transformer's class (transformer/config.json `_class_name`) is one `kind` loads: diffusers' UVit2DModel
    loaded a Meissonic transformer's config without complaint, started every weight random and failed only at a
    later width check, after reading gigabytes. A Meissonic folder ships its class's code as transformer.py."""
    class_name = read_config(folder, "transformer").get("_class_name")
    own_class = class_beyond_amused(class_name)
    if kind == "amused" and own_class is not None:
        where = "transformer/transformer.py" if (folder / "transformer" / "transformer.py").is_file() else "its code"
        raise ModelLoadError(
            f"{folder} is not an aMUSEd folder: its transformer is a {own_class} (transformer/config.json), not a "
            f"UVit2DModel; a Meissonic folder, with {where}, needs model.kind: meissonic"
        )
    if kind == "meissonic" and class_name == "UVit2DModel":
        raise ModelLoadError(f"{folder} is an aMUSEd folder (its transformer is a UVit2DModel); set model.kind: amused")


def check_folder(folder: Path, parts: Sequence[str], kind: str, hint: str) -> None:
    """The folder exists and has every part as a subfolder."""
    if folder.exists() and not folder.is_dir():
        raise ModelLoadError(f"{folder} is a file, not a model folder; {hint}")
    if not folder.is_dir():
        run = folder.parent
        if folder.name == "model" and (run / "config.yaml").is_file():  # a run's final model, not written yet
            hint = f"the run {run} has no final model yet: it has not finished (`maskfocus train --resume {run}`)"
        raise ModelLoadError(f"model folder not found: {folder}; {hint}")
    missing = [part for part in parts if not (folder / part).is_dir()]
    if missing:
        inside = [child for child in sorted(folder.iterdir()) if all((child / part).is_dir() for part in parts)]
        if inside:  # a run folder given for its model/, or pretrained/ for pretrained/shapes-tiny
            hint = f"did you mean {' or '.join(str(child) for child in inside)}, which has them?"
        elif (folder / "transformer.safetensors").is_file() and folder.parent.name == "checkpoints":
            run = folder.parent.parent
            hint = (
                f"it is a training checkpoint of the run {run}, which holds the transformer's weights only; the run's "
                f"final model folder is {run / 'model'}"
            )
        raise ModelLoadError(
            f"{folder} is missing part(s) {', '.join(missing)} (a {kind} folder needs {', '.join(parts)}); {hint}"
        )


def read_config(folder: Path, part: str) -> dict[str, Any]:
    """`<folder>/<part>/config.json` (or scheduler_config.json / tokenizer_config.json where that is the name)."""
    for name in ("config.json", f"{part}_config.json"):
        path = folder / part / name
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as error:
                raise ModelLoadError(f"cannot read {path}: {error}") from None
    raise ModelLoadError(f"{folder / part} has no config.json or {part}_config.json: not a saved model part")


def load_part(loader: Callable[..., Any], folder: Path, part: str, hint: str, **kwargs: Any) -> Any:
    """`loader(folder/part, local_files_only=True, **kwargs)`, any failure re-raised as a ModelLoadError. Quiet:
    no library warnings and no transformers "Loading weights" bar (a local load takes seconds, and a carriage-return
    bar garbles the Ray actors' logs)."""
    from transformers.utils import logging as transformers_logging

    bar_was_on = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return loader(str(folder / part), local_files_only=True, **kwargs)
    except Exception as error:  # corrupt safetensors, missing weight file, bad json: all user-fixable
        raise ModelLoadError(
            f"cannot load {part} from {folder / part}: {type(error).__name__}: {error}; {hint}"
        ) from None
    finally:
        if bar_was_on:
            transformers_logging.enable_progress_bar()


def load_weights(loader: Callable[..., Any], folder: Path, part: str, hint: str, what: str = "", **kwargs: Any) -> Any:
    """`load_part` of a model whose weights must all be in the checkpoint: the libraries only warn about missing
    ones and start them random (a text encoder without text_projection gave a random pooled condition; a transformer
    without a layer failed later at `.to(device)` as "Cannot copy out of meta tensor"). `what` says what fits."""
    if (variant := weights_variant(folder / part)) is not None:
        kwargs.setdefault("variant", variant)
    model, info = load_part(loader, folder, part, hint, output_loading_info=True, **kwargs)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ModelLoadError(
            f"{folder / part}: the checkpoint lacks {len(missing)} weight(s) its config.json asks for ({shown}); they "
            f"would start random; {what or hint}"
        )
    return model


WEIGHT_FILE_PATTERNS = ("*.safetensors", "*.bin", "*.index*.json")
"""A part's weights files in any variant and shard, and the shards' indexes (`*.safetensors.index.json`, diffusers'
`*.safetensors.index.fp16.json`)."""


def weights_files(part_folder: Path) -> list[Path]:
    return [path for pattern in WEIGHT_FILE_PATTERNS for path in part_folder.glob(pattern)]


def weights_variant(part_folder: Path) -> str | None:
    """The variant "fp16" when every weights file of a part is one (`*.fp16.safetensors`, a shard's
    `*.fp16-00001-of-00002.safetensors`: what `from_pretrained(..., variant="fp16")` downloads of aMUSEd and
    Meissonic), which the libraries read only when asked for it by name."""
    names = [path.name for path in weights_files(part_folder) if not path.name.endswith(".json")]
    return "fp16" if names and all(".fp16." in name or ".fp16-" in name for name in names) else None


def load_vqvae(folder: Path, hint: str):
    """The VQ tokenizer, always float32 (its decode is cheap next to the transformer and lossy in half).

    `lookup_from_codebook=True` is forced: the adapters decode token ids, which needs the codebook lookup."""
    from diffusers import VQModel

    return load_weights(VQModel.from_pretrained, folder, "vqvae", hint, lookup_from_codebook=True)


def load_tokenizer(folder: Path, hint: str):
    """transformers CLIPTokenizer when tokenizer_config.json names one (real checkpoints), else AutoTokenizer
    (the built-in shapes world's word-level PreTrainedTokenizerFast)."""
    from transformers import AutoTokenizer, CLIPTokenizer

    tokenizer_class = read_config(folder, "tokenizer").get("tokenizer_class", "")
    is_clip = tokenizer_class in CLIP_TOKENIZER_CLASSES
    loader = CLIPTokenizer.from_pretrained if is_clip else AutoTokenizer.from_pretrained
    return load_part(loader, folder, "tokenizer", hint)


def load_text_encoder(folder: Path, hint: str, dtype: torch.dtype, override: str | None = None):
    """CLIPTextModelWithProjection from text_encoder/, or from `override` (another local folder) when given."""
    from transformers import CLIPTextModelWithProjection

    load = CLIPTextModelWithProjection.from_pretrained
    what = (
        "the text encoder must be a CLIPTextModelWithProjection (or a whole CLIPModel) with its text_projection: a "
        "plain CLIPTextModel, such as Stable Diffusion's text_encoder/, has none."
    )
    if override is None:
        return load_weights(load, folder, "text_encoder", hint, what, dtype=dtype)
    path = Path(override).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model.text_encoder {override}: no such folder (a local CLIPTextModelWithProjection)")
    kwargs = {"dtype": dtype, **whole_clip_text_config(path)}
    return load_weights(load, path.parent, path.name, FOLDER_HINT, f"model.text_encoder: {what}", **kwargs)


def whole_clip_text_config(path: Path) -> dict[str, Any]:
    """For a whole CLIPModel folder (config.json `model_type: clip`), its text tower's config with the model's
    `projection_dim`: transformers builds a CLIPTextModelWithProjection from `text_config` alone, whose own
    projection_dim may be the library default (512), and then refused the checkpoint's text_projection as a size
    mismatch. {} for any other folder (a CLIPTextModelWithProjection's config is its own)."""
    from transformers import CLIPTextConfig

    raw = read_config(path.parent, path.name)
    if raw.get("model_type") != "clip" or not isinstance(raw.get("text_config"), dict):
        return {}
    text = dict(raw["text_config"])
    if "projection_dim" in raw:
        text["projection_dim"] = raw["projection_dim"]
    return {"config": CLIPTextConfig(**text)}


def vq_downscale(vq_config) -> int:
    """Pixels per token side of a diffusers VQModel: 2 per down block after the first."""
    return 2 ** (len(vq_config.block_out_channels) - 1)


def check_codebooks(folder: Path, codebook_key: str = "codebook_size") -> None:
    """Compare the VQ's codebook with the transformer's output size before any weights load."""
    codebook = read_config(folder, "vqvae").get("num_vq_embeddings")
    predicted = read_config(folder, "transformer").get(codebook_key)
    if codebook != predicted:
        raise ModelLoadError(
            f"{folder}: codebook sizes disagree: vqvae/config.json has num_vq_embeddings={codebook}, "
            f"transformer/config.json has {codebook_key}={predicted}; the two parts come from different models"
        )


def mask_token_id(folder: Path, codebook_size: int, vocab_size: int) -> int:
    """The mask id: scheduler/scheduler_config.json's `mask_token_id` (aMUSEd-256/512 and Meissonic: 8255 =
    vocab_size - 1, not the codebook size), else vocab_size - 1 as their training scripts use."""
    mask_id = vocab_size - 1
    if (folder / "scheduler").is_dir():
        mask_id = int(read_config(folder, "scheduler").get("mask_token_id", mask_id))
    if not codebook_size <= mask_id < vocab_size:
        raise ModelLoadError(
            f"{folder}: mask_token_id {mask_id} must lie outside the codebook [0, {codebook_size}) and inside the "
            f"transformer's vocabulary of {vocab_size} input ids"
        )
    return mask_id


def check_text_parts(folder: Path, tokenizer, text_encoder) -> None:
    """The tokenizer's ids must all exist in the text encoder's embedding table."""
    if len(tokenizer) > text_encoder.config.vocab_size:
        raise ModelLoadError(
            f"{folder}: tokenizer has {len(tokenizer)} entries, text encoder only {text_encoder.config.vocab_size}"
        )


VQ_RANGE_FILE = "maskfocus_vq_range.json"
"""Optional file in a model folder: {"pixel_range": [low, high]}, the pixel range its VQ was trained on."""


def vq_pixel_range(folder: Path) -> tuple[float, float]:
    """The pixel range the folder's VQ was trained on.

    Default [0, 1]: aMUSEd and Meissonic pipelines preprocess with `VaeImageProcessor(do_normalize=False)` and
    clip the decode to [0, 1]. The built-in shapes-world folders train their VQ on [-1, 1] and say so in
    VQ_RANGE_FILE (written by `maskfocus pretrain`)."""
    path = Path(folder) / VQ_RANGE_FILE
    if not path.is_file():
        return (0.0, 1.0)
    try:
        low, high = (float(v) for v in json.loads(path.read_text())["pixel_range"])
    except (ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f'{path}: expected {{"pixel_range": [low, high]}} ({error})') from error
    if not low < high:
        raise ModelLoadError(f"{path}: pixel_range needs low < high, got [{low}, {high}]")
    return (low, high)
