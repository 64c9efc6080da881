"""maskfocus/compare_plot.py: the picture of `maskfocus compare` (reward curves and final per-tag scores)."""

from __future__ import annotations

import pytest
from PIL import Image
from support import make_run

from maskfocus.compare import comparison_table, group_runs
from maskfocus.compare_run import load_run


def test_picture_leaves_out_tags_a_group_was_not_scored_on(tmp_path):
    import json

    from maskfocus.compare_plot import plot_comparison

    run = make_run(tmp_path / "a", {}, 0.5)
    (run / "eval" / "summary.json").write_text(json.dumps({"overall": 0.5, "tags": {"counting": 0.25}}))
    other = make_run(tmp_path / "b", {"seed": 1}, 0.6)
    groups, _ = group_runs([load_run(run), load_run(other)])
    picture = plot_comparison(groups, tmp_path / "c.png", {"overall": 0.4, "tags": {}})
    with Image.open(picture) as image:
        assert image.width > 1000
    table = comparison_table(groups, None)
    assert "| counting |" in table.splitlines()[0] and "| 0.250 ± nan |" not in table


def test_final_bars_of_an_unscored_tag_have_no_height(tmp_path):
    import json
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maskfocus.compare_plot import _plot_final

    only_counting = make_run(tmp_path / "a", {"selection.strategy": "random"}, 0.5)
    (only_counting / "eval" / "summary.json").write_text(json.dumps({"overall": 0.5, "tags": {"counting": 0.25}}))
    both = make_run(tmp_path / "b", {}, 0.6)  # single_object 0.7, two_object 0.5
    groups, _ = group_runs([load_run(only_counting), load_run(both)])
    fig, ax = plt.subplots()
    assert _plot_final(ax, groups, {label: label for label in groups}, lambda i: "C0", None)
    heights = [[bar.get_height() for bar in container] for container in ax.containers if hasattr(container, "patches")]
    plt.close(fig)
    # columns: overall, counting, single_object, two_object; a tag its runs were not scored on draws nothing
    assert heights[0][:2] == [0.5, 0.25] and all(math.isnan(h) for h in heights[0][2:])
    assert math.isnan(heights[1][1]) and heights[1][0] == 0.6 and heights[1][2:] == pytest.approx([0.7, 0.5])


def test_runs_without_metrics_say_so_in_the_curve_panel(tmp_path):
    """Runs that have not logged an iteration yet drew an empty, unlabelled axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maskfocus.compare_plot import _plot_curves

    logged, fresh = make_run(tmp_path / "a", {}, None), make_run(tmp_path / "b", {"seed": 1}, None, iterations=0)
    for folders, expected in (([fresh], ["no run has logged reward/mean yet"]), ([logged, fresh], [])):
        groups, _ = group_runs([load_run(folder) for folder in folders])
        fig, ax = plt.subplots()
        drawn = _plot_curves(ax, groups, {label: label for label in groups}, lambda i: "C0", 10, "reward/mean")
        assert drawn == (not expected)  # the figure's legend is drawn only over curves (matplotlib warns else)
        assert [text.get_text() for text in ax.texts] == expected
        assert len(ax.lines) == len(folders) - 1
        plt.close(fig)


def test_a_picture_of_runs_without_metrics_raises_no_matplotlib_warning(tmp_path, recwarn):
    from maskfocus.compare_plot import plot_comparison

    groups, _ = group_runs([load_run(make_run(tmp_path / "fresh", {}, None, iterations=0))])
    assert plot_comparison(groups, tmp_path / "c.png", None).is_file()
    assert [str(warning.message) for warning in recwarn] == []


def test_a_group_whose_first_run_logged_nothing_keeps_its_legend_entry(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maskfocus.compare_plot import _plot_curves

    fresh = make_run(tmp_path / "a", {"seed": 0}, None, iterations=0)  # stopped before its first record
    logged = make_run(tmp_path / "b", {"seed": 1}, None)
    groups, _ = group_runs([load_run(fresh), load_run(logged)])
    ((label, group),) = groups.items()
    assert [run.curve != [] for run in group] == [False, True]  # the first run of the group has no curve
    fig, ax = plt.subplots()
    _plot_curves(ax, groups, {label: "A"}, lambda i: "C0", 10, "reward/mean")
    assert [line.get_label() for line in ax.lines] == [f"A: {label}"]
    plt.close(fig)
