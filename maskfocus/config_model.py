"""The model's and the sampler's config sections: `model`, `sampler` and `eval` (what is loaded, how it samples, how
it is evaluated). Part of the one config tree of `maskfocus.config` (which re-exports these names)."""

from __future__ import annotations

import contextlib
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from maskfocus.config_base import Section

BUILTIN_MODEL = "builtin:shapes-tiny"


class ModelConfig(Section):
    """Which model folder to load, and where to run it."""

    path: str = BUILTIN_MODEL
    """Model folder on local disk (format given by `kind`), or `builtin:shapes-tiny` for the shipped tiny model."""
    kind: Literal["amused", "meissonic"] = "amused"
    """Adapter for the folder format. `amused`: VQModel + UVit2DModel + CLIP text encoder (amused-256/512, the
    built-in model); `meissonic`: VQModel + the folder's own transformer/transformer.py + CLIP text encoder."""
    device: str = "cpu"
    """Torch device for sampling and scoring, e.g. `cpu` or `cuda`."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "float32"
    """Weight dtype of the transformer and text encoder for sampling rollouts and previews (the VQ stays float32;
    logits are float32). The learner keeps float32 master weights whatever this says, and evaluation loads
    `eval.dtype`. `auto` is resolved when the config is loaded, on the machine that loads it: bfloat16 on CUDA GPUs
    with bfloat16 arithmetic (compute capability 8.0 up, or a GPU this process does not see) and on CPUs with
    bfloat16 instructions (AVX512-BF16 or AMX), float32 elsewhere (maskfocus.hardware); the run's
    config.yaml records the choice, so a resume samples as the run did."""
    resolution: int | None = Field(None, ge=8, le=4096)
    """Generated image side in pixels; null = the model's own (aMUSEd: transformer sample_size x VQ downscale,
    e.g. 256 or 512; Meissonic: 1024, or sample_size x VQ downscale where its transformer config states a
    sample_size). Micro-conditioning is set to it. At most 4096 (4x Meissonic's): beyond that a typo, such as
    an extra digit, would first show as a run out of memory."""
    text_encoder: str | None = None
    """A local CLIPTextModelWithProjection folder replacing the model's text_encoder/ (Meissonic's reference
    inference uses the original laion/CLIP-ViT-H-14-laion2B-s32B-b79K); null = the folder's own."""
    trust_checkpoint_code: bool = False
    """meissonic only: allow importing transformer/transformer.py from the model folder (it runs that code)."""

    @field_validator("device")
    @classmethod
    def _torch_device(cls, device: str) -> str:
        import torch

        try:
            kind = torch.device(device).type
        except RuntimeError:
            raise ValueError("not a torch device (e.g. cpu, cuda, cuda:1)") from None
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"maskfocus samples and trains on cpu or cuda (cuda:N), not {kind}")
        return device

    @model_validator(mode="before")
    @classmethod
    def _resolve_auto_dtype(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("dtype") == "auto":
            from maskfocus.hardware import native_sampling_dtype

            with contextlib.suppress(RuntimeError):  # not a torch device: the device field's validator says so
                data = {**data, "dtype": native_sampling_dtype(str(data.get("device", "cpu")))}
        return data


class SamplerConfig(Section):
    """MaskGIT sampling (ALGORITHM.md section 1)."""

    num_steps: int = Field(12, ge=1)
    """T: sampling steps per image (the training rollouts' too, unless rollout.num_steps sets theirs)."""
    cfg_scale: float = Field(3.0, ge=0.0)
    """Classifier-free guidance scale s in l_uncond + s * (l_cond - l_uncond); 1.0 disables CFG (one forward)."""
    gumbel_temperature: float = Field(2.0, ge=0.0)
    """tau_0: Gumbel noise scale on the confidence; step i of T uses tau_0 (1 - (i + 1) / T), so 0 at the last step
    (the released code's linspace starts at tau_0: sampling.gumbel_temperature says why ours is kept)."""
    temperature: float = Field(1.0, gt=0.0)
    """Softmax temperature of every token draw (logits / temperature); 1.0 = the plain softmax of ALGORITHM.md.
    On the shapes model, below 1 leaves objects out and above 1 draws more of them (benchmarks/RESULTS.md). In
    training the learner's log-probs use it too, so the policy learned is the one that sampled the rollouts."""
    negative_prompt: str = ""
    """Prompt for the unconditional branch of CFG (empty = unconditional)."""
    batch_size: int = Field(64, ge=1)
    """Images sampled per model forward batch in evaluation, previews and `maskfocus sample`. A training rollout
    samples an iteration's P x G images in one batch (in-process, and on a Ray rollout worker, which samples whole
    iterations), as the learner learns them: rollout.prompts_per_iteration and rollout.group_size bound that."""
    compile: bool = False
    """Sample through a `torch.compile`d copy of the transformer (maskfocus.compiled): about 2x faster for the
    tiny model on a CPU after ~30 s of compiling per batch size; logits equal the eager ones to ~1e-5, not
    bit for bit. The learner's forwards are not affected (see `train.compile_learner`)."""


class EvalConfig(Section):
    """GenEval-style evaluation (`maskfocus eval`)."""

    benchmark: Literal["shapes-geneval"] = "shapes-geneval"
    """Built-in prompt set (maskfocus/evaluation.py BENCHMARKS; a misspelling failed only at the final evaluation,
    after training); `maskfocus eval --metadata FILE` evaluates any GenEval JSONL instead."""
    num_images_per_prompt: int = Field(4, ge=1)
    """Images generated per prompt row."""
    seed: int = Field(0, ge=0)
    """Seed of the evaluation sampler. Each batch of sampler.batch_size images draws from its own generator
    (seed, batch index), so images are a function of (seed, sampler.batch_size, row index, image index): compare
    scores at equal batch sizes."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = "float32"
    """Weight dtype of the transformer and text encoder for evaluation (a run's final evaluation and `maskfocus
    eval`). float32 scores the trained weights themselves, whatever dtype the rollouts sample in; null = model.dtype
    (faster on GPUs)."""

    def weights_dtype(self, model: ModelConfig) -> str:
        """The dtype evaluation loads: this section's, or the model's when it is null."""
        return self.dtype or model.dtype
