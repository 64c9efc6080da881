"""maskfocus/run_io.py's reward curve: the moving average against a loop, which series it draws, and the per-tag
panel (tests/test_run_io.py: the run folder's other files)."""

from __future__ import annotations

import pytest
from PIL import Image

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
