"""The run folder's reward-curve PNG: the training reward (and each reward term) per iteration with a moving average,
beside the reward of each prompt tag (re-exported by maskfocus.run_io, the run folder's I/O)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def moving_average(values: list[float], window: int) -> list[float]:
    """Mean of each value and the up to `window - 1` values before it."""
    return [
        sum(values[max(0, j - window + 1) : j + 1]) / len(values[max(0, j - window + 1) : j + 1])
        for j in range(len(values))
    ]


REWARD_STATISTICS = frozenset(
    {"reward/mean", "reward/std", "reward/zero_adv_group_fraction", "reward/nan_groups", "reward/nan_group_fraction"}
)
"""The reward/* metrics that describe the batch's rewards rather than hold one term's (maskfocus.scoring)."""

TERM_COLOURS = {
    "reward/geneval_binary": "tab:green",
    "reward/geneval_partial": "tab:olive",
    "reward/geneval_graded": "tab:cyan",
    "reward/clip": "tab:purple",
}
"""Fixed colours of the usual terms; any other term (hps, a strict GenEval term) takes the next of OTHER_COLOURS."""

OTHER_COLOURS = ("tab:orange", "tab:red", "tab:brown", "tab:pink", "tab:gray")


def reward_term_keys(records: list[dict[str, Any]]) -> list[str]:
    """The reward/<term> keys of the records (each term of the run's `rewards`), the known terms first."""
    keys = {key for r in records for key in r if key.startswith("reward/") and not key.startswith("reward/tag/")}
    terms = keys - REWARD_STATISTICS
    return [key for key in TERM_COLOURS if key in terms] + sorted(terms - TERM_COLOURS.keys())


def term_colours(terms: list[str]) -> dict[str, Any]:
    """A colour per term, the mean's blue last; terms beyond the fixed ones cycle through OTHER_COLOURS."""
    others = [term for term in terms if term not in TERM_COLOURS]
    extra = {term: OTHER_COLOURS[index % len(OTHER_COLOURS)] for index, term in enumerate(others)}
    return {**{term: TERM_COLOURS.get(term) or extra[term] for term in terms}, "reward/mean": "tab:blue"}


def shown_reward_series(records: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    """The reward series of `keys` the records hold, less a lone reward term equal to reward/mean in every record
    (one term of weight 1: its curve lay hidden under the mean's, with a legend entry of its own)."""
    present = [key for key in keys if any(r.get(key) is not None for r in records)]
    terms = [key for key in present if key != "reward/mean"]
    lone_term_is_the_mean = len(terms) == 1 and all(r.get(terms[0]) == r.get("reward/mean") for r in records)
    return ["reward/mean"] if "reward/mean" in present and lone_term_is_the_mean else present


def _plot_series(ax, records: list[dict[str, Any]], key: str, colour, label: str, window: int, raw: bool) -> None:
    """One metric over iterations (where present): faint raw values when `raw`, and its moving average."""
    points = [(r["iteration"], r[key]) for r in records if r.get(key) is not None]
    if not points:
        return
    xs, ys = zip(*points, strict=True)
    if raw:
        ax.plot(
            xs, ys, color=colour, alpha=0.25, linewidth=0.8, label=f"{label} (each iteration)", **_lone_point_marks(ys)
        )
    averaged = moving_average(list(ys), window)
    ax.plot(xs, averaged, color=colour, label=f"{label} ({window}-point mean)", **_lone_point_marks(averaged))


def lone_points(values: list[float]) -> list[int]:
    """The indices of the finite values with no finite neighbour: a line through them draws nothing (a tag seen in
    one iteration, or a value between NaN gaps)."""
    finite = [math.isfinite(value) for value in values]
    return [
        index
        for index, shown in enumerate(finite)
        if shown and not any(finite[neighbour] for neighbour in (index - 1, index + 1) if 0 <= neighbour < len(finite))
    ]


def _lone_point_marks(values: list[float]) -> dict[str, Any]:
    """Line style that puts a dot on each lone point, so that the series is seen; none for a series without one."""
    lone = lone_points(values)
    return {"marker": "o", "markersize": 4, "markevery": lone} if lone else {}


def plot_reward_curve(records: list[dict[str, Any]], path: Path, window: int = 10) -> None:
    """reward/mean per iteration with a moving average, and each reward term present; beside it, when the
    prompts carry tags, the training reward of each tag (its own iterations only), to see which tags learn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tag_keys = sorted({key for r in records for key in r if key.startswith("reward/tag/")})
    fig, axes = plt.subplots(1, 2 if tag_keys else 1, figsize=(13 if tag_keys else 7, 3.5), dpi=110, squeeze=False)
    colours = term_colours(reward_term_keys(records))  # the mean last, on top
    for key in shown_reward_series(records, tuple(colours)):
        _plot_series(axes[0, 0], records, key, colours[key], key, window, raw=True)
    for index, key in enumerate(tag_keys):
        _plot_series(
            axes[0, 1], records, key, plt.get_cmap("tab10")(index), key.removeprefix("reward/tag/"), window, raw=False
        )
    for ax in axes[0]:
        ax.set_xlabel("iteration")
        ax.set_ylabel("reward")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # a short run's ticks were 0.5, 1.5, ...
    axes[0, 0].legend(fontsize=7, loc="lower right")
    if tag_keys:  # the tags' legend beside their panel, where it hides no curve
        axes[0, 1].set_title("training reward per tag", fontsize=9)
        axes[0, 1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
