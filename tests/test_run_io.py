"""Run folders: a new run never writes into a folder that already holds one."""

from __future__ import annotations

import pytest

from maskfocus.config import ConfigError, config_from_dict
from maskfocus.run_io import MetricsLog, RecentReward, new_run_folder


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
