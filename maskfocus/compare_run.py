"""One run folder as `maskfocus compare` reads it: its resolved config, curve, pace, final evaluation, how its
last iterations ended and which settings a resume changed (maskfocus/compare.py groups and tabulates the runs)."""

from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from maskfocus.config import yaml_error_message
from maskfocus.config_saved import saved_settings_of
from maskfocus.divergence import KEY as NONFINITE_LOSS_KEY
from maskfocus.divergence import NAN_REWARD_KEY
from maskfocus.run_io import read_metrics

IGNORED_KEYS = (
    "seed",
    "train.out_dir",
    "train.log_every",
    "train.image_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.final_eval",
    "ray.timeout_s",
)
"""Config keys that never split runs into groups: the seeds of a setting are its repeats, and how often a run logs,
draws previews and checkpoints, how many checkpoints it keeps, whether it evaluated at its end and how long it waits
before calling a stall do not change what it learns (compiling does not either, but it changes the time per
iteration the table shows: `--ignore sampler.compile` pools such runs)."""


class CompareError(ValueError):
    """A path given to `maskfocus compare` that is not a run folder (or a folder of them)."""


@dataclass
class RunRecord:
    """What the comparison needs of one run folder."""

    folder: Path
    config: dict[str, Any]
    curve: list[tuple[int, float]]
    """(iteration, value) of the compared metric (`reward/mean` by default), finite values only."""
    metric_keys: set[str]
    """Every numeric metric the run logged, for the error on an unknown `--curve`."""
    final: dict[str, Any] | None
    last_iteration: int | None
    learner_seconds: float | None
    """The median over the iterations after the first (which includes the one-off compile), where there are any."""
    iteration_seconds: float | None
    """As `learner_seconds`."""
    first_iteration_seconds: float | None = None
    """The first iteration's seconds where the run logged no other: not its pace, since they include the compile."""
    nonfinite_streak: tuple[str, int] | None = None
    """(metric, first iteration) where the run's last logged iterations all had that metric at 1: every learned
    step's loss non-finite, or every group's reward NaN (maskfocus.divergence)."""
    resume_changes: list[str] = field(default_factory=list)
    """`key: before -> now` for each setting a resume changed (`settings_changed_on_resume`)."""

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


def _median(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return statistics.median(values) if values else None


def after_first_iteration(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of every iteration but the run's first, whose time includes torch.compile's one-off compile
    (12-21 s on 2 CPU cores against 4-9 s later): the ones that time the run's pace."""
    first = min((r["iteration"] for r in records), default=None)
    return [r for r in records if r["iteration"] != first]


def nonfinite_streak(records: list[dict[str, Any]]) -> tuple[str, int] | None:
    """(metric, first iteration) of the streak of records at the end of the run with the loss or its gradient
    non-finite at every optimizer step, or every group's reward NaN; None where the last record has neither."""
    for key in (NONFINITE_LOSS_KEY, NAN_REWARD_KEY):
        start = None
        for record in sorted(records, key=lambda r: r["iteration"], reverse=True):
            if not (isinstance(record.get(key), (int, float)) and record[key] >= 1.0):
                break
            start = record["iteration"]
        if start is not None:
            return key, start
    return None


def load_run(folder: Path, curve_key: str = "reward/mean") -> RunRecord:
    """One run folder: its resolved config, the curve of `curve_key`, timing and final evaluation (None while
    unfinished)."""
    config_path = folder / "config.yaml"
    if not config_path.is_file():
        raise CompareError(f"{folder}: not a run folder (no config.yaml); give run folders or a folder of them")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as error:
        raise CompareError(yaml_error_message(config_path, error)) from None
    if not isinstance(config, dict):
        raise CompareError(f"{config_path}: expected a mapping of config sections, got {type(config).__name__}")
    metrics, summary = folder / "metrics.jsonl", folder / "eval" / "summary.json"
    try:
        records = read_metrics(metrics) if metrics.is_file() else []
    except ValueError as error:  # a broken line names its file and line
        raise CompareError(f"{folder}: {error}") from None
    try:
        final = json.loads(summary.read_text()) if summary.is_file() else None
    except ValueError as error:
        raise CompareError(f"{summary}: not JSON ({error})") from None
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict) or type(record.get("iteration")) is not int:
            shown = str(record)[:80]
            raise CompareError(
                f"{metrics}: record {number} (blank lines not counted) has no whole-number 'iteration': {shown}"
            )
    if final is not None:
        check_summary(final, str(summary))
    curve = [
        (r["iteration"], float(r[curve_key]))
        for r in records
        if isinstance(r.get(curve_key), (int, float)) and math.isfinite(r[curve_key])
    ]
    paced = after_first_iteration(records)
    settings = resolved_config(config)
    return RunRecord(
        folder=folder,
        config=settings,
        curve=curve,
        metric_keys={key for r in records for key, value in r.items() if isinstance(value, (int, float))},
        final=final,
        last_iteration=max((r["iteration"] for r in records), default=None),
        learner_seconds=_median(paced, "perf/learner_seconds"),
        iteration_seconds=_median(paced, "perf/iteration_seconds"),
        first_iteration_seconds=None if paced else _median(records, "perf/iteration_seconds"),
        nonfinite_streak=nonfinite_streak(records),
        resume_changes=settings_changed_on_resume(folder, settings),
    )


def resolved_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's flat config as today's config tree reads it (`saved_settings_of`: a key added since at its default, a
    null detector threshold as the kind's default, a config refused since read section by section), and the
    rollouts' T as the number they sampled with (rollout.num_steps null and 12 are the same run when
    sampler.num_steps is 12)."""
    resolved = saved_settings_of(config)
    if resolved.get("rollout.num_steps") is None:
        resolved["rollout.num_steps"] = resolved.get("sampler.num_steps")
    return resolved


def check_summary(summary: Any, where: str) -> dict[str, Any]:
    """An evaluation summary (`maskfocus eval --summary` output) has a finite `overall` and a mapping `tags` of tag
    -> finite score: what the table and the figure read."""

    def finite(value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

    expected = "expected `maskfocus eval --summary` output: {overall: number, tags: {tag: number}}"
    if not isinstance(summary, dict) or not finite(summary.get("overall")):
        raise CompareError(f"{where}: no numeric 'overall'; {expected}")
    tags = summary.get("tags")
    if not isinstance(tags, dict) or not all(finite(score) for score in tags.values()):
        raise CompareError(f"{where}: 'tags' is not a mapping of tag -> number; {expected}")
    return summary


ABSENT = "<absent>"


def key_under(key: str, name: str) -> bool:
    """`key` is the config key `name` or lies in the section `name`."""
    return key == name or key.startswith(name + ".")


def ignored_key(key: str, ignore: tuple[str, ...]) -> bool:
    return any(key_under(key, name) for name in (*IGNORED_KEYS, *ignore))


def yaml_value(value: Any) -> str:
    """A setting as a user writes it in YAML or `--set`: `false`, `null`, `[a, b]`."""
    if isinstance(value, list):
        return "[" + ", ".join(map(yaml_value, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


RESUME_NOTE_IGNORED_KEYS = ("train.num_iterations",)
"""Besides IGNORED_KEYS, a setting a resume changes that the note on resumed runs leaves out: extending a run is
what resumes are for."""


_BEFORE_RESUME = re.compile(r"config\.before_resume_(?:start|iter_(\d+))(?:\.(\d+))?\.yaml")


def configs_before_resumes(folder: Path) -> list[Path]:
    """The run's config.before_resume_<checkpoint>[.N].yaml (run_io.record_resumed_config), oldest first: by
    checkpoint (`start`, none, first), then N (a later resume from the same checkpoint)."""
    kept = [path for path in folder.glob("config.before_resume_*.yaml") if _BEFORE_RESUME.fullmatch(path.name)]
    return sorted(kept, key=_resume_order)


def _resume_order(path: Path) -> tuple[int, int]:
    match = _BEFORE_RESUME.fullmatch(path.name)
    return int(match[1] or -1), int(match[2] or 1)


def settings_changed_on_resume(folder: Path, config: dict[str, Any]) -> list[str]:
    """`key: before -> now` (the earlier values oldest first) for each setting a resume changed, where `config` is
    the run's config.yaml, which holds only the latest and which the comparison groups the run by. The run's length
    and IGNORED_KEYS aside; a config kept before a resume that does not read is named as unreadable."""
    earlier: dict[str, list[str]] = {}
    for path in configs_before_resumes(folder):
        before = _settings_or_none(path)
        if before is None:
            earlier[f"{path.name} (unreadable)"] = []
            continue
        for key in _changed_keys(before, config):
            value = yaml_value(before.get(key, ABSENT))
            if value not in earlier.setdefault(key, []):
                earlier[key].append(value)
    return [
        f"{key}: {' -> '.join([*values, yaml_value(config.get(key, ABSENT))])}" if values else key
        for key, values in earlier.items()
    ]


def _settings_or_none(path: Path) -> dict[str, Any] | None:
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return resolved_config(config) if isinstance(config, dict) else None


def _changed_keys(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return [
        key
        for key in {**before, **after}
        if not ignored_key(key, RESUME_NOTE_IGNORED_KEYS)
        and repr(before.get(key, ABSENT)) != repr(after.get(key, ABSENT))
    ]
