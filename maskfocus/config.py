"""One pydantic config tree for a run, loaded from one YAML file (configs/*.yaml).

Every model is frozen and ``extra="forbid"``: a misspelt key is an error that names the field, the file and line
(or the `--set` override) and the keys allowed there (maskfocus/config_base.py; the YAML is read by config_yaml.py).
Each component receives only its own section. Field docstrings give the unit and the effect. The model's, sampler's
and evaluation's sections are in config_model.py, the reward terms' in config_rewards.py, the Ray executor's in
config_ray.py, the rollouts' in config_rollout.py, the run's length and outputs in config_train.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from maskfocus.config_base import (
    ConfigError,
    ErrorOrigin,
    Section,
    SectionT,
    apply_overrides,
    cycle_in,
    dotted,
    format_validation_error,
)
from maskfocus.config_model import BUILTIN_MODEL as BUILTIN_MODEL  # re-exported: one config tree
from maskfocus.config_model import EvalConfig as EvalConfig  # re-exported: one config tree
from maskfocus.config_model import ModelConfig as ModelConfig  # re-exported: one config tree
from maskfocus.config_model import SamplerConfig as SamplerConfig  # re-exported: one config tree
from maskfocus.config_ray import RayConfig as RayConfig  # re-exported: one config tree
from maskfocus.config_rewards import GenEvalDetectorConfig as GenEvalDetectorConfig  # re-exported: one config tree
from maskfocus.config_rewards import RewardSpec, repeated_metric_names
from maskfocus.config_rollout import GenEvalTag as GenEvalTag  # re-exported: one config tree
from maskfocus.config_rollout import RolloutConfig as RolloutConfig  # re-exported: one config tree
from maskfocus.config_train import TrainConfig as TrainConfig  # re-exported: one config tree
from maskfocus.config_yaml import yaml_key_lines
from maskfocus.outputs import write_text_whole


def shipped_configs_folder(module_file: Path = Path(__file__)) -> Path:
    """The copy of configs/ a wheel installs as maskfocus/configs/ (beside this module), else a source checkout's
    (or an editable install's) configs/: a wheel's site-packages/configs, the checkout's place, may be another
    package's folder."""
    package = module_file.resolve().parent / "configs"
    return package if (package / "shapes_tiny.yaml").is_file() else module_file.resolve().parents[1] / "configs"


DEFAULT_CONFIG = shipped_configs_folder() / "shapes_tiny.yaml"
"""The built-in default run, used where no --config is given."""


MAX_FLOAT16_MEISSONIC_STEPS = 66
"""The most sampling steps Meissonic takes in float16: its largest timestep, 65, times 1000 is still finite there."""


class RouterConfig(Section):
    """Entropy-based dynamic routing during training rollouts (ALGORITHM.md section 2); never at evaluation."""

    enabled: bool = True
    """Route the lowest-entropy half to the exploratory branch; false = standard sampling only."""
    a: float = Field(2.5, ge=0.0)
    """tau(H) = a * exp(-H / b) + c: amplitude."""
    b: float = Field(3.0, gt=0.0)
    """tau(H) decay scale, in nats."""
    c: float = Field(0.7, gt=0.0)
    """tau(H) floor."""
    scope: Literal["group", "batch"] = "group"
    """Take the lowest-entropy half of each group (default) or of the whole batch (the released code)."""


class SelectionConfig(Section):
    """Which sampling steps the learner trains on (ALGORITHM.md section 3)."""

    strategy: Literal["critical", "random", "all"] = "critical"
    """critical = top-K information gain, among steps 1..T-1 (step 0 has no gain); random = K steps drawn uniformly
    from all T, step 0 included, as `all` trains it (the ablation's random rows were measured so); all = the full
    trajectory (T steps)."""
    num_steps: int = Field(3, ge=1)
    """K: steps trained per rollout (ignored by `all`)."""
    embedding: Literal["vq", "clip"] = "vq"
    """Step embedding for the similarity: VQ codebook vectors of x0, or the CLIP image embedding of its decode."""
    per_sample: bool = False
    """Select steps per sample instead of sharing the group-mean choice."""


class GRPOConfig(Section):
    """The policy loss (ALGORITHM.md section 4)."""

    remask: Literal["random", "trajectory"] = "random"
    """Training input of a selected step: random positions of the final image, or the rollout's own mask."""
    tokens: Literal["all_masked", "newly_unmasked"] = "all_masked"
    """Score every masked token (MaskFocus) or only those committed at the step (Mask-GRPO-like baseline)."""
    clip_eps: float | None = Field(0.2, gt=0.0, lt=1.0)
    """PPO ratio clipping epsilon, below 1 (the ratio is clipped to [1 - eps, 1 + eps], and a ratio is never
    negative); null = no clipping (the released code)."""
    beta: float = Field(0.01, ge=0.0)
    """k3 KL penalty weight against the frozen reference; 0 skips the reference forward."""
    update: Literal["per_step", "accumulate"] = "per_step"
    """per_step = one optimizer step per selected step; accumulate = one step for all K."""
    epochs: int = Field(1, ge=1)
    """Passes over each batch's selected steps (PPO epochs, GRPO's mu); each pass takes the optimizer steps of
    `update`. The old log-probs stay those of the sampling policy, so from the second pass the ratio leaves 1 and
    `clip_eps` bounds how far the policy moves on one batch. The learner time grows with it."""
    advantage_eps: float = Field(1e-4, gt=0.0)
    """eps in A = (r - mean) / (std + eps)."""
    std_normalize: bool = True
    """Divide each group's centred rewards by their std (GRPO, ALGORITHM.md); false = A = r - mean (as "Dr. GRPO"),
    so a group with a small reward spread weighs less than one with a large spread."""
    drop_zero_groups: bool = False
    """Leave groups whose rewards are all equal out of the loss (they carry no signal)."""
    behaviour_weight_cap: float | None = Field(None, gt=0.0, allow_inf_nan=True)  # .inf: uncapped weights
    """Correction of stale batches (Ray, `ray.max_staleness` > 0): null = none, a batch sampled by an older policy
    version is learned as if the current weights had sampled it (its first ratio is 1). A number C: each scored
    token's surrogate is weighted by min(pi_now / pi_behaviour, C), pi_now being the weights when the batch's update
    begins and pi_behaviour the version that sampled it (the decoupled PPO objective; the ratio and its clip stay
    around pi_now). Costs one forward per selected step of a stale batch, and each learner rank keeps
    max_staleness + 1 copies of its (sharded) weights. On-policy batches, and the in-process trainer, are unchanged."""


class OptimConfig(Section):
    """AdamW with linear decay."""

    learning_rate: float = Field(1e-4, gt=0.0, le=1.0)
    """Peak learning rate (at most 1: AdamW's steps are about this size per weight)."""
    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay."""
    grad_clip: float = Field(1.0, gt=0.0, allow_inf_nan=True)
    """Max global gradient norm per optimizer step; .inf (`--set optim.grad_clip=inf`) = no clipping."""
    final_lr_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """Learning rate at the last iteration, as a fraction of the peak (linear decay)."""

    @field_validator("grad_clip", mode="before")
    @classmethod
    def _no_clipping_is_inf(cls, grad_clip: Any) -> Any:
        """null or 0 may be meant as "no clipping": say how to write that."""
        if grad_clip is None or _number_at_most_zero(grad_clip):
            raise ValueError("a positive norm is needed; no clipping is .inf in YAML, inf in --set optim.grad_clip=inf")
        return grad_clip


def _number_at_most_zero(value: Any) -> bool:
    """An int or float <= 0, not true or false (the base section names those)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value <= 0


class RunConfig(Section):
    """The whole run: one YAML file."""

    seed: int = Field(0, ge=0)
    """Run seed; every random stream is derived from it."""
    model: ModelConfig = ModelConfig()
    """The masked generator to sample from and train."""
    sampler: SamplerConfig = SamplerConfig()
    """MaskGIT sampling settings (evaluation, previews and rollouts; rollouts take rollout.num_steps as T when
    set)."""
    eval: EvalConfig = EvalConfig()
    """GenEval-style evaluation settings."""
    rollout: RolloutConfig = RolloutConfig()
    """Prompts and group size of one iteration."""
    router: RouterConfig = RouterConfig()
    """Entropy-based dynamic routing."""
    selection: SelectionConfig = SelectionConfig()
    """Critical-step selection."""
    grpo: GRPOConfig = GRPOConfig()
    """Policy loss and update scheme."""
    rewards: tuple[RewardSpec, ...] = (RewardSpec(name="geneval"),)
    """Reward terms, summed with their weights."""
    optim: OptimConfig = OptimConfig()
    """Optimizer."""
    train: TrainConfig = TrainConfig()
    """Run length, outputs and executor."""
    ray: RayConfig = RayConfig()
    """The Ray executor's pools, resources, queue and weight sync (used when train.executor is ray)."""

    def rollout_sampler(self) -> SamplerConfig:
        """The sampler of the training rollouts: `sampler` with rollout.num_steps, when set, as its T."""
        if self.rollout.num_steps is None:
            return self.sampler
        return self.sampler.model_copy(update={"num_steps": self.rollout.num_steps})

    @model_validator(mode="after")
    def _check_cross_fields(self) -> RunConfig:
        steps = self.rollout_sampler().num_steps
        steps_key = "sampler.num_steps" if self.rollout.num_steps is None else "rollout.num_steps"
        if self.selection.strategy == "critical" and self.selection.num_steps > steps - 1:
            raise ValueError(
                f"selection.num_steps (K={self.selection.num_steps}) must be <= {steps_key} - 1 "
                f"(T-1={steps - 1}) for the critical strategy (gains exist for steps 1..T-1)"
            )
        if self.selection.strategy == "random" and self.selection.num_steps > steps:
            raise ValueError(f"selection.num_steps (K={self.selection.num_steps}) must be <= {steps_key} (T={steps})")
        if not self.rewards:
            raise ValueError("rewards: at least one reward term is needed")
        if repeated := repeated_metric_names(self.rewards):
            raise ValueError(
                f"rewards: more than one term would log as {', '.join(f'reward/{n}' for n in repeated)} in "
                "metrics.jsonl; keep one term of each name (geneval terms may differ in mode or strict)"
            )
        if all(spec.weight == 0 for spec in self.rewards):
            raise ValueError("rewards: every term has weight 0, so every rollout's reward would be 0; weight one")
        self._check_clip_step_embedding()
        self._check_learner_shards()
        self._check_float16_timesteps()
        return self

    def _check_clip_step_embedding(self) -> None:
        """`selection.embedding: clip` embeds each step's image with a clip or hps reward term's CLIP; without one,
        only the built-in shapes model may fall back on the tiny shapes-world CLIP (a real model's images in it would
        make the step similarities, and so the critical steps, close to noise)."""
        has_clip = any(spec.name in ("clip", "hps") for spec in self.rewards)
        if self.selection.embedding == "clip" and not has_clip and self.model.path != BUILTIN_MODEL:
            raise ValueError(
                "selection.embedding: clip embeds the steps' images with the CLIP of a clip or hps reward term, and "
                f"this config has none (only {BUILTIN_MODEL} may use the built-in shapes-world CLIP); add one, with "
                "weight 0.0 if it should not count in the reward, or use selection.embedding: vq"
            )

    def _check_float16_timesteps(self) -> None:
        """Meissonic's transformer computes `timestep.to(its dtype) * 1000`, and the timestep counts down from T - 1:
        in float16, 66 * 1000 is past the largest float16 (65504), so more than 66 steps make every logit NaN (the
        released pipeline's as well). bfloat16 has float32's range."""
        if self.model.kind != "meissonic":
            return
        uses = [("model.dtype", self.model.dtype, "sampler.num_steps", self.sampler.num_steps)]
        uses.append(("eval.dtype", self.eval.weights_dtype(self.model), "sampler.num_steps", self.sampler.num_steps))
        if self.rollout.num_steps is not None:
            uses.append(("model.dtype", self.model.dtype, "rollout.num_steps", self.rollout.num_steps))
        for dtype_key, dtype, steps_key, steps in uses:
            if dtype == "float16" and steps > MAX_FLOAT16_MEISSONIC_STEPS:
                raise ValueError(
                    f"{dtype_key}: float16 with {steps_key} {steps}: Meissonic's transformer multiplies the timestep "
                    f"(up to T - 1) by 1000 in its own dtype, past float16's largest number (65504) beyond "
                    f"{MAX_FLOAT16_MEISSONIC_STEPS} steps, so every logit would be NaN; use bfloat16, or at most "
                    f"{MAX_FLOAT16_MEISSONIC_STEPS} steps"
                )

    def _check_learner_shards(self) -> None:
        """Each learner rank takes ceil(B / W) rows of a batch of B samples; every rank needs at least one."""
        num_samples = self.rollout.prompts_per_iteration * self.rollout.group_size
        workers = self.ray.num_learner_workers
        shard = -(-num_samples // workers)
        if self.train.executor == "ray" and (workers - 1) * shard >= num_samples:
            raise ValueError(
                f"ray.num_learner_workers ({workers}) leaves a learner rank without samples: a batch has "
                f"rollout.prompts_per_iteration x rollout.group_size = {num_samples} samples, split into shards of "
                f"{shard}; use a batch that is a multiple of {workers} samples, or fewer workers"
            )


def config_from_dict(data: dict[str, Any], source: str = "<dict>", origin: ErrorOrigin | None = None) -> RunConfig:
    """Validate a plain dict into a RunConfig, raising ConfigError with field paths on failure."""
    return validate_section(RunConfig, data, source, origin)


def validate_section(
    cls: type[SectionT], data: dict[str, Any], source: str, origin: ErrorOrigin | None = None
) -> SectionT:
    """Validate a plain dict into any config class (`RunConfig`, `PretrainConfig`), with ConfigError on failure.

    `origin` says where the values came from (file lines, `--set` keys), so that each error names its line."""
    origin = origin or ErrorOrigin(source)
    cycle = cycle_in(data)
    if cycle is not None:  # validation would recurse until Python's RecursionError
        container, alias = cycle
        raise ConfigError(
            f"{origin.where(container)}: {dotted(container) or 'the top level'} contains itself at {dotted(alias)} "
            "(a YAML alias inside its own anchor)"
        )
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, cls, origin)) from None


def section_with_overrides(
    cls: type[SectionT], overrides: dict[str, Any] | None, source: str, options: Mapping[str, str] | None = None
) -> SectionT:
    """The defaults of `cls` with dotted `--set` overrides applied, validated; `options` names the command-line
    option that gave an override (errors name it rather than `--set KEY`).

    The overrides land on the dumped defaults, so setting one field of a sub-section whose default differs from its
    type's (`generator.caption_mix.p_count`) keeps that default's other fields."""
    origin = ErrorOrigin(source, overridden=overrides or {}, options=options)
    return validate_section(cls, apply_overrides(cls().model_dump(), overrides), source, origin)


def load_config(
    path: str | Path, overrides: dict[str, Any] | None = None, options: Mapping[str, str] | None = None
) -> RunConfig:
    """Load a run YAML; `overrides` maps dotted keys (`sampler.num_steps`) to values applied on top; `options` names
    the command-line option that gave an override (errors name it rather than `--set KEY`)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config file {path}: is a folder; give a YAML file")
    if not path.is_file():
        shipped = f"; the shipped configs are in {DEFAULT_CONFIG.parent}" if DEFAULT_CONFIG.parent.is_dir() else ""
        raise ConfigError(f"config file not found: {path} (from {Path.cwd()}){shipped}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason}); save it as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(yaml_error_message(path, error)) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(data).__name__}")
    if not data:
        raise ConfigError(
            f"{path}: holds no settings (empty, or only comments); it would run with every code default, not the "
            f"shipped {DEFAULT_CONFIG.name}'s: give a config with settings, or leave --config out for the shipped one"
        )
    origin = ErrorOrigin(str(path), yaml_key_lines(text, str(path)), overridden=overrides or {}, options=options)
    return config_from_dict(apply_overrides(data, overrides, RunConfig), str(path), origin)


def model_folder_overrides(path: str, trust_checkpoint_code: bool = False) -> dict[str, Any]:
    """`load_config` overrides that point a run config at model folder `path`: aMUSEd format, or, with
    `trust_checkpoint_code`, a Meissonic-format folder whose own transformer/transformer.py may run."""
    if not trust_checkpoint_code:
        return {"model.path": path}
    return {"model.path": path, "model.kind": "meissonic", "model.trust_checkpoint_code": True}


def dump_config(config: RunConfig, path: str | Path) -> None:
    """Write the resolved config (every default filled in) as YAML, whole or not at all: a process killed mid-write
    left a cut config.yaml that still parsed, and `maskfocus compare` filled its missing sections with defaults."""
    write_text_whole(Path(path), yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def default_run_config(overrides: dict[str, Any] | None = None, options: Mapping[str, str] | None = None) -> RunConfig:
    """configs/shapes_tiny.yaml with `overrides`. Where it is missing (a broken install), an error: the field
    defaults are not that run (another reward mode, sampler and executor), so falling back to them would change the
    results without a word."""
    if not DEFAULT_CONFIG.is_file():
        raise ConfigError(
            f"the shipped default config {DEFAULT_CONFIG} is missing (an install without maskfocus/configs/): "
            "reinstall maskfocus, or give --config"
        )
    return load_config(DEFAULT_CONFIG, overrides, options)


def load_config_or_default(
    path: str | Path | None, overrides: dict[str, Any] | None = None, options: Mapping[str, str] | None = None
) -> RunConfig:
    """The config file at `path` (the shipped default when None) with `overrides` (see `load_config`)."""
    return default_run_config(overrides, options) if path is None else load_config(path, overrides, options)


def yaml_error_message(path: Path, error: yaml.YAMLError) -> str:
    """`FILE:LINE:COLUMN: not valid YAML: what` (PyYAML's own text names "<unicode string>", not the file)."""
    mark = getattr(error, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    what = ", ".join(filter(None, (getattr(error, "context", None), getattr(error, "problem", None))))
    return f"{where}: not valid YAML: {what or str(error).replace('<unicode string>', str(path))}"
