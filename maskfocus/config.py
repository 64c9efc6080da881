"""One pydantic config tree for a run, loaded from one YAML file (configs/*.yaml).

Every model is frozen and ``extra="forbid"``: a misspelt key is an error that names the field and the
file. Each component receives only its own section. Field docstrings give the unit and the effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

BUILTIN_MODEL = "builtin:shapes-tiny"


class ConfigError(ValueError):
    """A config file or value the user has to fix; the message says where and what is allowed."""


class Section(BaseModel):
    """Base of every config section: frozen, unknown keys rejected, docstrings kept for fields."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class ModelConfig(Section):
    """Which model folder to load, and where to run it."""

    path: str = BUILTIN_MODEL
    """Model folder on local disk (diffusers aMUSEd format), or `builtin:shapes-tiny` for the shipped tiny model."""
    kind: Literal["amused"] = "amused"
    """Adapter for the folder format. `amused`: VQModel + UVit2DModel + CLIP text encoder."""
    device: str = "cpu"
    """Torch device for sampling and scoring, e.g. `cpu` or `cuda`."""


class SamplerConfig(Section):
    """MaskGIT sampling (ALGORITHM.md section 1)."""

    num_steps: int = Field(12, ge=1)
    """T: sampling steps per image."""
    cfg_scale: float = Field(3.0, ge=0.0)
    """Classifier-free guidance scale s in l_uncond + s * (l_cond - l_uncond); 1.0 disables CFG (one forward)."""
    gumbel_temperature: float = Field(2.0, ge=0.0)
    """tau_0: Gumbel noise scale on the confidence at step 0, falling linearly to 0 at the last step."""
    negative_prompt: str = ""
    """Prompt for the unconditional branch of CFG (empty = unconditional)."""
    batch_size: int = Field(64, ge=1)
    """Images sampled per model forward batch."""


class EvalConfig(Section):
    """GenEval-style evaluation (`maskfocus eval`)."""

    benchmark: str = "shapes-geneval"
    """Built-in prompt set; `--metadata FILE` on the command line overrides it with a GenEval JSONL."""
    num_images_per_prompt: int = Field(4, ge=1)
    """Images generated per prompt row."""
    seed: int = 0
    """Seed of the evaluation sampler; images are a function of (seed, row index, image index)."""


class RunConfig(Section):
    """The whole run: one YAML file."""

    seed: int = 0
    """Run seed; every random stream is derived from it."""
    model: ModelConfig = ModelConfig()
    """The masked generator to sample from and train."""
    sampler: SamplerConfig = SamplerConfig()
    """MaskGIT sampling settings (evaluation and rollouts)."""
    eval: EvalConfig = EvalConfig()
    """GenEval-style evaluation settings."""


def _format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<root>"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see maskfocus/config.py for the allowed keys)"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def config_from_dict(data: dict[str, Any], source: str = "<dict>") -> RunConfig:
    """Validate a plain dict into a RunConfig, raising ConfigError with field paths on failure."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Load a run YAML; `overrides` maps dotted keys (`sampler.num_steps`) to values applied on top."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return config_from_dict(data, str(path))


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML."""
    Path(path).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
