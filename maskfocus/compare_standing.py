"""Where a compared run without a final evaluation stands (running, trained, diverged, failed or stopped), with the
command that goes on to its evaluation, and the notes on single runs under the comparison table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maskfocus import run_lock
from maskfocus.compare_run import RunRecord
from maskfocus.config import BUILTIN_MODEL
from maskfocus.divergence import NAN_REWARD_KEY
from maskfocus.run_io import evaluate_command, resume_hint


def run_notes(runs: list[RunRecord]) -> list[str]:
    """Notes on single runs: those whose s/iter is left out (only their first iteration logged), and those a resume
    changed settings of."""
    notes = []
    first_only = [f"{run.folder} ({run.first_iteration_seconds:.1f} s)" for run in runs if run.first_iteration_seconds]
    if first_only:
        notes.append(
            "note: the s/iter columns leave out runs that logged only their first iteration, whose time includes "
            f"the one-off compile and warm-up: {', '.join(first_only)}"
        )
    resumed = "was resumed with other settings and is grouped by its latest"
    notes += [f"note: {run.folder} {resumed}: {'; '.join(run.resume_changes)}" for run in runs if run.resume_changes]
    return ["", *notes] if notes else []


OUTSIDE_THE_SHAPES_WORLD = (
    ", adding `--metadata FILE.jsonl` where the model is not a shapes-world one (FILE.jsonl: GenEval's "
    "evaluation_metadata.jsonl or another GenEval-format prompt file; eval.benchmark shapes-geneval scores "
    "shapes-world prompts only)"
)
"""Added after the `maskfocus eval` command of a run that skipped its final evaluation and did not start from the
built-in model (the shipped real-model configs skip it because the built-in benchmark would be meaningless)."""


def standing(run: RunRecord) -> str:
    """Where a run without a final evaluation stands, as its folder shows it, and the command that goes on to the
    evaluation: running now, trained (with or without its model), diverged, failed or stopped part-way."""
    total = run.config.get("train.num_iterations")
    if run_lock.held_note(run.folder) is not None:
        return f"running now ({_logged(run, total)}; run.lock)"
    if run.nonfinite_streak is not None:  # first: a run that diverged in its last iterations is not to be resumed
        return _diverged_standing(run, *run.nonfinite_streak)
    if run.last_iteration is not None and isinstance(total, int) and run.last_iteration >= total - 1:
        return _trained_standing(run, total)
    where = "before logging an iteration" if run.last_iteration is None else f"part-way, {_logged(run, total)}"
    if failed_last(run.folder):
        return f"failed {where} (see {run.folder / 'error.log'}); {resume_hint(run.folder)}"
    return f"stopped {where}; {resume_hint(run.folder)}"


def _logged(run: RunRecord, total: Any) -> str:
    if run.last_iteration is None:
        return "no iteration logged"
    of = f" of 0-{total - 1}" if isinstance(total, int) else ""
    return f"logged up to iteration {run.last_iteration}{of}"


def failed_last(folder: Path) -> bool:
    """Whether the run's error.log is newer than its metrics: a failure, not a stop, ended it (a log older than the
    metrics is of a failure the run was resumed from)."""
    error_log, metrics = folder / "error.log", folder / "metrics.jsonl"
    if not error_log.is_file():
        return False
    return not metrics.is_file() or error_log.stat().st_mtime >= metrics.stat().st_mtime


def _trained_standing(run: RunRecord, total: int) -> str:
    trained = f"trained all {total} iterations"
    evaluates = run.config.get("train.final_eval") is not False
    if not (run.folder / "model").is_dir():
        writes = "it and the final evaluation" if evaluates else "it"
        return f"{trained}, but not its model/ (a resume writes {writes}); {resume_hint(run.folder)}"
    if not evaluates:
        metadata = "" if run.config.get("model.path") == BUILTIN_MODEL else OUTSIDE_THE_SHAPES_WORLD
        return f"{trained} with train.final_eval: false; evaluate it with `{evaluate_command(run.folder)}`{metadata}"
    failed = f" (see {run.folder / 'error.log'})" if failed_last(run.folder) else ""
    return f"{trained}; its final evaluation did not finish{failed}; evaluate it with `{evaluate_command(run.folder)}`"


def _diverged_standing(run: RunRecord, key: str, start: int) -> str:
    if key == NAN_REWARD_KEY:
        cause = f"every group's reward was NaN from iteration {start} on ({key})"
        return f"stopped: {cause}; fix the reward term, then {resume_hint(run.folder)}"
    cause = f"the loss or its gradient was non-finite at every optimizer step from iteration {start} on ({key})"
    return f"diverged: {cause}; start again with a lower optim.learning_rate"
