"""The in-process trainer: sample -> reward -> select -> advantages -> update, in one process, no Ray.

It is the reference the Ray system must match (`maskfocus train --executor local`). Every random stream
is derived from (run seed, iteration, role), so the Ray executor can reproduce it exactly.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from maskfocus.config import ConfigError, RunConfig
from maskfocus.divergence import Diverged, NonFiniteWatch
from maskfocus.evaluation import build_eval_judge, load_rows, run_evaluation
from maskfocus.evaluation_output import write_results
from maskfocus.images import save_grid, to_uint8
from maskfocus.models import load_generator
from maskfocus.models.base import MaskedGenerator
from maskfocus.models.loading import resolve_model_path
from maskfocus.ray_job import resume_command
from maskfocus.rewards.combined import build_rewards
from maskfocus.rollout import rollout
from maskfocus.run_io import (
    MetricsLog,
    RecentReward,
    evaluate_command,
    iteration_progress,
    load_checkpoint_weights,
    plot_reward_curve,
    read_metrics,
    read_optimizer_state,
    resume_hint,
    save_checkpoint,
    save_model_folder,
)
from maskfocus.run_state import latest_checkpoint, resume_state
from maskfocus.sampling import check_negative_prompt, sample_with_config, seeded_generator
from maskfocus.scoring import score_trajectory
from maskfocus.shapes.prompts import HeldOut, draw_index, tag_probabilities
from maskfocus.stopping import RunFailed, RunStopped, StopAtOnce, StopRequest, StopSignal, append_error_log
from maskfocus.update import PolicyUpdater, schedule_span

ROLLOUT, SELECT, LEARN, PREVIEW = 0, 1, 2, 3  # role keys of the random streams


class PromptStream:
    """Training prompts with a cursor (how many were taken), so a resumed run continues the same stream.

    The source is the shapes world's prompt generator, or, with `prompt_file`, seeded uniform draws from the
    records of a GenEval-format JSONL.
    """

    def __init__(
        self,
        seed: int,
        tags: tuple[str, ...],
        cursor: int = 0,
        prompt_file: str | None = None,
        tag_weights: tuple[float, ...] | None = None,
        held_out: HeldOut = "text",
    ):
        from maskfocus.shapes.prompts import TrainingPrompts

        if prompt_file:
            self.source = FilePrompts(prompt_file, seed, tags, tag_weights)
        else:
            self.source = TrainingPrompts(seed, tags, weights=tag_weights, held_out=held_out)
        self.cursor = 0
        self.take(cursor)

    @classmethod
    def from_config(cls, config: RunConfig, cursor: int = 0) -> PromptStream:
        rollout = config.rollout
        return cls(config.seed, rollout.tags, cursor, rollout.prompt_file, rollout.tag_weights, rollout.held_out)

    def take(self, count: int) -> list[dict[str, Any]]:
        self.cursor += count
        return [next(self.source) for _ in range(count)]


class FilePrompts:
    """Endless seeded uniform draws from a prompt file.

    `.txt`: one free-form prompt per line (blank lines skipped; for rewards that need no metadata, e.g. HPS or
    CLIP). Anything else: a GenEval-format JSONL, of which the records tagged with one of `tags` are used.
    """

    def __init__(self, path: str, seed: int, tags: tuple[str, ...], tag_weights: tuple[float, ...] | None = None):
        path = str(Path(path).expanduser())  # `~/prompts.jsonl`, as the model and reward paths take it
        if not Path(path).is_file():
            raise ConfigError(f"rollout.prompt_file: no such file: {path}")
        self.rows = _text_prompts(path) if path.endswith(".txt") else _tagged_records(path, tags)
        self.rng = np.random.default_rng(seed)
        self.by_tag = None if tag_weights is None else _rows_by_weighted_tag(self.rows, tags, tag_weights, path)

    def __next__(self) -> dict[str, Any]:
        rows = self.rows
        if self.by_tag is not None:
            groups, probabilities = self.by_tag
            rows = groups[draw_index(self.rng, len(groups), probabilities)]
        return copy.deepcopy(rows[self.rng.integers(len(rows))])


def _rows_by_weighted_tag(rows, tags, weights, path):
    """The records of each tag with a positive weight, and those tags' probabilities."""
    groups, kept = [], []
    for tag, weight in zip(tags, weights, strict=True):
        if weight <= 0:
            continue
        tagged = [row for row in rows if row["tag"] == tag]
        if not tagged:
            raise ConfigError(f"rollout.tag_weights: tag {tag!r} has weight {weight} but no record in {path}")
        groups.append(tagged)
        kept.append(weight)
    return groups, tag_probabilities(kept)


def _text_prompts(path: str) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # -sig: a byte-order mark some editors write is skipped
    except UnicodeDecodeError as error:
        raise ConfigError(f"rollout.prompt_file: {path} is not UTF-8 text ({error.reason}); save it as UTF-8") from None
    rows = [{"prompt": line.strip()} for line in text.splitlines() if line.strip()]
    if not rows:
        raise ConfigError(f"rollout.prompt_file: {path} has no prompt")
    return rows


def _tagged_records(path: str, tags: tuple[str, ...]) -> list[dict[str, Any]]:
    from maskfocus.rewards.geneval import load_metadata

    rows = [row for row in load_metadata(path) if row["tag"] in tags]
    if not rows:
        raise ConfigError(f"rollout.prompt_file: no record of {path} has a tag in rollout.tags {list(tags)}")
    return rows


def preview_prompts() -> list[str]:
    """One fixed prompt per tag (the first of the tag in shapes-geneval), for the image grids."""
    seen: dict[str, str] = {}
    for row in load_rows("shapes-geneval"):
        seen.setdefault(row["tag"], row["prompt"])
    return list(seen.values())


def preview_images(
    model: MaskedGenerator, config: RunConfig, images_per_prompt: int = 4
) -> tuple[np.ndarray, list[str]]:
    """The images (uint8, B x H x W x 3) of the fixed prompts, each `images_per_prompt` times, drawn with the
    standard sampler and a fixed seed, and the prompts: what a preview grid shows."""
    prompts = preview_prompts()
    result = sample_with_config(
        model,
        [p for p in prompts for _ in range(images_per_prompt)],
        config.sampler,
        seeded_generator(config.seed, PREVIEW, device=model.device),  # a CPU stream would draw on the CPU
    )
    return to_uint8(model.decode(result.tokens_BL)), prompts


def save_preview_grid(path: Path, images: np.ndarray, prompts: list[str]) -> None:
    """One row per prompt (one per tag), `len(images) / len(prompts)` images each."""
    save_grid(path, images, columns=len(images) // len(prompts), scale=2, labels=prompts)


def save_preview(model: MaskedGenerator, config: RunConfig, path: Path) -> None:
    """A grid of the fixed prompts (standard sampler, fixed seed): one row per tag."""
    save_preview_grid(path, *preview_images(model, config))


def generator_in(config: RunConfig, master: MaskedGenerator, dtype: str) -> MaskedGenerator:
    """`master` itself when `dtype` is float32 (the master's), else a copy loaded in `dtype` with its weights."""
    if dtype == "float32":
        return master
    copy = load_generator(config.model, dtype=dtype)
    sync_weights(copy, master)
    return copy


def rollout_model(config: RunConfig, master: MaskedGenerator) -> MaskedGenerator:
    """The generator the rollouts sample from: the float32 master itself, or a copy in `model.dtype` (bfloat16
    samples ~30% faster on a CPU with AVX512-BF16) that `sync_weights` refreshes before each rollout, as the Ray
    rollout workers load each published version."""
    return generator_in(config, master, config.model.dtype)


def sync_weights(copy: MaskedGenerator, master: MaskedGenerator) -> None:
    """Copy the master's transformer weights into `copy` (cast to its dtype); nothing when they are one."""
    if copy is not master:
        with torch.no_grad():
            copy.trainable_module().load_state_dict(master.trainable_module().state_dict())


def train_local(config: RunConfig, run_dir: Path, resume: bool = False, show_progress: bool = True) -> dict:
    """Run the whole RL loop in this process; returns the final summary (with the evaluation if enabled)."""
    torch.manual_seed(config.seed)
    model = load_generator(config.model, dtype="float32")  # the learner's float32 master weights
    check_negative_prompt(model, config.sampler)
    sampler_model = rollout_model(config, model)
    reward_fn = build_rewards(config.rewards, device=config.model.device)
    image_embed = clip_image_embed(reward_fn) if config.selection.embedding == "clip" else None
    start = resume_state(run_dir, resume)
    updater = PolicyUpdater(
        model,
        config.grpo,
        config.optim,
        config.rollout_sampler().num_steps,
        total_updates=schedule_span(config, start.num_updates, start.iteration),
        compile=config.train.compile_learner,
        compile_backend=config.train.learner_compile_backend,
        temperature=config.rollout_sampler().temperature,
    )
    start_iteration, cursor = start.iteration, start.prompt_cursor
    if start.checkpoint is not None:
        checkpoint = Path(start.checkpoint)
        load_checkpoint_weights(checkpoint, updater.module)
        updater.optimizer.load_state_dict(read_optimizer_state(checkpoint))
        updater.resume_schedule(start.num_updates)
    prompts = PromptStream.from_config(config, cursor)
    log = MetricsLog(run_dir / "metrics.jsonl", start_iteration, config.train.log_every)
    (run_dir / "images").mkdir(exist_ok=True)
    progress = iteration_progress(start_iteration, config.train.num_iterations, "train", show_progress)
    recent = RecentReward(earlier=read_metrics(log.path))
    watch = NonFiniteWatch(config.train.max_nonfinite_iterations)
    num_iterations, iteration = config.train.num_iterations, start_iteration
    unsaved = None  # (iteration, prompt cursor) learned whole since the last checkpoint
    learned_before, steps_before = None, updater.steps_begun
    try:
        with StopRequest() as stop:
            for iteration in range(start_iteration, num_iterations):
                start = time.perf_counter()
                batch = collect_batch(config, iteration, model, sampler_model, prompts, reward_fn, image_embed)
                # A failure in the update after an optimizer step leaves the weights part-way: they are not saved.
                # One before any (in the old or reference forwards, say) leaves the last learned iteration intact.
                learned_before, steps_before, unsaved = unsaved, updater.steps_begun, None
                metrics = updater.update(batch, seeded_generator(config.seed, iteration, LEARN, device=model.device))
                unsaved = (iteration, prompts.cursor)
                record = {
                    "iteration": iteration,
                    "policy_version": iteration + 1,
                    "prompt_cursor": prompts.cursor,
                    **batch.stats,
                    **metrics,
                    "perf/iteration_seconds": time.perf_counter() - start,
                }
                progress.set_postfix(recent.postfix(record), refresh=False)
                progress.update(1)
                last = iteration == num_iterations - 1
                if iteration % config.train.log_every == 0 or last:
                    log.write(record)
                if (note := watch.observe(record)) is not None:  # raises Diverged: nothing left to learn from
                    tqdm.write(note)
                if iteration % config.train.image_every == 0 or last:
                    sync_weights(sampler_model, model)
                    save_preview(sampler_model, config, run_dir / "images" / f"iter_{iteration:06d}.png")
                    plot_reward_curve(read_metrics(run_dir / "metrics.jsonl"), run_dir / "reward_curve.png")
                stopping = stop.requested  # read once: a signal between two reads would skip the checkpoint
                if (iteration + 1) % config.train.checkpoint_every == 0 or last or stopping:
                    _save_iteration(run_dir, config, iteration, updater, prompts.cursor)
                    unsaved = None
                if stopping:
                    raise RunStopped(stopped_message(run_dir, stopping, iteration, num_iterations), stopping)
    except Diverged as error:  # resuming would not help: the message says what would
        kept = save_learned(run_dir, config, updater, unsaved) if error.weights_finite and unsaved else ""
        raise RunFailed(f"{error}{kept}", None) from error
    except RunStopped:
        raise
    except Exception as error:  # keep what was learned, say where the run can resume, keep the traceback
        if unsaved is None and updater.steps_begun == steps_before:
            unsaved = learned_before
        kept = save_learned(run_dir, config, updater, unsaved) if unsaved is not None else ""
        message = f"the run failed in iteration {iteration}: {error}{kept}; {resume_hint(run_dir)}"
        raise RunFailed(message, append_error_log(run_dir, error)) from error
    finally:
        log.close()
        progress.close()
    return finish_run(config, run_dir, model, updater.module)


def collect_batch(
    config: RunConfig,
    iteration: int,
    model: MaskedGenerator,
    sampler_model: MaskedGenerator,
    prompts: PromptStream,
    reward_fn,
    image_embed,
):
    """Iteration `iteration`'s training batch: P x G rollouts with the current weights, rewarded, steps selected."""
    metadata = prompts.take(config.rollout.prompts_per_iteration)
    sync_weights(sampler_model, model)
    trajectory = rollout(
        sampler_model,
        metadata,
        config.rollout.group_size,
        config.rollout_sampler(),
        config.router,
        seeded_generator(config.seed, iteration, ROLLOUT, device=model.device),
        policy_version=iteration,
        iteration=iteration,
    )
    return score_trajectory(
        trajectory,
        reward_fn,
        model,
        config.selection,
        config.grpo,
        seeded_generator(config.seed, iteration, SELECT),
        image_embed,
    )


def save_learned(run_dir: Path, config: RunConfig, updater: PolicyUpdater, unsaved: tuple[int, int]) -> str:
    """Checkpoint the last iteration learned whole after a failure; what happened, for the failure's message."""
    iteration, cursor = unsaved
    try:
        _save_iteration(run_dir, config, iteration, updater, cursor)
    except Exception as error:  # the run's own failure matters more: report both
        return f" (the checkpoint of iteration {iteration} could not be written either: {error})"
    return f" (iteration {iteration}, the last learned, is checkpointed)"


def stopped_message(run_dir: Path, signal_name: str, iteration: int, num_iterations: int) -> str:
    """What a stop after `iteration` kept, and how to go on (after the last one only the final model is left)."""
    done = f"after iteration {iteration} ({iteration + 1} of {num_iterations} done)"
    if iteration == num_iterations - 1:
        done += "; the training is complete and checkpointed, the final model and evaluation are not written"
    return f"stopped on {signal_name} {done}; {resume_hint(run_dir)}"


def _save_iteration(run_dir: Path, config: RunConfig, iteration: int, updater: PolicyUpdater, cursor: int) -> Path:
    """The checkpoint after `iteration`: weights, optimizer, and the state a resume continues from."""
    state = {
        "prompt_cursor": cursor,
        "num_updates": updater.num_updates,
        "policy_version": iteration + 1,
        "seed": config.seed,
    }
    return save_checkpoint(run_dir, iteration, updater.module, updater.optimizer, state, config.train.keep_checkpoints)


WRITING_MODEL = "while writing the final model"


def finish_run(
    config: RunConfig,
    run_dir: Path,
    model: MaskedGenerator,
    module: torch.nn.Module | None = None,
    final_model: Callable[[MaskedGenerator], MaskedGenerator] | None = None,
) -> dict:
    """Final model folder, reward curve and (if enabled) the GenEval-style evaluation, in `eval.dtype`, of `model`
    (the float32 master weights; `final_model` makes them from it first, as the Ray driver reads them from the last
    checkpoint; `module`: the weights to save, else the model's). The loops' stop handlers are gone by now: a stop
    (Ctrl-C, SIGTERM) or a failure in any of it ends as RunStopped or RunFailed that say what the training left and
    the commands that finish the run (a SIGTERM while the final model was written, or the judge loaded, ended the
    process without a word and left its run lock; a failure there was a bare traceback)."""
    stage = WRITING_MODEL
    try:
        with StopAtOnce():
            if final_model is not None:
                model = final_model(model)
            summary = _final_model(config, run_dir, module if module is not None else model.trainable_module())
            if config.train.final_eval:
                stage = "during the final evaluation"
                summary["eval"] = _final_evaluation(config, run_dir, model)
            return summary
    except KeyboardInterrupt as stop:  # StopSignal, or a Ctrl-C off the main thread
        signal_name = stop.signal_name if isinstance(stop, StopSignal) else "SIGINT"
        message = after_training_message(run_dir, config, f"stopped on {signal_name} {stage}", stage != WRITING_MODEL)
        raise RunStopped(message, signal_name) from None
    except Exception as error:
        failed = f"the run failed {stage}: {type(error).__name__}: {error}"
        message = after_training_message(run_dir, config, failed, stage != WRITING_MODEL)
        raise RunFailed(message, append_error_log(run_dir, error)) from error


def _final_model(config: RunConfig, run_dir: Path, module: torch.nn.Module) -> dict[str, Any]:
    replaced = Path(config.model.text_encoder).expanduser() if config.model.text_encoder else None
    save_model_folder(resolve_model_path(config.model.path), module, run_dir / "model", text_encoder_folder=replaced)
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() else []
    if records:
        plot_reward_curve(records, run_dir / "reward_curve.png")
    summary: dict[str, Any] = {"run_dir": str(run_dir), "iterations": config.train.num_iterations}
    if records:
        tail = [r["reward/mean"] for r in records[-10:] if r.get("reward/mean") is not None]
        summary["final_reward_mean_last10"] = float(np.mean(tail)) if tail else None
    return summary


def _final_evaluation(config: RunConfig, run_dir: Path, model: MaskedGenerator) -> dict[str, Any]:
    rows = load_rows(config.eval.benchmark)
    judge = build_eval_judge(config)  # as `maskfocus eval --config RUN/config.yaml` judges the run
    eval_model = generator_in(config, model, config.eval.weights_dtype(config.model))
    eval_records, eval_summary, _ = run_evaluation(eval_model, rows, config.eval, config.sampler, judge=judge)
    write_results(eval_records, eval_summary, run_dir / "eval" / "results.jsonl", run_dir / "eval" / "summary.json")
    return eval_summary


def after_training_message(run_dir: Path, config: RunConfig, what: str, model_written: bool = True) -> str:
    """`what` happened after the last iteration: the training is checkpointed, the final model saved once
    `model_written` (a model/ folder of an earlier finish is not this one's), and these commands finish the run."""
    checkpoint = latest_checkpoint(run_dir)
    last = f"last checkpoint: {checkpoint.name}" if checkpoint is not None else "no checkpoint"
    if not model_written:
        evaluation = " and its evaluation" if config.train.final_eval else ""
        return (
            f"{what}; the training finished and is checkpointed ({last}); `{resume_command(run_dir)}` writes the "
            f"final model{evaluation}"
        )
    return (
        f"{what}; the training finished and is saved (model: {run_dir / 'model'}, {last}); evaluate it with "
        f"`{evaluate_command(run_dir)}`, or redo the run's final evaluation with `{resume_command(run_dir)}`"
    )


def clip_image_embed(reward_fn):
    """The image embedding of `selection.embedding: clip`: the CLIP of a clip or hps reward term, else (the built-in
    shapes model only: RunConfig checks) the tiny shapes-world CLIP."""
    for _, reward in reward_fn.terms:
        if reward.name in ("clip", "hps"):
            return reward.scorer.image_embeddings
    from maskfocus.rewards.clip_score import TINY_CLIP, ClipScorer

    return ClipScorer.from_folder(TINY_CLIP, field="selection.embedding: clip").image_embeddings
