"""Run folders: a new run never writes into a folder that already holds one."""

from __future__ import annotations

import pytest

from maskfocus.config import ConfigError, config_from_dict
from maskfocus.run_io import MetricsLog, new_run_folder


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
