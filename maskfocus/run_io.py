"""The run folder: resolved config, metrics JSONL, image grids, reward curve, checkpoints, final model.

Layout of runs/<name>/:
  config.yaml           the resolved config (every default filled in)
  config.before_resume_iter_XXXXXX.yaml  after a resume that changed settings: the config it replaced (.2.yaml, ...
                        after further resumes from the same checkpoint)
  metrics.jsonl         one record per iteration (grouped keys: reward/, loss/, select/, router/, perf/ ...)
  metrics.superseded.jsonl  after a resume: the records of the iterations redone from the checkpoint
  images/iter_XXXXXX.png  grids of the fixed prompts (one row per tag)
  reward_curve.png      reward and score over iterations
  checkpoints/iter_XXXXXX/{transformer.safetensors, optimizer.pt, state.json}
  model/                the final model as a full aMUSEd-format folder (`maskfocus eval --model`)
  eval/summary.json, eval/results.jsonl   the final evaluation
  eval.before_resume_iter_XXXXXX/, model.before_resume_iter_XXXXXX/  after a resume with iterations left to learn:
                        the evaluation and model of the run before it
  run.lock              while a run trains in the folder: its host and process (maskfocus/run_lock.py)
  .run.lock.turn        empty; its flock is the turn to take over a stale run.lock
metrics.jsonl's writing and reading is maskfocus/metrics_log.py.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shlex
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from maskfocus import run_lock
from maskfocus.config import ConfigError, RunConfig, dump_config, load_config
from maskfocus.config_base import flatten
from maskfocus.metrics_log import MetricsLog as MetricsLog  # re-exported: the run folder's I/O in one place
from maskfocus.metrics_log import read_metrics as read_metrics
from maskfocus.metrics_log import rewind_metrics as rewind_metrics
from maskfocus.metrics_log import running_counts as running_counts
from maskfocus.models.base import MaskedGenerator
from maskfocus.models.loading import weights_files
from maskfocus.outputs import check_output_folder, replace_folder
from maskfocus.ray_job import resume_command
from maskfocus.reward_curve import moving_average as moving_average  # re-exported, as the metrics log is
from maskfocus.reward_curve import plot_reward_curve as plot_reward_curve
from maskfocus.reward_curve import shown_reward_series as shown_reward_series
from maskfocus.run_state import complete_checkpoints, latest_checkpoint, resume_state
from maskfocus.update import lr_factor, schedule_span


def new_run_folder(config: RunConfig, name: str | None = None, lock: contextlib.ExitStack | None = None) -> Path:
    """runs/<name or timestamp>/ with the resolved config written into it. With `lock`, the folder's run lock is
    taken into it first and the folder checked again under it: a run starting in the same folder between the check
    and the lock (its config.yaml written, no metrics yet) is refused before its config.yaml is overwritten."""
    folder = run_folder_for(config, name)
    folder.mkdir(parents=True, exist_ok=True)
    if lock is not None:
        lock.enter_context(run_lock.held(folder))
        check_no_run_in(folder)
    dump_config(config, folder / "config.yaml")
    return folder


def run_folder_for(config: RunConfig, name: str | None = None) -> Path:
    """The folder `new_run_folder` would make, checked (a name inside train.out_dir, no run there already, no file
    in the way) without making it."""
    if name is None:  # two runs started in the same second get their own folders
        folder = unused_path(Path(config.train.out_dir), time.strftime("%Y%m%d-%H%M%S"))
    else:
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise ConfigError(
                f"--name {name!r}: a run name is a folder path inside train.out_dir ({config.train.out_dir}): "
                "not empty or '.', not absolute, no '..'"
            )
        folder = Path(config.train.out_dir) / name
    check_no_run_in(folder)
    check_output_folder("run folder (train.out_dir and --name)", folder)
    return folder


def check_no_run_in(folder: Path) -> None:
    """No run has logged or checkpointed in `folder`, and no live run holds its lock (one that is still starting)."""
    if (folder / "metrics.jsonl").exists() or (folder / "checkpoints").exists():
        raise ConfigError(
            f"run folder {folder} already holds a run; choose another --name, or continue it with "
            f"`maskfocus train --resume {shlex.quote(str(folder))}`"
        )
    if (held := run_lock.held_note(folder)) is not None and not run_lock.held_here(folder):
        raise ConfigError(f"{held}; or choose another --name")


def record_resumed_config(run_dir: Path, config: RunConfig) -> tuple[list[str], Path | None]:
    """The run folder's side of a resume, before either executor starts (`maskfocus train --resume` calls it).

    A resume with iterations left to learn first sets aside the final evaluation and model of the run as it was
    (`set_aside_results`): they would no longer be this run's, and a stop before its end would leave them as its
    score. A resume whose command line changes settings (e.g. `--iterations 500` to extend a run) rewrites
    config.yaml with the settings it runs under; the one it replaces is kept as config.before_resume_<latest
    checkpoint>.yaml (never overwritten: a later resume from the same checkpoint keeps its own as .2.yaml, ...); a
    change of the learning-rate schedule's length is printed (`schedule_note`). Prints and returns the changes as
    `key: old -> new`, and returns where the replaced config went (none changed: nothing written)."""
    from maskfocus.resume_check import saved_settings

    start = resume_state(run_dir, resume=True)
    tag = Path(start.checkpoint).name if start.checkpoint is not None else "start"
    # read before anything moves: a config.yaml that today's checks refuse (saved before a check was added) is read
    # section by section (saved_settings_of), and this resume's settings are the ones that fix it
    before = saved_settings(run_dir / "config.yaml")
    after = flatten(config.model_dump(mode="json"))
    changes = [f"{key}: {before.get(key)} -> {value}" for key, value in after.items() if before.get(key) != value]
    changes += [f"{key}: {value} -> (removed)" for key, value in before.items() if key not in after]
    if start.iteration < config.train.num_iterations and (moved := set_aside_results(run_dir, tag)):
        last = config.train.num_iterations - 1
        print(
            f"this resume learns iterations {start.iteration}-{last}; the results of the run before it are kept aside: "
            + ", ".join(f"{source.name}/ -> {target.name}/" for source, target in moved)
        )
    if not changes:
        return [], None
    kept = unused_path(run_dir, f"config.before_resume_{tag}", ".yaml")
    shutil.copy2(run_dir / "config.yaml", kept)  # a copy, then an atomic rewrite: config.yaml is never missing
    dump_config(config, run_dir / "config.yaml")
    print(f"the resume changes {'; '.join(changes)} (config.yaml updated; the previous one is {kept.name})")
    before_config = _config_or_none(kept)
    if before_config is not None and (note := schedule_note(before_config, config, start.num_updates, start.iteration)):
        print(note)
    return changes, kept


def set_aside_results(run_dir: Path, tag: str) -> list[tuple[Path, Path]]:
    """Move eval/ and model/, where present, to eval.before_resume_<tag>/ and model.before_resume_<tag>/ (a free
    name: nothing is overwritten). Returns the (source, target) of each folder moved."""
    moved = []
    for name in ("eval", "model"):
        source = run_dir / name
        if source.exists():
            target = unused_path(run_dir, f"{name}.before_resume_{tag}")
            source.rename(target)
            moved.append((source, target))
    return moved


def unused_path(folder: Path, stem: str, suffix: str = "") -> Path:
    """folder/<stem><suffix>, or the first of folder/<stem>.2<suffix>, <stem>.3<suffix>, ... that does not exist."""
    path, number = folder / f"{stem}{suffix}", 1
    while path.exists():
        number += 1
        path = folder / f"{stem}.{number}{suffix}"
    return path


def _config_or_none(path: Path) -> RunConfig | None:
    """The config at `path`, or None where today's checks refuse it."""
    try:
        return load_config(path)
    except ConfigError:
        return None


def schedule_note(before: RunConfig, after: RunConfig, num_updates: int, iteration: int) -> str | None:
    """The line a resume prints when it changes the length of the learning-rate schedule, or None.

    The schedule always spans the configured run (`schedule_span`), so a crash-resume continues it exactly, and a
    resume that extends the run stretches it: the learning rate at the resume point (optimizer step `num_updates`,
    iteration `iteration`) rises, e.g. 1e-05 -> 5.5e-05 from 250 to 500 iterations."""
    spans = [schedule_span(config, num_updates, iteration) for config in (before, after)]
    if spans[0] == spans[1]:
        return None
    lr_before, lr_after = (
        config.optim.learning_rate * lr_factor(num_updates, span, config.optim.final_lr_fraction)
        for config, span in zip((before, after), spans, strict=True)
    )
    return (
        f"learning-rate schedule: now spans {after.train.num_iterations} iterations, {spans[1]} optimizer steps "
        f"(was {before.train.num_iterations}, {spans[0]}); lr at the resume point (iteration {iteration}): "
        f"{lr_before:.3g} -> {lr_after:.3g}"
    )


def iteration_progress(start_iteration: int, num_iterations: int, desc: str, show: bool) -> tqdm:
    """The training progress bar, at the run's position: a resume at iteration 200 of 250 shows 200/250."""
    return tqdm(total=num_iterations, initial=start_iteration, desc=desc, unit="iter", disable=not show)


class RecentReward:
    """The mean training reward of the last `window` iterations, for the progress bar (non-finite ones skipped),
    labelled with how many it averages: `reward(last 10)=0.734`."""

    def __init__(self, window: int = 10, earlier: list[dict[str, Any]] = ()):
        """`earlier`: the records a resumed run keeps, so that its bar goes on from those of its last `window`
        iterations rather than from one iteration (with `train.log_every` above 1 they are fewer than `window`)."""
        self.values: deque[float] = deque(maxlen=window)
        last = max((record["iteration"] for record in earlier), default=0)
        for record in earlier:
            if record["iteration"] > last - window:
                self._add(record)

    def _add(self, record: dict[str, Any]) -> None:
        reward = record.get("reward/mean")
        if isinstance(reward, (int, float)) and math.isfinite(reward):
            self.values.append(float(reward))

    def postfix(self, record: dict[str, Any]) -> dict[str, str]:
        self._add(record)
        if not self.values:
            return {}
        return {f"reward(last {len(self.values)})": f"{sum(self.values) / len(self.values):.3f}"}


def plain_state_dict(module: nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """Full (unsharded) tensors on the CPU, contiguous and detached, ready for safetensors. Collective for a sharded
    module: every rank must call it (each tensor is all-gathered); with `keep` false this rank only joins the
    gathers and keeps nothing (an empty dict), so that one rank, not every one, holds a full copy."""
    state = {}
    for key, value in module.state_dict().items():
        if hasattr(value, "full_tensor"):
            value = value.full_tensor()
        if keep:
            state[key] = value.detach().cpu().contiguous()
    return state


def save_checkpoint(
    folder: Path,
    iteration: int,
    module: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    state: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """checkpoints/iter_XXXXXX/: transformer weights (safetensors), optimizer state, run state (JSON); then the
    `.partial` folders of writes cut short go, and all but the newest `keep` checkpoints (train.keep_checkpoints;
    None keeps every one). Weights gone non-finite (a diverging loss) delete none: the older, finite checkpoints are
    the ones a restart needs."""
    target = folder / "checkpoints" / f"iter_{iteration:06d}"
    partial = target.with_name(target.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    weights = plain_state_dict(module)
    save_file(weights, str(partial / "transformer.safetensors"))
    if optimizer is not None:
        torch.save(optimizer.state_dict(), partial / "optimizer.pt")
    (partial / "state.json").write_text(json.dumps({"iteration": iteration, **state}, indent=2))
    sync_to_disk(partial)  # on network storage, written through before the older checkpoints go
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)  # a checkpoint folder exists only once it is complete
    fsync_path(target.parent)  # the rename too is on disk before the older checkpoints go
    for cut_short in target.parent.glob("iter_*.partial"):  # writes a stop or crash cut (the run lock: no other)
        shutil.rmtree(cut_short, ignore_errors=True)  # a Meissonic one holds up to ~12 GB that nothing would read
    if all_finite(weights):
        prune_checkpoints(folder, keep)
    return target


def all_finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point())


def sync_to_disk(folder: Path) -> None:
    """fsync every file of `folder`, then the folder itself."""
    for path in [*folder.iterdir(), folder]:
        fsync_path(path)


def fsync_path(path: Path) -> None:
    """fsync one file or folder (a folder's fsync makes the renames and new names in it durable)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def prune_checkpoints(folder: Path, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints of the run folder; returns the deleted ones."""
    if keep is None:
        return []
    old = complete_checkpoints(folder)[:-keep]
    for path in old:
        shutil.rmtree(path)
    return old


def load_checkpoint_weights(checkpoint: Path, module: nn.Module) -> dict[str, Any]:
    """Load the transformer weights into `module`; returns the run state. Weights of another model are an error
    naming the checkpoint (torch's names only the module's class)."""
    weights = load_file(str(checkpoint / "transformer.safetensors"))
    try:
        module.load_state_dict(weights)
    except RuntimeError as error:
        if "Error(s) in loading state_dict" not in str(error):  # an out-of-memory or device error is its own
            raise
        first = str(error).strip().splitlines()
        raise ConfigError(
            f"checkpoint {checkpoint} does not fit the model this run loads ({' '.join(first[:3])[:400]}); resume "
            "with the model.path the run trained (its config.yaml, or config.before_resume_*.yaml)"
        ) from None
    return json.loads((checkpoint / "state.json").read_text())


def read_optimizer_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's optimizer.pt, read onto the CPU (tensors and plain values only). A GPU run saves its state on
    its device: read as saved, a learner rank would put the whole of it on that one GPU (cuda:0) beside rank 0's
    model, and a machine without that device could not read it. Optimizers move each state to its parameter."""
    return torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)


def resume_hint(run_dir: Path) -> str:
    """How to continue a stopped run: the latest checkpoint and the `--resume` command, or that there is none."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return f"no checkpoint was written yet (`{resume_command(run_dir)}` starts the run again from the base model)"
    return f"resume from {checkpoint.name} with `{resume_command(run_dir)}`"


def evaluate_command(run_dir: Path) -> str:
    """The `maskfocus eval` that writes a trained run's final evaluation where the run would have."""
    paths = ("config.yaml", "model", "eval/results.jsonl", "eval/summary.json")
    config, model, out, summary = (shlex.quote(str(run_dir / path)) for path in paths)
    return f"maskfocus eval --config {config} --model {model} --out {out} --summary {summary}"


def float32_final_model(config: RunConfig, run_dir: Path, published: MaskedGenerator) -> MaskedGenerator:
    """The model the run saves and evaluates: the float32 master weights of the last checkpoint (which the learner
    always writes after the last iteration) when rollouts sample in another dtype, else the published copy (the
    same weights: float32 travels unchanged)."""
    if config.model.dtype == "float32":
        return published
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise RuntimeError(f"{run_dir}: the run finished without a checkpoint to take the float32 weights from")
    from maskfocus.models import load_generator

    model = load_generator(config.model, dtype="float32")
    load_checkpoint_weights(checkpoint, model.trainable_module())
    return model


PLAIN_WEIGHTS_FILE = {"transformer": "diffusion_pytorch_model.safetensors", "text_encoder": "model.safetensors"}
"""The file diffusers (transformer) and transformers (text encoder) load a part's weights from, with no variant."""


def save_model_folder(
    base_folder: Path,
    module: nn.Module,
    target: Path,
    text_encoder: nn.Module | None = None,
    text_encoder_folder: Path | None = None,
) -> Path:
    """A full aMUSEd-format model folder: the base model with the trained transformer weights (and the trained text
    encoder's, when given), its text_encoder/ replaced by `text_encoder_folder` when the run used one
    (`model.text_encoder`), so that the folder alone samples as the run did. A trained part's weights replace every
    weights file the base ships for it: the Hub's aMUSEd and Meissonic folders also hold `*.fp16.safetensors`
    variants (and a large part may be sharded), which would still hold the base weights, and which one a glob found
    first was up to the file system."""
    trained = {"transformer": module} if text_encoder is None else {"transformer": module, "text_encoder": text_encoder}

    def write(folder: Path) -> None:
        shutil.copytree(base_folder, folder, ignore=shutil.ignore_patterns("*.partial"))
        if text_encoder_folder is not None:
            shutil.rmtree(folder / "text_encoder", ignore_errors=True)
            shutil.copytree(text_encoder_folder, folder / "text_encoder", ignore=shutil.ignore_patterns("*.partial"))
        for part, weights_of in trained.items():
            for old_weights in weights_files(folder / part):
                old_weights.unlink()
            weights = folder / part / PLAIN_WEIGHTS_FILE[part]
            save_file(plain_state_dict(weights_of), str(weights), metadata={"format": "pt"})

    replace_folder(target, write)  # whole or as it was: a stop mid-copy left a model/ without some weights
    return target
