"""Masked generator adapters behind one protocol (see ``maskfocus.models.base``), and `load_generator`.

Kept light: the adapters (and diffusers / transformers) are imported only when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from maskfocus.config import ModelConfig
    from maskfocus.models.amused import AmusedGenerator
    from maskfocus.models.meissonic import MeissonicGenerator


def check_device(device: str) -> None:
    """A CUDA device where torch sees none is a clear error (torch's own says "Found no NVIDIA driver")."""
    import torch

    from maskfocus.models.base import ModelLoadError

    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(
            f"model.device {device}: torch sees no CUDA device on this machine (torch {torch.__version__}); "
            "set model.device: cpu, or install a CUDA build of torch on a machine with a GPU"
        )


def load_generator(
    config: ModelConfig, device: str | None = None, dtype: str | None = None
) -> AmusedGenerator | MeissonicGenerator:
    """The adapter for `config.kind`, loaded from `config.path`.

    `device` / `dtype` override the config's (a learner rank passes its own `cuda:<rank>` and `float32`
    master weights; rollout workers use the config's)."""
    check_device(device or config.device)
    options = {
        "device": device or config.device,
        "dtype": dtype or config.dtype,
        "resolution": config.resolution,
        "text_encoder": config.text_encoder,
    }
    if config.kind == "meissonic":
        from maskfocus.models.meissonic import MeissonicGenerator

        trust = config.trust_checkpoint_code
        # every copy (a float32 learner's too) conditions on the timesteps the rollouts' dtype computes
        return MeissonicGenerator.from_folder(
            config.path, trust_checkpoint_code=trust, timestep_dtype=config.dtype, **options
        )
    from maskfocus.models.amused import AmusedGenerator

    return AmusedGenerator.from_folder(config.path, **options)
