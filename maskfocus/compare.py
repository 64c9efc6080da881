"""Compare RL runs: final shapes-geneval scores grouped by config (mean and spread over seeds), the gain over
the base model, time per iteration, and (in compare_plot.py) the reward curves side by side.

Runs are grouped by the config keys that differ between them, the seed and output folder aside, so the seeds
of one setting form one row: `maskfocus compare runs/ablation` gives the ablation table of any set of runs.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from maskfocus.config import BUILTIN_MODEL, yaml_error_message
from maskfocus.config_saved import saved_settings_of
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
    iteration_seconds: float | None

    @property
    def seed(self) -> Any:
        return self.config.get("seed")


def _median(records: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return statistics.median(values) if values else None


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
    return RunRecord(
        folder=folder,
        config=resolved_config(config),
        curve=curve,
        metric_keys={key for r in records for key, value in r.items() if isinstance(value, (int, float))},
        final=final,
        last_iteration=max((r["iteration"] for r in records), default=None),
        learner_seconds=_median(records, "perf/learner_seconds"),
        iteration_seconds=_median(records, "perf/iteration_seconds"),
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


def check_curve_key(runs: list[RunRecord], key: str) -> None:
    """A curve key no run logged is an error that lists the keys they did log."""
    if any(run.curve for run in runs) or not any(run.metric_keys for run in runs):
        return
    logged = sorted(set().union(*(run.metric_keys for run in runs)) - {"iteration"})
    raise CompareError(f"--curve {key}: no run logged it; their metrics.jsonl hold: {', '.join(logged)}")


_ABSENT = "<absent>"


def _under(key: str, name: str) -> bool:
    """`key` is the config key `name` or lies in the section `name`."""
    return key == name or key.startswith(name + ".")


def _ignored(key: str, ignore: tuple[str, ...]) -> bool:
    return any(_under(key, name) for name in (*IGNORED_KEYS, *ignore))


def varying_keys(runs: list[RunRecord], ignore: tuple[str, ...] = ()) -> list[str]:
    """Config keys whose values are not the same in every run, in config order; seed, output folder and the keys
    (or whole sections) in `ignore` aside."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.config))
    for name in ignore:
        if not any(_under(key, name) for key in keys):
            raise CompareError(f"--ignore {name}: no such config key or section in these runs (e.g. train.executor)")
    return [
        key
        for key in keys
        if not _ignored(key, ignore) and len({repr(run.config.get(key, _ABSENT)) for run in runs}) > 1
    ]


def _has(config: dict[str, Any], prefix: str) -> bool:
    return any(_under(key, prefix) for key in config)


def label_keys(runs: list[RunRecord], keys: list[str]) -> list[str]:
    """The varying `keys`, each cut to its shortest prefix that some run lacks altogether (a reward term one run
    adds shows as `rewards.1`, not as its twenty settings)."""
    labels: dict[str, None] = {}
    for key in keys:
        parts = key.split(".")
        prefixes = (".".join(parts[:length]) for length in range(1, len(parts)))
        labels[next((p for p in prefixes if not all(_has(run.config, p) for run in runs)), key)] = None
    return list(labels)


def _show(value: Any) -> str:
    """A setting as a user writes it in YAML or `--set`: `false`, `null`, `[a, b]`."""
    if isinstance(value, list):
        return "[" + ", ".join(map(_show, value)) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _label_value(config: dict[str, Any], key: str) -> str:
    """A key's value in a group label; a whole subtree as its first three settings."""
    if key in config:
        return _show(config[key])
    if not _has(config, key):
        return _ABSENT
    children = [(k.removeprefix(key + "."), v) for k, v in config.items() if k.startswith(key + ".")]
    shown = ", ".join(f"{k}: {_show(v)}" for k, v in children[:3])
    return "{" + shown + (", ...}" if len(children) > 3 else "}")


def common_settings(groups: list[list[RunRecord]], keys: list[str]) -> dict[str, str]:
    """For each label key, the value more groups share than any other: each label then names only where its
    group departs from these. A key with no such value (two groups, one value each) is named in every label."""
    common = {}
    for key in keys:
        counts = Counter(_label_value(group[0].config, key) for group in groups).most_common(2)
        if len(counts) == 1 or counts[0][1] > counts[1][1]:
            common[key] = counts[0][0]
    return common


def group_runs(
    runs: list[RunRecord], ignore: tuple[str, ...] = ()
) -> tuple[dict[str, list[RunRecord]], dict[str, str]]:
    """Runs grouped by every varying key (seed, output folder and `ignore` aside), each labelled by where it
    departs from the common settings (`key=value, ...`); returns the groups and the common settings."""
    keys = varying_keys(runs, ignore)
    by_values: dict[tuple[str, ...], list[RunRecord]] = {}
    for run in runs:
        by_values.setdefault(tuple(repr(run.config.get(key, _ABSENT)) for key in keys), []).append(run)
    shown = label_keys(runs, keys)
    common = common_settings(list(by_values.values()), shown)
    groups: dict[str, list[RunRecord]] = {}
    for members in by_values.values():
        values = {key: _label_value(members[0].config, key) for key in shown}
        label = ", ".join(f"{key}={value}" for key, value in values.items() if value != common.get(key))
        label = label or ("the usual settings" if shown else "same config")
        while label in groups:  # only where two settings look alike once cut short
            label += " (another)"
        groups[label] = members
    return groups, common


def group_letters(groups: dict[str, list[RunRecord]]) -> dict[str, str]:
    """Short names A, B, ... that tie the table's rows to the picture's legend."""
    return {label: chr(ord("A") + index) if index < 26 else str(index) for index, label in enumerate(groups)}


def mean_spread(values: list[float]) -> str:
    """`mean ± sample standard deviation`; one value alone; `-` for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


NO_BASE_NOTE = (
    "no base model row (gain over base: -): not every run started from the built-in model; give the base model's "
    "`maskfocus eval --summary` JSON as --base"
)


def base_summary(runs: list[RunRecord], base_path: Path | None) -> dict[str, Any] | None:
    """The base model's evaluation summary: `base_path` (a `maskfocus eval --summary` JSON) when given, else
    the built-in model's pretraining measurement when every run started from it, else None."""
    if base_path is not None:
        if not base_path.is_file():
            raise CompareError(f"--base {base_path}: no such file (expected `maskfocus eval --summary` output)")
        try:
            summary = json.loads(base_path.read_text())
        except ValueError as error:
            raise CompareError(f"--base {base_path}: not JSON ({error})") from None
        return check_summary(summary, f"--base {base_path}")
    if not runs or any(run.config.get("model.path") != BUILTIN_MODEL for run in runs):
        return None
    return builtin_base_summary()


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


def builtin_base_summary() -> dict[str, Any] | None:
    """The built-in model's shapes-geneval summary as `maskfocus pretrain` measured it (None without its report)."""
    from maskfocus.models.loading import builtin_folder
    from maskfocus.shapes.pretrain_measure import measured_evaluation

    path = builtin_folder().parent / "pretrain_report.json"
    if not path.is_file():
        return None
    report = json.loads(path.read_text())
    base = report.get("measurements", {}).get("base_model")
    if base is None or "evaluated" in base or (evaluated := measured_evaluation(report)) is None:
        return base
    return {**base, "evaluated": evaluated}


def tag_names(runs: list[RunRecord]) -> list[str]:
    """The evaluation tags in the order the first finished run lists them."""
    names: dict[str, None] = {}
    for run in runs:
        if run.final:
            names.update(dict.fromkeys(run.final.get("tags", {})))
    return list(names)


def _seeds(group: list[RunRecord]) -> str:
    return ", ".join(str(run.seed) for run in group if run.final)


def _row(label: str, group: list[RunRecord], tags: list[str], base: dict[str, Any] | None) -> str:
    finished = [run for run in group if run.final]
    overall = [run.final["overall"] for run in finished]
    gain = [value - base["overall"] for value in overall] if base else []
    per_tag = [mean_spread([run.final["tags"][tag] for run in finished if tag in run.final["tags"]]) for tag in tags]
    learner = [run.learner_seconds for run in group if run.learner_seconds is not None]
    iteration = [run.iteration_seconds for run in group if run.iteration_seconds is not None]
    cells = [label, str(len(finished)), _seeds(group), mean_spread(overall), mean_spread(gain), *per_tag]
    cells += [mean_spread(learner), mean_spread(iteration)]
    return "| " + " | ".join(cells) + " |"


def _not_like_for_like_notes(runs: list[RunRecord], base: dict[str, Any] | None) -> list[str]:
    """A note where the runs' final evaluations and the base's counted different numbers of images (different
    prompt sets or images per prompt), or sampled or judged differently (`evaluated`, where the summaries record
    it): the gain is then not like for like."""
    summaries = [run.final for run in runs if run.final] + ([base] if base else [])
    notes = []
    counts = {summary.get("num_images") for summary in summaries} - {None}
    if len(counts) > 1:
        notes.append(f"note: the evaluations scored different numbers of images ({sorted(counts)}): not like for like")
    tag_sets = {tuple(sorted(summary.get("tags", {}))) for summary in summaries}
    if len(tag_sets) > 1:
        notes.append(f"note: the evaluations scored different tags ({sorted(tag_sets)}): not like for like")
    evaluated = [recorded_evaluation(summary) for summary in summaries if isinstance(summary.get("evaluated"), dict)]
    differing = sorted(  # a key an older summary does not record is not compared
        key
        for key in {key for e in evaluated for key in e}
        if len({json.dumps(e[key], sort_keys=True) for e in evaluated if key in e}) > 1
    )
    if differing:
        notes.append(f"note: the evaluations differ in {', '.join(differing)} (their `evaluated`): not like for like")
    return ["", *notes] if notes else []


def recorded_evaluation(summary: dict[str, Any]) -> dict[str, Any]:
    """A summary's `evaluated`, as today's summaries write it: a run's final evaluation named the shapes judge
    "detector" until the forty-fourth session, and recorded the sampler's `compile`, which draws the same images."""
    evaluated = dict(summary["evaluated"])
    if evaluated.get("judge") == "detector":
        evaluated["judge"] = "shapes"
    if isinstance(evaluated.get("sampler"), dict):
        evaluated["sampler"] = {k: v for k, v in evaluated["sampler"].items() if k != "compile"}
    return evaluated


def comparison_table(
    groups: dict[str, list[RunRecord]], base: dict[str, Any] | None, common: dict[str, str] | None = None
) -> str:
    """A markdown table, one row per group (finished runs only in the scores), the base model first; below it
    the common settings the labels depart from, and the unfinished runs."""
    runs = [run for group in groups.values() for run in group]
    tags = tag_names(runs)
    header = ["config", "evaluated runs", "seeds", "overall", "gain over base", *tags]
    header += ["learner s/iter", "iteration s/iter"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    if base:
        base_tags = [f"{base['tags'][tag]:.3f}" if tag in base.get("tags", {}) else "-" for tag in tags]
        cells = ["base model", "-", "-", f"{base['overall']:.3f}", "-", *base_tags, "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    letters = group_letters(groups)
    lines += [_row(f"{letters[label]}: {label}", group, tags, base) for label, group in groups.items()]
    lines += _not_like_for_like_notes(runs, base)
    if base is None:
        lines += ["", NO_BASE_NOTE]
    if common:
        usual = ", ".join(f"{key}={value}" for key, value in common.items())
        lines += ["", f"the usual settings (the value most rows share; each row names where it departs): {usual}"]
    unfinished = [run for run in runs if not run.final]
    if unfinished:
        lines.append("")
        for run in unfinished:
            logged = "no iteration logged" if run.last_iteration is None else f"last iteration {run.last_iteration}"
            where = f"{run.folder}, {logged}"
            lines.append(f"no final evaluation (eval/summary.json) yet: {where}")
    return "\n".join(lines) + "\n"
