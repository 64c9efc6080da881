"""The Ray executor against the in-process reference: same losses and rewards (bfloat16 and float32 rollouts),
dashboard metrics in the Prometheus export, recovery from killed actors, and a resume from the checkpoint of a
failed run.

Each train_ray call starts a Ray Train group and eleven actor processes (30-40 s here, most of it their start-up),
so the tests share runs: the module's bfloat16 Ray run serves three tests, the float32 in-process run two, and one
run is killed, restarted, failed and resumed."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import NamedTuple

import pytest
from ray_fixture import METRICS_PORT, RAY_TIMEOUT_S, one_thread, random_model, ray_session, tiny_config  # noqa: F401

from maskfocus.actors.grafana import dashboard
from maskfocus.actors.metrics import METRICS
from maskfocus.config import RunConfig
from maskfocus.learner.loop import KEEP_WAITING
from maskfocus.run_io import read_metrics
from maskfocus.run_state import latest_checkpoint

COMPARED = ("reward/mean", "reward/std", "loss/total", "loss/policy", "loss/kl", "loss/ratio_mean", "loss/grad_norm")
TIME_BREAKDOWN = (
    "perf/rollout_seconds",
    "perf/reward_seconds",
    "perf/backpressure_seconds",
    "perf/queue_wait_seconds",
    "perf/learner_seconds",
    "perf/weight_sync_seconds",
    "perf/weight_load_seconds",
    "perf/iteration_seconds",
)


def with_dtype(config: RunConfig, dtype: str) -> RunConfig:
    return config.model_copy(update={"model": config.model.model_copy(update={"dtype": dtype})})


class LocalRuns(NamedTuple):
    """The in-process reference runs and their configs."""

    float32_config: RunConfig
    float32_dir: Path
    bfloat16_config: RunConfig
    bfloat16_dir: Path


@pytest.fixture(scope="module")
def runs(random_model, tmp_path_factory):  # noqa: F811
    """In-process runs, the references of the Ray runs (1 rollout, 1 reward, 1 learner worker, max_staleness 0):
    2 iterations in bfloat16 (on a CPU without native bfloat16 its sampling is 5-8x slower: 84 s of setup on an
    AVX2-only guest with 3), 5 in float32 (the failure test kills actors in three of them, and Ctrl-C stops its
    resume after the fourth or fifth)."""
    import torch

    from maskfocus.trainer import train_local

    out = tmp_path_factory.mktemp("runs")
    # Constant learning rate: the schedule then does not depend on num_iterations (the resumed runs).
    config = tiny_config(random_model, out, optim={"final_lr_fraction": 1.0}, train={"checkpoint_every": 2})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the Ray workers' thread count: equal float results
    try:
        float32 = config.model_copy(update={"train": config.train.model_copy(update={"num_iterations": 5})})
        bfloat16 = with_dtype(config, "bfloat16")
        bfloat16 = bfloat16.model_copy(update={"train": bfloat16.train.model_copy(update={"num_iterations": 2})})
        for dtype, run_config in (("float32", float32), ("bfloat16", bfloat16)):
            (out / dtype).mkdir()
            train_local(run_config, out / dtype, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    return LocalRuns(float32, out / "float32", bfloat16, out / "bfloat16")


class PrometheusScraper:
    """Polls a Prometheus text export in a thread and keeps every series name it has seen."""

    def __init__(self, port: int, interval: float = 0.5):
        self.url, self.interval = f"http://127.0.0.1:{port}/metrics", interval
        self.names: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def scrape(self) -> None:
        try:
            text = urllib.request.urlopen(self.url, timeout=5).read().decode()
        except OSError:
            return
        for line in text.splitlines():
            if line and not line.startswith("#"):
                self.names.add(line.split("{")[0].split(" ")[0])

    def _poll(self) -> None:
        while not self.stop.is_set():
            self.scrape()
            self.stop.wait(self.interval)

    def missing(self, metrics: list[str]) -> list[str]:
        """The metrics (names as in actors/metrics.py) with no series yet (Ray exports them as ray_<name>...)."""
        return [name for name in metrics if not any(seen.startswith(f"ray_{name}") for seen in self.names)]

    def __enter__(self) -> PrometheusScraper:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(RAY_TIMEOUT_S)


@pytest.fixture(scope="module")
def driver_run(ray_session, runs, tmp_path_factory):  # noqa: F811
    """train_ray on the bfloat16 config, its Prometheus export scraped while it runs; (run folder, scraper).
    Its rollout workers sample in bfloat16 from the published weights, the in-process run from its bfloat16 copy
    of the master; both learn in float32 and save the float32 weights."""
    from maskfocus.driver_run import train_ray

    ray_dir = tmp_path_factory.mktemp("ray_bfloat16")
    with PrometheusScraper(METRICS_PORT) as scraper:
        train_ray(runs.bfloat16_config, ray_dir, show_progress=False)
    return ray_dir, scraper


def test_a_bfloat16_ray_run_records_what_train_local_does(driver_run, runs):
    """Iteration 0 samples from the same base weights cast to bfloat16 on both sides: equal rollouts, rewards and
    losses. After an update the two float32 masters agree to rounding, not bit for bit, and a bfloat16 cast can
    round such a difference apart, so later rollouts may differ by a token (seen: iteration 1's reward/mean
    -0.13293 on Ray against -0.13273 in process). The float32 runs below are compared at every iteration."""
    ray_dir, _ = driver_run
    local, remote = read_metrics(runs.bfloat16_dir / "metrics.jsonl"), read_metrics(ray_dir / "metrics.jsonl")
    assert [r["iteration"] for r in remote] == [0, 1]
    assert abs(local[0]["loss/total"]) > 0  # a reward that varies: the comparison means something
    for key in COMPARED:
        assert remote[0][key] == pytest.approx(local[0][key], rel=1e-4, abs=1e-6), key
    for a, b in zip(local, remote, strict=True):
        assert set(a) <= set(b)
        assert (b["policy_version"], b["prompt_cursor"]) == (a["policy_version"], a["prompt_cursor"])
        assert b["sync/staleness"] == 0.0 and b["sync/dropped_stale"] == 0
    for key in TIME_BREAKDOWN:
        assert all(r[key] >= 0 for r in remote), key
    assert all(r["perf/weight_load_seconds"] > 0 for r in remote[1:])  # new weights before every later rollout
    assert sorted(p.name for p in (ray_dir / "checkpoints").iterdir()) == ["iter_000001"]
    previews = [sorted(p.name for p in (run / "images").glob("*.png")) for run in (runs.bfloat16_dir, ray_dir)]
    assert previews[1] == previews[0] == ["iter_000000.png", "iter_000001.png"]  # drawn by the rollout worker


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_the_final_model_of_a_bfloat16_run_is_the_float32_master(request, runs, executor):
    """Rollouts in bfloat16, learner and final model folder in float32: the folder equals the last checkpoint."""
    import torch
    from safetensors.torch import load_file

    run_dir = runs.bfloat16_dir if executor == "local" else request.getfixturevalue("driver_run")[0]
    saved = load_file(str(next((run_dir / "model" / "transformer").glob("*.safetensors"))))
    last = load_file(str(latest_checkpoint(run_dir) / "transformer.safetensors"))
    assert saved.keys() == last.keys()
    assert all(tensor.dtype == torch.float32 and torch.equal(tensor, last[name]) for name, tensor in saved.items())
    # float32 master weights after an update are not all bfloat16-representable (a bfloat16 learner's would be)
    assert any(not torch.equal(t, t.to(torch.bfloat16).float()) for t in saved.values())


def test_dashboard_metrics_appear_in_the_prometheus_export(driver_run):
    """Every metric of an on-policy run without failures (all but the redone / dropped counters and the stale batches'
    behaviour gauge) is scraped while it runs or right after (counters, histograms and the driver's gauges stay in
    the export)."""
    _, scraper = driver_run
    absent = ("maskfocus_redone", "maskfocus_dropped_stale", "maskfocus_behaviour_log_ratio")
    expected = [name for name in METRICS if name not in absent]
    deadline = time.monotonic() + 30
    while scraper.missing(expected) and time.monotonic() < deadline:
        time.sleep(1)
        scraper.scrape()
    assert not scraper.missing(expected), f"not in http://127.0.0.1:{METRICS_PORT}/metrics: {scraper.missing(expected)}"
    assert "ray_maskfocus_rollout_images_total" in scraper.names
    assert "ray_maskfocus_reward_latency_seconds_bucket" in scraper.names
    # The Grafana dashboard (deploy/grafana/maskfocus.json) queries the series under the names Ray exports.
    queried = set(re.findall(r"ray_maskfocus_[a-z_]+", json.dumps(dashboard())))
    histograms = [name for name, spec in METRICS.items() if spec.boundaries]
    # a gauge, a counter's `_total`, a histogram's `_bucket`, `_sum` and `_count` (its quantiles and its mean)
    assert len(queried) == len(METRICS) + 2 * len(histograms)
    parts = ("", "_total", "_bucket", "_sum", "_count")
    exported = {name: {f"ray_{name}{part}" for part in parts} & scraper.names for name in expected}
    assert all(queried & {f"ray_{name}{part}" for part in parts} <= exported[name] for name in expected), queried


def assert_equals_local(records: list[dict], local_dir: Path, iterations: int | None = None) -> None:
    """Each iteration learned once, with the in-process run's prompts, versions, rewards and losses (float32:
    rollouts agree at every iteration); `iterations`: compare with the local run's first ones only."""
    local = read_metrics(local_dir / "metrics.jsonl")[:iterations]
    assert [r["iteration"] for r in records] == [r["iteration"] for r in local]
    for a, b in zip(local, records, strict=True):
        assert (b["policy_version"], b["prompt_cursor"]) == (a["policy_version"], a["prompt_cursor"])
        for key in COMPARED:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["iteration"], key)


def kill_in_flight(
    monkeypatch,
    ray,
    rollout_at: tuple[int, ...] = (),
    reward_at: tuple[int, ...] = (),
    handed_out: list[tuple[str, int]] | None = None,
) -> list[tuple[str, int]]:
    """Make the driver ray.kill (restartable) its rollout actor right after handing it an attempt at an iteration
    in `rollout_at`, and its reward actor right after handing it a score of an iteration in `reward_at`: the calls
    fail mid-flight. Each entry kills once; an iteration listed twice is killed on its first two attempts.
    Returns the kills so far, as (role, iteration); `handed_out` gets every call, killed or not, likewise."""
    from ray import ObjectRef

    from maskfocus.driver import RayRun

    killed: list[tuple[str, int]] = []
    pending = {"rollout": list(rollout_at), "reward": list(reward_at)}
    seen: set[ObjectRef] = set()  # the calls already looked at (the dispatch methods see every call still in flight)
    dispatch_rollouts, dispatch_scores = RayRun.dispatch_rollouts, RayRun.dispatch_scores

    def kill_new_calls(role: str, calls: dict, actors: list, index_of) -> None:
        for ref, attempt in calls.items():
            if ref not in seen:
                seen.add(ref)
                if handed_out is not None:
                    handed_out.append((role, attempt.iteration))
                if attempt.iteration in pending[role]:
                    pending[role].remove(attempt.iteration)
                    killed.append((role, attempt.iteration))
                    ray.kill(actors[index_of(attempt)], no_restart=False)

    def rollouts_then_kill(self) -> None:
        dispatch_rollouts(self)
        kill_new_calls("rollout", self.rolling, self.rollouts.actors, lambda attempt: attempt.rollout_index)

    def scores_then_kill(self) -> None:
        dispatch_scores(self)
        kill_new_calls("reward", self.scoring, self.rewards.actors, lambda attempt: attempt.reward_index)

    monkeypatch.setattr(RayRun, "dispatch_rollouts", rollouts_then_kill)
    monkeypatch.setattr(RayRun, "dispatch_scores", scores_then_kill)
    return killed


def record_queued_items(monkeypatch) -> list:
    """The items the driver puts into the batch queue without waiting (batches, the keep-waiting word), in order."""
    import maskfocus.driver as driver

    queued, put_now = [], driver.put_now

    def recording(batches, item, timeout_s):
        queued.append(item)
        return put_now(batches, item, timeout_s)

    monkeypatch.setattr(driver, "put_now", recording)
    return queued


def test_killed_actors_are_restarted_and_redone_until_one_is_dead_for_good_then_the_resume_stops_on_ctrl_c(
    ray_session,  # noqa: F811
    runs,
    tmp_path,
    monkeypatch,
):
    """With ray.max_restarts 1: the rollout actor killed during iteration 1 and the reward actor killed during
    iteration 2 are restarted (the rollout worker reloaded) and their batches redone (iteration 2's from its
    trajectory); the reward actor killed again
    during iteration 3 has no restart left: the run stops with a clear error and a checkpoint of the last learned
    iteration, written on the way out (checkpoint_every is past the run). Also the test of `--resume` on Ray: the
    resumed run continues at the checkpoint's iteration, policy version, prompt cursor and running counts, and its
    records equal the in-process run's; and of Ctrl-C on Ray, which stops the resumed run. (Two Ray runs less than
    testing the restarts, the failure and Ctrl-C apart: each cost 35-40 s on a 2-core machine, 55 s on a slower
    one. tests/test_driver_steps.py stops a run on an iteration's failure count. No kill comes
    at iteration 0: in one try a reward actor killed there did not fail its call, which was not redone; the actor
    may still have been starting, with the call queued for it.)"""
    from maskfocus.driver_run import train_ray
    from maskfocus.stopping import RunStopped

    config, local_dir = runs.float32_config, runs.float32_dir
    ray_settings = config.ray.model_copy(update={"max_restarts": 1})
    failing = config.model_copy(
        update={"ray": ray_settings, "train": config.train.model_copy(update={"checkpoint_every": 1000})}
    )
    handed_out: list[tuple[str, int]] = []
    killed = kill_in_flight(monkeypatch, ray_session, rollout_at=(1,), reward_at=(2, 3), handed_out=handed_out)
    queued = record_queued_items(monkeypatch)
    expected = r"(?s)reward worker 0 is dead for good \(ray.max_restarts=1\).*--resume"
    with pytest.raises(RuntimeError, match=expected) as error:
        train_ray(failing, tmp_path, show_progress=False)
    assert killed == [("rollout", 1), ("reward", 2), ("reward", 3)]
    # the learner was told to keep waiting when each killed worker was held, and when the two restarted came back
    assert queued.count(KEEP_WAITING) >= 5
    # iteration 1 sampled twice and scored once (its rollout worker was killed: seen when the rollout returns, no
    # score is wasted on it); iteration 2 sampled once and scored twice (only its reward worker was killed: the same
    # trajectory is scored again)
    assert [handed_out.count(("rollout", i)) for i in range(3)] == [1, 2, 1]
    assert [handed_out.count(("reward", i)) for i in range(3)] == [1, 1, 2]
    assert f"--resume {tmp_path}" in str(error.value)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["sync/redone"] for r in records] == [0, 1, 2]
    # the restarted rollout worker was reloaded before its redo (a base-weights rollout would be dropped as stale)
    assert all(r["sync/dropped_stale"] == 0 for r in records)
    assert_equals_local(records, local_dir, iterations=3)  # a redone batch is the lost one; none is learned twice
    # iteration 3 samples from version 3 (max_staleness 0), so iteration 2 was learned before the failure
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["iter_000002"]
    state = json.loads((tmp_path / "checkpoints" / "iter_000002" / "state.json").read_text())
    assert (state["policy_version"], state["prompt_cursor"]) == (3, 3 * config.rollout.prompts_per_iteration)
    monkeypatch.undo()
    # The resume, of a run made longer, is stopped by Ctrl-C after its first record (iteration 3): no new rollouts,
    # the queued batches are learned, the last is checkpointed off the checkpoint_every schedule, and RunStopped
    # names the `--resume` command.
    longer = config.model_copy(update={"train": config.train.model_copy(update={"num_iterations": 6})})
    interrupt_after_record(monkeypatch, iteration=3)
    with pytest.raises(RunStopped, match=f"stopped on SIGINT with .*; resume from iter_.* --resume {tmp_path}") as stop:
        train_ray(longer, tmp_path, resume=True, show_progress=False)
    assert stop.value.exit_code == 130
    resumed = read_metrics(tmp_path / "metrics.jsonl")
    iterations = [r["iteration"] for r in resumed]
    assert iterations == list(range(len(iterations))) and 4 <= len(iterations) < 6
    assert f"with {len(iterations)} of 6 iterations learned;" in str(stop.value)
    assert [r["sync/redone"] for r in resumed] == [0, 1, 2] + [2] * (len(resumed) - 3)  # 3's failure: not redone
    assert_equals_local(resumed, local_dir, iterations=len(resumed))
    assert latest_checkpoint(tmp_path).name == f"iter_{iterations[-1]:06d}"
    assert not (tmp_path / "model").exists()


def interrupt_after_record(monkeypatch, iteration: int) -> None:
    """SIGINT (Ctrl-C) to this process right after the Ray driver writes the record of `iteration`."""
    import os
    import signal

    from maskfocus.driver import RayRun

    write_record = RayRun.write_record

    def write_then_interrupt(self, record):
        write_record(self, record)
        if record["iteration"] == iteration:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RayRun, "write_record", write_then_interrupt)


def test_a_stop_collects_the_record_that_the_loops_last_poll_already_took(ray_session, runs):  # noqa: F811
    """The run loop always has one `next_update` call in flight, and that call takes the next record from the
    store. A stop (or failure) must log that record: otherwise the learner's checkpoint is an iteration ahead of
    metrics.jsonl (seen once with `ray job stop`). So must the records a learner published before it died. And the
    scored batches next in order go to the learner before the stop item."""
    import time

    import ray

    from maskfocus.driver import POLL_S, Attempt, RayRun
    from maskfocus.learner.loop import QueuedBatch
    from maskfocus.learner.weight_store import WeightStore

    class Stopped:
        alive = False

        def join(self, timeout):
            pass

    class Pool:
        def kill(self):
            pass

    from ray.util.queue import Queue

    store = ray.remote(WeightStore).options(num_cpus=0).remote()
    batches = Queue(maxsize=2, actor_options={"num_cpus": 0})
    try:
        run = RayRun.__new__(RayRun)  # only what stop_early touches
        run.config, run.collective, run.rollouts, run.rewards = runs.float32_config, False, Pool(), Pool()
        run.store, run.batches = store, batches
        run.scored, run.redo, run.rolling, run.sampled, run.scoring = {}, [], {}, [], {}
        logged = []
        run.on_update = lambda update: logged.append(update and update[2]["iteration"])
        run.pending_update = store.next_update.remote(10 * POLL_S)
        for version, iteration in ((1, 7), (2, 8), (3, 9)):  # 8 and 9 published before the learner died
            ray.get(store.publish.remote(version, None, {"iteration": iteration}), timeout=30)
        run.stop_early(Stopped())
        assert [iteration for iteration in logged if iteration is not None] == [7, 8, 9]
        assert run.pending_update is None and batches.qsize() == 0  # no stop item for a dead learner

        # a learner still learning the queued batches past ray.timeout_s in all is not cut off: the wait is for the
        # next record, not a fixed total
        import threading

        class Learning:
            alive = True

            def join(self, timeout):
                pass

        learning, logged[:] = Learning(), []
        base = runs.float32_config
        run.config = base.model_copy(update={"ray": base.ray.model_copy(update={"timeout_s": 2.0})})

        def publish_then_die():
            for version, iteration in ((4, 10), (5, 11), (6, 12), (7, 13)):
                time.sleep(1.2)  # 4.8 s in all, past the 2 s timeout
                ray.get(store.publish.remote(version, None, {"iteration": iteration}), timeout=30)
            time.sleep(0.3)
            learning.alive = False

        # a batch scored in order, held in the driver while the queue was full, goes to the learner before the stop
        # item (it was thrown away, and redone by the resume); one behind an iteration still in flight cannot
        run.scored = {14: (QueuedBatch(14, 0, []), 0.0), 16: (QueuedBatch(16, 0, []), 0.0)}
        run.rolling = {"ref": Attempt(15, 0, 7, None)}
        run.enqueue_wait, run.observe_queue = {}, lambda: None
        thread = threading.Thread(target=publish_then_die)
        thread.start()
        run.stop_early(learning)
        thread.join()
        assert [iteration for iteration in logged if iteration is not None] == [10, 11, 12, 13]
        assert batches.qsize() == 2 and batches.get(timeout=30).iteration == 14
        assert batches.get(timeout=30) is None and list(run.scored) == [16]  # then the stop item
    finally:
        batches.shutdown()
        ray.kill(store)


def nan_clip(folder: Path, out: Path) -> Path:
    """A copy of the CLIP folder `folder` with every weight NaN: a reward model gone wrong on every reward worker."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(folder, out)
    weights = out / "open_clip_model.safetensors"
    save_file({name: torch.full_like(t, float("nan")) for name, t in load_file(str(weights)).items()}, str(weights))
    return out


def test_a_ray_run_whose_rewards_stay_nan_stops_with_a_checkpoint_of_its_unchanged_weights(
    ray_session,  # noqa: F811
    random_model,  # noqa: F811
    tmp_path,
):
    """Every group's reward NaN (a CLIP reward model with NaN weights): each group is skipped, so no optimizer step
    is taken. After train.max_nonfinite_iterations such iterations the run fails with a message that says so (a
    resume would not help), and its stop checkpoints the last learned iteration: weights as they were, still finite
    (a diverged loss writes none: tests/learner/test_loop.py)."""
    from safetensors.torch import load_file

    from maskfocus.divergence import NAN_REWARD_KEY
    from maskfocus.driver_run import train_ray
    from maskfocus.stopping import RunFailed

    clip = nan_clip(random_model.parent / "clip", tmp_path / "nan_clip")
    rewards = [{"name": "geneval", "mode": "partial"}, {"name": "clip", "model": str(clip)}]
    config = tiny_config(
        random_model, tmp_path, rewards=rewards, train={"num_iterations": 6, "max_nonfinite_iterations": 2}
    )
    run_dir = tmp_path / "run"
    with pytest.raises(RunFailed, match=r"every group's reward was NaN in iterations 0-1: nothing was learned"):
        train_ray(config, run_dir, show_progress=False)
    records = read_metrics(run_dir / "metrics.jsonl")
    iterations = [r["iteration"] for r in records]
    assert iterations[:2] == [0, 1] and iterations == list(range(len(iterations))) and len(iterations) < 6
    assert all(r[NAN_REWARD_KEY] == 1.0 for r in records)
    checkpoint = latest_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.name == f"iter_{iterations[-1]:06d}"
    saved = load_file(str(checkpoint / "transformer.safetensors"))
    base = load_file(str(next((random_model / "transformer").glob("*.safetensors"))))
    assert saved.keys() == base.keys()
    assert all(t.isfinite().all() and t.equal(base[name].to(t.dtype)) for name, t in saved.items())
