"""The Ray executor against the in-process reference: same losses and rewards, and resume from a checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
from ray_fixture import one_thread, random_model, ray_session, tiny_config  # noqa: F401

from maskfocus.run_io import read_metrics

COMPARED = ("reward/mean", "reward/std", "loss/total", "loss/policy", "loss/kl", "loss/ratio_mean", "loss/grad_norm")


@pytest.fixture(scope="module")
def runs(random_model, tmp_path_factory):  # noqa: F811
    """3 iterations in process and on Ray (1 rollout, 1 reward, 1 learner worker, max_staleness 0)."""
    import torch

    from maskfocus.trainer import train_local

    out = tmp_path_factory.mktemp("runs")
    # Constant learning rate: the schedule then does not depend on num_iterations (the resume test's first leg).
    config = tiny_config(random_model, out, optim={"final_lr_fraction": 1.0}, train={"checkpoint_every": 2})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the Ray workers' thread count: equal float results
    try:
        (out / "local").mkdir()
        train_local(config, out / "local", show_progress=False)
    finally:
        torch.set_num_threads(threads)
    return config, out / "local", out / "ray"


def test_first_three_iterations_equal_train_local(ray_session, runs):  # noqa: F811
    from maskfocus.driver import train_ray

    config, local_dir, ray_dir = runs
    ray_dir.mkdir()
    train_ray(config, ray_dir, show_progress=False)
    local, remote = read_metrics(local_dir / "metrics.jsonl"), read_metrics(ray_dir / "metrics.jsonl")
    assert [r["iteration"] for r in remote] == [0, 1, 2]
    assert any(abs(r["loss/total"]) > 0 for r in local)  # a reward that varies: the comparison means something
    for a, b in zip(local, remote, strict=True):
        assert set(a) <= set(b)
        assert (b["policy_version"], b["prompt_cursor"]) == (a["policy_version"], a["prompt_cursor"])
        assert b["sync/staleness"] == 0.0 and b["sync/dropped_stale"] == 0
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["iteration"], key)
    for key in ("perf/rollout_seconds", "perf/reward_seconds", "perf/queue_wait_seconds", "perf/learner_seconds"):
        assert all(r[key] >= 0 for r in remote), key
    assert (ray_dir / "model" / "transformer").is_dir()
    assert sorted(p.name for p in (ray_dir / "checkpoints").iterdir()) == ["iter_000001", "iter_000002"]


def test_resume_continues_from_the_checkpoint_iteration_and_prompt_cursor(ray_session, runs):  # noqa: F811
    from maskfocus.driver import train_ray

    config, local_dir, ray_dir = runs
    if not (ray_dir / "checkpoints" / "iter_000001").is_dir():
        pytest.skip("needs the run of test_first_three_iterations_equal_train_local")
    resumed = ray_dir.with_name("resumed")
    shutil.copytree(ray_dir, resumed, ignore=shutil.ignore_patterns("iter_000002", "ray_train", "model"))
    records = read_metrics(resumed / "metrics.jsonl")[:2]  # as if the run had stopped after iteration 1
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    state = json.loads((resumed / "checkpoints" / "iter_000001" / "state.json").read_text())
    assert state["prompt_cursor"] == 2 * config.rollout.prompts_per_iteration and state["policy_version"] == 2
    train_ray(config, resumed, resume=True, show_progress=False)
    after = read_metrics(resumed / "metrics.jsonl")
    assert [r["iteration"] for r in after] == [0, 1, 2]
    expected = read_metrics(local_dir / "metrics.jsonl")[2]
    assert after[2]["prompt_cursor"] == expected["prompt_cursor"]
    assert after[2]["policy_version"] == expected["policy_version"]
    for key in COMPARED:
        assert after[2][key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
