"""Masked generator adapters behind one protocol (see ``maskfocus.models.base``), and `load_generator`.

Kept light: the adapters (and diffusers / transformers) are imported only when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maskfocus.config import ModelConfig
    from maskfocus.models.amused import AmusedGenerator
    from maskfocus.models.meissonic import MeissonicGenerator


def load_generator(
    config: ModelConfig, device: str | None = None, dtype: str | None = None
) -> AmusedGenerator | MeissonicGenerator:
    """The adapter for `config.kind`, loaded from `config.path`.

    `device` / `dtype` override the config's (a learner rank passes its own `cuda:<rank>` and `float32`
    master weights; rollout workers use the config's)."""
    options = {
        "device": device or config.device,
        "dtype": dtype or config.dtype,
        "resolution": config.resolution,
        "text_encoder": config.text_encoder,
    }
    if config.kind == "meissonic":
        from maskfocus.models.meissonic import MeissonicGenerator

        return MeissonicGenerator.from_folder(
            config.path, trust_checkpoint_code=config.trust_checkpoint_code, **options
        )
    from maskfocus.models.amused import AmusedGenerator

    return AmusedGenerator.from_folder(config.path, **options)
