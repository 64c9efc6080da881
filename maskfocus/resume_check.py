"""What `maskfocus train --resume` reads from its run folder, checked before the resume changes anything there
(it sets aside model/ and eval/ and may rewrite config.yaml): a damaged metrics.jsonl, checkpoint or folder is one
message naming the file and what to do, not a traceback after the folder was changed."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import yaml

from maskfocus.config import ConfigError, RunConfig
from maskfocus.config_base import flatten
from maskfocus.config_saved import saved_settings_of
from maskfocus.outputs import check_output_folder
from maskfocus.run_io import read_metrics
from maskfocus.run_state import RunState, damaged_checkpoint, read_checkpoint_state, resume_state


def check_run_config_file(run_dir: Path) -> Path:
    """The run's config.yaml exists and holds settings (an empty one would read as every default, silently)."""
    path = run_dir / "config.yaml"
    if not run_dir.exists():
        raise ConfigError(f"--resume {run_dir}: no such folder")
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: not a run folder (no config.yaml)")
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):
        return path  # load_config names what is wrong with the text
    if not settings:  # blank, a comment alone, {} or null
        raise ConfigError(
            f"{path} holds no settings: it would resume with every default instead of the run's own; restore it (a "
            "resume that changed settings kept the one before as config.before_resume_*.yaml)"
        )
    return path


def check_resumable(run_dir: Path, model_path: str) -> RunState:
    """The folder can be written, its metrics.jsonl reads record by record, and its latest checkpoint has a whole
    state.json, a readable weights header that fits the model at `model_path` (the resume's model.path) and an
    optimizer archive. Returns the state the resume starts from."""
    check_output_folder("--resume", run_dir)
    metrics = run_dir / "metrics.jsonl"
    logged = len(read_metrics(metrics)) if metrics.is_file() else 0
    start = resume_state(run_dir, resume=True)
    if start.checkpoint is None:
        if logged:
            print(
                f"no checkpoint in {run_dir / 'checkpoints'}: the resume starts again from the base model at "
                f"iteration 0 (a resume moves the {logged} logged iterations to metrics.superseded.jsonl)"
            )
        return start
    check_checkpoint_files(Path(start.checkpoint))
    check_checkpoint_fits(Path(start.checkpoint), model_path)
    return start


def check_checkpoint_files(checkpoint: Path) -> None:
    """The weights' safetensors header covers the file, and the optimizer state is a torch archive."""
    from safetensors import SafetensorError, safe_open

    weights, optimizer = checkpoint / "transformer.safetensors", checkpoint / "optimizer.pt"
    if not weights.is_file():
        raise damaged_checkpoint(checkpoint, f"{weights.name}: missing")
    try:
        with safe_open(str(weights), "pt"):
            pass
    except (OSError, SafetensorError) as error:
        raise damaged_checkpoint(checkpoint, f"{weights.name}: {error}") from None
    if not zipfile.is_zipfile(optimizer):
        raise damaged_checkpoint(checkpoint, f"{optimizer.name}: missing or not a torch archive")


def seed_note(checkpoint: str | None, seed: int, saved_seed: object) -> str | None:
    """A word when the checkpoint was learned under another `seed` than the resume's while config.yaml already says
    `seed` (`saved_seed`: a hand edit, said nowhere else; a `--set seed` is listed with the resume's changes): the
    prompt stream and every iteration's draws change from there."""
    if checkpoint is None or saved_seed != seed:
        return None
    learned_with = read_checkpoint_state(Path(checkpoint)).get("seed")
    if learned_with is None or learned_with == seed:
        return None
    return (
        f"note: {Path(checkpoint).name} was learned with seed {learned_with}; the iterations after it draw their "
        f"prompts and samples with seed {seed}"
    )


def check_checkpoint_fits(checkpoint: Path, model_path: str) -> None:
    """The checkpoint's weights have names and shapes of the transformer at `model_path`, as both files' headers
    say: a checkpoint of another model (a `--set model.path` to the wrong folder) passed, and the resume failed at
    its first load, after config.yaml was rewritten and model/ set aside. Names the base lacks, or shapes that
    differ, are refused; nothing is said where the base keeps its weights as pickles (.bin) only."""
    from maskfocus.models.loading import resolve_model_path

    base = weight_shapes(sorted((resolve_model_path(model_path) / "transformer").glob("*.safetensors")))
    if not base:
        return
    saved = weight_shapes([checkpoint / "transformer.safetensors"])
    problems = [f"{name} is not in the model" for name in sorted(set(saved) - set(base))]
    problems += [
        f"{name} has shape {list(saved[name])}, the model's {list(base[name])}"
        for name in sorted(set(saved) & set(base))
        if saved[name] != base[name]
    ]
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise ConfigError(
            f"checkpoint {checkpoint} does not fit model.path {model_path} ({shown}); resume with the model.path "
            "the run trained (its config.yaml, or config.before_resume_*.yaml after a resume that changed it)"
        )


def weight_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in safetensors `files`, from their headers only."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        with safe_open(str(path), "pt") as weights:
            shapes.update({name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()})  # noqa: SIM118
    return shapes


LEARNING_KEYS = ("seed", "rollout.", "router.", "selection.", "grpo.", "optim.", "rewards")
"""Settings that act only on iterations still to learn (a key, or a section with its dot)."""
ROLLOUT_SAMPLER_KEYS = (
    "sampler.cfg_scale",
    "sampler.gumbel_temperature",
    "sampler.temperature",
    "sampler.negative_prompt",
    "model.dtype",
    "model.kind",
    "model.resolution",
)
"""Settings the training rollouts sampled with too (the evaluation's own dtype is eval.dtype); sampler.num_steps
also, where the run's rollout.num_steps was null."""
LOCATION_FIELDS = {"path", "model", "checkpoint", "url", "prompt_file", "object_names", "clip_model", "clip_checkpoint"}
"""Last parts of keys that say where a file or server is, not how the run learns: a finished run whose files moved
may point at them anew to redo its final evaluation."""


def check_resume_settings(config_file: Path, after: RunConfig, learned: int) -> None:
    """The resume's settings fit a run that has learned `learned` iterations: `train.num_iterations` is not below
    them, and a run with nothing left to learn (the resume only redoes its final evaluation) changes no learning
    setting, which config.yaml (`config_file`) would record as if the run had learned under it. Where a file
    moved, its new place may be given."""
    wanted = after.train.num_iterations
    if wanted < learned:
        raise ConfigError(
            f"train.num_iterations {wanted} (--iterations): the run has learned {learned} iterations already; give "
            f"{learned} to finish it as it is (its final evaluation) or more to learn further"
        )
    if wanted > learned:
        return
    old_settings = saved_settings(config_file)
    new = flatten(after.model_dump(mode="json"))
    changed = sorted(key for key in old_settings if old_settings[key] != new.get(key))  # same keys, but for old runs
    sampled_with = ROLLOUT_SAMPLER_KEYS + (
        ("sampler.num_steps",) if old_settings.get("rollout.num_steps") is None else ()
    )
    learning = [
        key
        for key in changed
        if (key.startswith(LEARNING_KEYS) or key in sampled_with) and key.split(".")[-1] not in LOCATION_FIELDS
    ]
    if learning:
        raise ConfigError(
            f"{', '.join(learning)}: the run has learned all its {learned} iterations, so a resume learns nothing "
            f"under these settings; give --iterations above {learned} to learn more with them, or leave them out"
        )


def saved_settings(config_file: Path) -> dict[str, Any]:
    """The run's own config.yaml as dotted keys, as today's config tree reads it as far as it can
    (`saved_settings_of`): a run saved before a check was added must still be resumable with the setting that fixes
    it, and its null thresholds or keys added since must not read as settings the resume changes."""
    return saved_settings_of(yaml.safe_load(config_file.read_text(encoding="utf-8")) or {})
