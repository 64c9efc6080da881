"""The picture of `maskfocus compare`: the training reward curve (or another logged metric) of every run, one
colour per config group, and the final per-tag scores of each group (mean, with the seed spread as error bars)
beside the base model's."""

from __future__ import annotations

import math
import statistics
import textwrap
from pathlib import Path
from typing import Any

from maskfocus.compare import group_letters, tag_names
from maskfocus.compare_run import RunRecord
from maskfocus.run_io import moving_average


def group_palette(plt, num_groups: int) -> list:
    """Distinct colours, never grey (that reads as the base model): tab10 for up to 9 groups, else tab20."""
    if num_groups <= 9:
        return [plt.get_cmap("tab10")(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]
    return [plt.get_cmap("tab20")(i) for i in range(20) if i not in (14, 15)]


def _legend_label(letter: str, label: str) -> str:
    return f"{letter}: " + textwrap.shorten(label, width=60, placeholder=" ...")


def _plot_curves(
    ax, groups: dict[str, list[RunRecord]], letters: dict[str, str], colours, window: int, key: str
) -> bool:
    """One line per run that logged `key`, the group's legend entry on its first drawn one (its first run may
    have stopped before logging); returns whether any did."""
    for index, (label, group) in enumerate(groups.items()):
        drawn_runs = [run for run in group if run.curve]
        for run_index, run in enumerate(drawn_runs):
            xs, ys = zip(*run.curve, strict=True)
            legend = _legend_label(letters[label], label) if run_index == 0 else None
            ax.plot(xs, moving_average(list(ys), window), color=colours(index), linewidth=1.2, label=legend)
    drawn = any(run.curve for group in groups.values() for run in group)
    if not drawn:
        ax.text(0.5, 0.5, f"no run has logged {key} yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("iteration")
    ax.set_ylabel(f"{key} ({window}-point mean)")
    ax.set_title("one line per run, one colour per config", fontsize=9)
    ax.grid(alpha=0.3)
    return drawn


def _plot_final(ax, groups, letters, colours, base: dict[str, Any] | None) -> bool:
    """Grouped bars per column (overall, then each tag); a tag a group was not evaluated on gets no bar."""
    runs = [run for group in groups.values() for run in group]
    columns = ["overall", *tag_names(runs)]
    finished = [(letters[k], i, g) for i, (k, g) in enumerate(groups.items()) if any(run.final for run in g)]
    bars = ([("base", None, base)] if base else []) + finished
    width = 0.8 / max(1, len(bars))
    drawn = False
    for bar_index, (letter, colour_index, data) in enumerate(bars):
        offsets = [c + (bar_index - (len(bars) - 1) / 2) * width for c in range(len(columns))]
        if colour_index is None:
            values = [data["overall"], *(data.get("tags", {}).get(tag, math.nan) for tag in columns[1:])]
            ax.bar(offsets, values, width, color="white", edgecolor="black", hatch="//", label="base model")
            continue
        finals = [run.final for run in data if run.final]
        per_column = [[f["overall"] for f in finals]]
        per_column += [[f["tags"][tag] for f in finals if tag in f["tags"]] or [math.nan] for tag in columns[1:]]
        means = [statistics.mean(values) for values in per_column]
        spreads = [statistics.stdev(values) if len(values) > 1 else 0.0 for values in per_column]
        ax.bar(offsets, means, width, yerr=spreads, capsize=2, color=colours(colour_index), label=letter)
        drawn = True
    ax.set_xticks(range(len(columns)), [c.replace("_", "\n") for c in columns], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("final score (mean ± seed spread)")
    ax.set_title("final evaluation", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return drawn


def plot_comparison(
    groups: dict[str, list[RunRecord]],
    path: Path,
    base: dict[str, Any] | None = None,
    window: int = 10,
    curve_key: str = "reward/mean",
) -> Path:
    """Write the two-panel PNG to `path` and return it; the left panel draws the runs' `curve_key` curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = group_palette(plt, len(groups))

    def colours(index: int):
        return palette[index % len(palette)]

    letters = group_letters(groups)
    columns = 2 if len(groups) > 6 else 1
    legend_inches = 0.2 + 0.16 * math.ceil(len(groups) / columns)  # the curves' legend, under the panels
    height = 4.5 + legend_inches
    fig, (curves, final) = plt.subplots(1, 2, figsize=(14, height), dpi=110)
    if _plot_curves(curves, groups, letters, colours, window, curve_key):  # no legend of nothing (matplotlib warns)
        fig.legend(fontsize=7, loc="lower left", ncols=columns, frameon=False)
    if _plot_final(final, groups, letters, colours, base) or base:
        final.legend(fontsize=7, loc="upper right")
    else:
        final.text(0.5, 0.5, "no finished run yet", ha="center", va="center", transform=final.transAxes)
    fig.tight_layout(rect=(0, legend_inches / height, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
