"""The dashboard metrics table and recorder (their export to Prometheus is tested in tests/test_driver.py)."""

from __future__ import annotations

import re

import pytest
from ray.util.metrics import Counter, Gauge, Histogram

from maskfocus.actors.metrics import METRICS, RunMetrics


def test_every_metric_is_recorded_as_its_kind_under_a_valid_prometheus_name():
    metrics = RunMetrics("unit")
    for name, spec in METRICS.items():
        assert re.fullmatch(r"maskfocus_[a-z_]+", name), name
        assert spec.kind in (Gauge, Counter, Histogram) and "run" in spec.tag_keys
        assert (spec.kind is Histogram) == bool(spec.boundaries), name
        extra = {tag: "load" if tag == "stage" else "0" for tag in spec.tag_keys if tag != "run"}
        metrics.record(name, 0.5, **extra)
        metrics.record(name, 0.0, **extra)  # a counter ignores 0 (Ray's Counter.inc refuses it)
    assert {name: type(metric) for name, metric in metrics.made.items()} == {n: s.kind for n, s in METRICS.items()}


def test_a_metric_with_a_stage_tag_needs_it_and_unknown_names_are_refused():
    metrics = RunMetrics("unit")
    with pytest.raises(ValueError, match="stage"):
        metrics.record("maskfocus_weight_sync_seconds", 0.1)
    with pytest.raises(ValueError, match="worker"):  # a gauge each worker of a pool sets: one series per worker
        metrics.record("maskfocus_reward_mean", 0.5)
    with pytest.raises(KeyError):
        metrics.record("maskfocus_typo", 1.0)


def test_the_learner_records_the_behaviour_gauge_only_for_corrected_stale_batches():
    from maskfocus.learner.loop import _record_metrics

    class Recorder:
        def __init__(self):
            self.seen = {}

        def record(self, name, value, **tags):
            self.seen[name] = value

    base = {"sync/staleness": 1.0, "policy_version": 3, "perf/learner_seconds": 2.0}
    base |= {"perf/weight_sync_seconds": 0.1, "loss/total": 0.01, "loss/kl": 0.2}
    corrected, plain = Recorder(), Recorder()
    _record_metrics(corrected, {**base, "loss/behaviour_abs_log_ratio": 0.016}, dropped=False)
    _record_metrics(plain, base, dropped=False)
    assert corrected.seen["maskfocus_behaviour_log_ratio"] == 0.016 and corrected.seen["maskfocus_kl"] == 0.2
    assert "maskfocus_behaviour_log_ratio" not in plain.seen and set(plain.seen) <= set(METRICS)


def test_the_run_tag_is_the_folder_inside_the_output_folder(tmp_path, monkeypatch):
    """Tagged by folder name alone, ablation/seed0 and probe/seed0 wrote one series."""
    from maskfocus.actors.metrics import run_tag

    assert run_tag(tmp_path / "runs" / "ablation" / "seed0", tmp_path / "runs") == "ablation/seed0"
    monkeypatch.chdir(tmp_path)
    assert run_tag("runs/probe/seed0", "runs") == "probe/seed0"
    assert run_tag(tmp_path / "runs" / "probe" / "seed0", "runs") == "probe/seed0"  # relative out_dir, absolute run
    assert run_tag(tmp_path / "elsewhere" / "seed0", "runs") == "seed0"
