"""Compare RL runs: final shapes-geneval scores grouped by config (mean and spread over seeds), the gain over
the base model, time per iteration, and (in compare_plot.py) the reward curves side by side.

Runs are grouped by the config keys that differ between them, the seed and output folder aside, so the seeds
of one setting form one row: `maskfocus compare runs/ablation` gives the ablation table of any set of runs.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from maskfocus.compare_run import (
    ABSENT,
    CompareError,
    RunRecord,
    check_summary,
    ignored_key,
    key_under,
    yaml_value,
)
from maskfocus.compare_standing import run_notes, standing
from maskfocus.config import BUILTIN_MODEL


def check_curve_key(runs: list[RunRecord], key: str) -> None:
    """A curve key no run logged is an error that lists the keys they did log."""
    if any(run.curve for run in runs) or not any(run.metric_keys for run in runs):
        return
    logged = sorted(set().union(*(run.metric_keys for run in runs)) - {"iteration"})
    raise CompareError(f"--curve {key}: no run logged it; their metrics.jsonl hold: {', '.join(logged)}")


def varying_keys(runs: list[RunRecord], ignore: tuple[str, ...] = ()) -> list[str]:
    """Config keys whose values are not the same in every run, in config order; seed, output folder and the keys
    (or whole sections) in `ignore` aside."""
    keys: dict[str, None] = {}
    for run in runs:
        keys.update(dict.fromkeys(run.config))
    for name in ignore:
        if not any(key_under(key, name) for key in keys):
            raise CompareError(f"--ignore {name}: no such config key or section in these runs (e.g. train.executor)")
    return [
        key
        for key in keys
        if not ignored_key(key, ignore) and len({repr(run.config.get(key, ABSENT)) for run in runs}) > 1
    ]


def _has(config: dict[str, Any], prefix: str) -> bool:
    return any(key_under(key, prefix) for key in config)


def label_keys(runs: list[RunRecord], keys: list[str]) -> list[str]:
    """The varying `keys`, each cut to its shortest prefix that some run lacks altogether (a reward term one run
    adds shows as `rewards.1`, not as its twenty settings)."""
    labels: dict[str, None] = {}
    for key in keys:
        parts = key.split(".")
        prefixes = (".".join(parts[:length]) for length in range(1, len(parts)))
        labels[next((p for p in prefixes if not all(_has(run.config, p) for run in runs)), key)] = None
    return list(labels)


def _label_value(config: dict[str, Any], key: str) -> str:
    """A key's value in a group label; a whole subtree as its first three settings."""
    if key in config:
        return yaml_value(config[key])
    if not _has(config, key):
        return ABSENT
    children = [(k.removeprefix(key + "."), v) for k, v in config.items() if k.startswith(key + ".")]
    shown = ", ".join(f"{k}: {yaml_value(v)}" for k, v in children[:3])
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
        by_values.setdefault(tuple(repr(run.config.get(key, ABSENT)) for key in keys), []).append(run)
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
    """The seeds of the group's evaluated runs, named as seeds (`seed 0`, `seeds 0, 1, 2`): a bare `0` after the
    count of runs read as no seeds."""
    seeds = [str(run.seed) for run in group if run.final]
    if not seeds:
        return "-"
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(seeds)


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


def unlike_evaluations(runs: list[RunRecord], base: dict[str, Any] | None) -> list[str]:
    """How the runs' final evaluations and the base's differ, where they counted different numbers of images
    (different prompt sets or images per prompt), scored different tags, or sampled or judged differently
    (`evaluated`, where the summaries record it): each makes the gain not like for like. Empty where they agree."""
    summaries = [run.final for run in runs if run.final] + ([base] if base else [])
    differences = []
    counts = {summary.get("num_images") for summary in summaries} - {None}
    if len(counts) > 1:
        differences.append(f"the evaluations scored different numbers of images ({sorted(counts)})")
    tag_sets = [set(summary.get("tags", {})) for summary in summaries]
    if tag_sets and (partly := set.union(*tag_sets) - set.intersection(*tag_sets)):
        differences.append(f"the evaluations scored different tags (not every one scored {', '.join(sorted(partly))})")
    evaluated = [recorded_evaluation(summary) for summary in summaries if isinstance(summary.get("evaluated"), dict)]
    differing = sorted(  # a key an older summary does not record is not compared
        key
        for key in {key for e in evaluated for key in e}
        if len({json.dumps(e[key], sort_keys=True) for e in evaluated if key in e}) > 1
    )
    if differing:
        differences.append(f"the evaluations differ in {', '.join(differing)} (their `evaluated`)")
    return differences


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
    the common settings the labels depart from, notes on single runs, and where each unfinished run stands."""
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
    if differences := unlike_evaluations(runs, base):
        lines += ["", *(f"note: {difference}: not like for like" for difference in differences)]
    if base is None:
        lines += ["", NO_BASE_NOTE]
    if common:
        usual = ", ".join(f"{key}={value}" for key, value in common.items())
        lines += ["", f"the usual settings (the value most rows share; each row names where it departs): {usual}"]
    lines += run_notes(runs)
    unfinished = [run for run in runs if not run.final]
    if unfinished:
        lines.append("")
        lines += [f"no final evaluation (eval/summary.json) yet: {run.folder}: {standing(run)}" for run in unfinished]
    return "\n".join(lines) + "\n"
