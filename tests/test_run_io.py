"""Run folders: a new run never writes into a folder that already holds one; the reward curve and its averages."""

from __future__ import annotations

import pytest
from PIL import Image

from maskfocus.config import ConfigError, config_from_dict
from maskfocus.run_io import MetricsLog, RecentReward, moving_average, new_run_folder, plot_reward_curve


def test_new_run_folder_writes_the_config_and_refuses_a_folder_that_holds_a_run(tmp_path):
    config = config_from_dict({"train": {"out_dir": str(tmp_path)}})
    folder = new_run_folder(config, "first")
    assert (folder / "config.yaml").is_file()
    assert new_run_folder(config, "first") == folder  # nothing logged yet: the same name may be reused
    log = MetricsLog(folder / "metrics.jsonl")
    log.write({"iteration": 0})
    log.close()
    with pytest.raises(ConfigError, match=r"already holds a run.*--resume"):
        new_run_folder(config, "first")
    assert (folder / "metrics.jsonl").read_text().count("\n") == 1  # the earlier run's records are untouched


def test_recent_reward_is_the_mean_of_the_last_window_and_skips_non_finite_rewards():
    recent = RecentReward(window=3)
    assert recent.postfix({}) == {}
    shown = [recent.postfix({"reward/mean": value}) for value in (0.1, 0.2, float("nan"), 0.3, 0.7)]
    assert shown[1] == {"reward": "0.150"} and shown[2] == {"reward": "0.150"}
    assert shown[-1] == {"reward": f"{(0.2 + 0.3 + 0.7) / 3:.3f}"}


def test_moving_average_matches_a_loop_over_each_window():
    values = [0.0, 1.0, 2.0, 6.0, 1.0]
    expected = []
    for j in range(len(values)):
        window = values[max(0, j - 2) : j + 1]
        expected.append(sum(window) / len(window))
    assert moving_average(values, 3) == pytest.approx(expected)
    assert moving_average(values, 1) == values


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
