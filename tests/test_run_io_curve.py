"""maskfocus/run_io.py's reward curve: the moving average against a loop, which series it draws, and the per-tag
panel (tests/test_run_io.py: the run folder's other files)."""

from __future__ import annotations

import pytest
from PIL import Image

import maskfocus.reward_curve as reward_curve
from maskfocus.reward_curve import lone_points
from maskfocus.run_io import moving_average, plot_reward_curve, shown_reward_series


def test_moving_average_matches_a_loop_over_each_window():
    values = [0.0, 1.0, 2.0, 6.0, 1.0]
    expected = []
    for j in range(len(values)):
        window = values[max(0, j - 2) : j + 1]
        expected.append(sum(window) / len(window))
    assert moving_average(values, 3) == pytest.approx(expected)
    assert moving_average(values, 1) == values


def test_a_lone_reward_term_equal_to_the_mean_is_not_drawn_under_it():
    """One term of weight 1 is the mean: its curve lay hidden under the mean's, with a legend entry of its own."""
    keys = ("reward/geneval_partial", "reward/clip", "reward/mean")
    alone = [{"iteration": i, "reward/geneval_partial": 0.1 * i, "reward/mean": 0.1 * i} for i in range(3)]
    assert shown_reward_series(alone, keys) == ["reward/mean"]
    weighted = [dict(r, **{"reward/mean": 0.5 * r["reward/geneval_partial"]}) for r in alone[1:]]
    assert shown_reward_series(weighted, keys) == ["reward/geneval_partial", "reward/mean"]
    both = [dict(r, **{"reward/clip": 0.3}) for r in alone]
    assert shown_reward_series(both, keys) == list(keys)


def test_reward_curve_adds_a_per_tag_panel_only_when_the_records_hold_tags(tmp_path):
    plain = [{"iteration": i, "reward/mean": 0.1 * i} for i in range(5)]
    tagged = [
        dict(r, **{"reward/tag/counting": 0.2} if r["iteration"] % 2 else {"reward/tag/colors": 0.9}) for r in plain
    ]
    plot_reward_curve(plain, tmp_path / "plain.png")
    plot_reward_curve(tagged, tmp_path / "tagged.png")
    plain_width = Image.open(tmp_path / "plain.png").size[0]
    tagged_width = Image.open(tmp_path / "tagged.png").size[0]
    assert tagged_width > 1.5 * plain_width  # a second panel beside the first


def test_a_tag_seen_in_one_iteration_is_drawn_as_a_dot_and_a_long_series_as_before(tmp_path, monkeypatch):
    """A series of one point (or of points between NaN gaps) was a line without a marker: in the legend, drawn
    nowhere."""
    import matplotlib.pyplot as plt

    close, figures = plt.close, []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at its lines
    records = [{"iteration": i, "reward/mean": 0.1 * i, "reward/tag/colors": 0.2 * i} for i in range(5)]
    records[3]["reward/tag/counting"] = 0.5
    plot_reward_curve(records + [{"iteration": 5, "reward/mean": float("nan")}], tmp_path / "curve.png")
    curve_panel, tag_panel = figures[0].axes
    lines = {line.get_label(): line for line in (*curve_panel.get_lines(), *tag_panel.get_lines())}
    lone = lines["counting (10-point mean)"]
    assert lone.get_marker() == "o" and lone.get_markevery() == [0] and lone.get_markersize() > 0
    for long_run in ("colors (10-point mean)", "reward/mean (each iteration)", "reward/mean (10-point mean)"):
        assert lines[long_run].get_marker() == "None" and lines[long_run].get_linestyle() == "-"
    close(figures[0])
    nan = float("nan")
    assert lone_points([1.0, nan, 2.0, 3.0, nan, 4.0]) == [0, 5] and lone_points([1.0, 2.0]) == []


def test_every_reward_term_is_drawn_not_only_the_usual_ones(tmp_path, monkeypatch):
    """A term outside the fixed colours (hps, a strict GenEval term) gets a curve too; batch statistics and the
    per-tag rewards are not terms."""
    record = {
        "reward/hps": 0.2,
        "reward/geneval_binary_strict": 0.4,
        "reward/clip": 0.3,
        "reward/mean": 0.35,
        "reward/std": 0.1,
        "reward/nan_groups": 0.0,
        "reward/nan_group_fraction": 0.0,
        "reward/zero_adv_group_fraction": 0.5,
        "reward/tag/counting": 0.2,
    }
    records = [{"iteration": i, **record} for i in range(4)]
    terms = reward_curve.reward_term_keys(records)
    assert terms == ["reward/clip", "reward/geneval_binary_strict", "reward/hps"]
    colours = reward_curve.term_colours(terms)
    assert len(set(colours.values())) == 4 and colours["reward/mean"] == "tab:blue"
    drawn = []
    real = reward_curve._plot_series
    monkeypatch.setattr(
        reward_curve, "_plot_series", lambda ax, rs, key, *a, **k: drawn.append(key) or real(ax, rs, key, *a, **k)
    )
    reward_curve.plot_reward_curve(records, tmp_path / "curve.png")
    assert drawn == [*terms, "reward/mean", "reward/tag/counting"]
