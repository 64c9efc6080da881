"""benchmarks/ablation.py: the `--jobs VARIANT:SEED` parser and its errors; the table and picture from runs."""

from __future__ import annotations

import argparse

import pytest
from support import load_benchmark, make_run


@pytest.fixture(scope="module")
def ablation():
    return load_benchmark("ablation")


def test_jobs_parse_into_variant_and_seed(ablation):
    assert ablation.parse_job("random:2") == ("random", 2)
    assert ablation.parse_job("critical_remask_trajectory:0") == ("critical_remask_trajectory", 0)


@pytest.mark.parametrize("text", ["bogus:1", "random", "random:", "random:two", ":1"])
def test_bad_jobs_name_what_is_allowed(ablation, text):
    with pytest.raises(argparse.ArgumentTypeError, match="VARIANT:SEED") as caught:
        ablation.parse_job(text)
    assert "critical_no_router" in str(caught.value) and repr(text) in str(caught.value)


def test_table_and_picture_from_finished_runs(ablation, tmp_path):
    for seed, overall in enumerate((0.50, 0.56)):
        make_run(tmp_path / f"critical_seed{seed}", {"seed": seed}, overall)
    make_run(tmp_path / "all_seed0", {"selection.strategy": "all"}, 0.52, learner_s=8.0)
    table = ablation.write_table(tmp_path, [0, 1], 0.44, t_over_k=4.0)
    assert "| critical | 2 | 0.530 ± 0.042 | 0.090 ± 0.042 | 2.000 ± 0.000 | 5.000 ± 0.000 |" in table
    assert "| random | 0 | - | - | - | - |" in table
    assert "Learner time all-T / critical-K: 4.00; T/K = 4.00; off by 0%" in table
    assert (tmp_path / "ablation.md").read_text() == table
    picture = ablation.draw_comparison(tmp_path)
    assert picture == tmp_path / "compare.png" and picture.stat().st_size > 10_000
    assert ablation.draw_comparison(tmp_path / "critical_seed0" / "eval") is None  # no runs there: no picture


def test_the_predicted_learner_ratio_is_the_rollouts_T_over_K(ablation, tmp_path):
    assert ablation.steps_ratio(ablation.DEFAULT_CONFIG) == 12 / 3
    halved = tmp_path / "halved.yaml"
    halved.write_text(ablation.DEFAULT_CONFIG.read_text().replace("rollout:\n", "rollout:\n  num_steps: 6\n", 1))
    assert ablation.steps_ratio(halved) == 6 / 3
