"""The Ray driver's steps one at a time, on a bare RayRun with fakes where a whole run would be slow: the idle check,
the final model of a resumed finished run, previews, the learner's end (failed workers:
tests/test_driver_failures.py; tests/test_driver.py runs whole Ray runs against the in-process reference;
tests/test_driver_run.py their start and end)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from driver_fakes import NoMetrics, bare_run
from ray_fixture import random_model, ray_session, tiny_config  # noqa: F401


class FinishedLearner:
    """A learner group that has ended (`error`: how) or, with `alive`, does not end."""

    def __init__(self, error: BaseException | None = None, alive: bool = False):
        self.error, self.alive = error, alive

    def join(self, timeout: float) -> None:
        pass


def test_only_empty_update_polls_for_ray_timeout_s_stop_the_run_with_the_idle_error(ray_session, tmp_path):  # noqa: F811
    """The loop always waits on a `next_update` poll that returns None every POLL_S: that is not progress, so with no
    rollout, score or update finishing the health check fires after ray.timeout_s."""
    import ray

    from maskfocus.actors.receives import WeightReceives
    from maskfocus.actors.restarts import RestartWatch
    from maskfocus.config import default_run_config
    from maskfocus.driver import RayRun
    from maskfocus.learner.weight_store import WeightStore

    class StopAfter:
        """Ends the loop should the idle check never fire."""

        def __init__(self, seconds: float):
            self.deadline = time.monotonic() + seconds

        @property
        def requested(self) -> str | None:
            return "the test's deadline" if time.monotonic() > self.deadline else None

    store = ray.remote(WeightStore).options(num_cpus=0).remote()
    try:
        run = RayRun.__new__(RayRun)  # only what the loop touches: nothing to dispatch, nothing in flight
        run.config, run.store = default_run_config({"ray": {"timeout_s": 3.0}}), store
        run.rolling, run.scoring, run.learned, run.total = {}, {}, 0, 1
        run.receives, run.restarts = WeightReceives(), RestartWatch(1.5, 0, False, keep_waiting=lambda: None)
        run.dispatch_rollouts = run.dispatch_preview = run.dispatch_scores = run.enqueue = lambda: None
        run.previews = SimpleNamespace(drawing={})
        start = run.last_event = time.perf_counter()
        idle_error = r"no rollout, score or update finished for \d+ s \(ray.timeout_s\); free on the cluster now: \d"
        with pytest.raises(RuntimeError, match=idle_error):
            run.run(FinishedLearner(alive=True), StopAfter(30.0))
        assert 3.0 < time.perf_counter() - start < 30.0
    finally:
        ray.kill(store)


def test_a_resumed_run_with_nothing_left_to_learn_ends_with_its_checkpoints_weights(random_model, tmp_path):  # noqa: F811
    """Resuming a run whose checkpoint is its last iteration: the driver learns nothing and reads no learner record,
    so its final model (saved to run/model and evaluated) must come from the checkpoint, not the base weights."""
    import torch

    from maskfocus.driver import RayRun
    from maskfocus.learner.checkpoint import resume_state
    from maskfocus.models import load_generator
    from maskfocus.run_io import save_checkpoint

    config = tiny_config(random_model, tmp_path)
    trained = load_generator(config.model).trainable_module()
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(0.01)
    state = {"prompt_cursor": 6, "num_updates": 3, "policy_version": 3, "seed": 0}
    save_checkpoint(tmp_path, config.train.num_iterations - 1, trained, None, state)
    start = resume_state(tmp_path, resume=True)
    assert start.iteration == config.train.num_iterations
    run = RayRun.__new__(RayRun)  # what current_model touches, as RayRun.__init__ sets it from `start`
    run.config = run.driver_config = config
    run.model, run.weights, run.checkpoint = None, None, start.checkpoint
    final = run.current_model().trainable_module().state_dict()
    assert final.keys() == trained.state_dict().keys()
    for name, tensor in trained.state_dict().items():
        torch.testing.assert_close(final[name], tensor, msg=name)


def test_a_resumed_runs_final_model_comes_from_the_published_weights_once_its_checkpoint_is_pruned(
    ray_session,  # noqa: F811
    random_model,  # noqa: F811
    tmp_path,
):
    """With train.keep_checkpoints the checkpoint a run resumed from is deleted once newer ones are written; the
    final model loaded it anyway, before the published weights, and the finished run failed at its very end."""
    import torch

    from maskfocus.driver import RayRun
    from maskfocus.models import load_generator

    config = tiny_config(random_model, tmp_path)
    published = {name: tensor + 0.01 for name, tensor in load_generator(config.model).transformer.state_dict().items()}
    run = RayRun.__new__(RayRun)
    run.config = run.driver_config = config
    pruned = tmp_path / "checkpoints" / "iter_000003"  # never written here: as if pruned
    run.model, run.weights, run.checkpoint = None, [ray_session.put(published)], pruned
    final = run.current_model().transformer.state_dict()
    for name, tensor in published.items():
        torch.testing.assert_close(final[name], tensor, msg=name)


def test_a_preview_goes_to_the_next_idle_rollout_worker_and_one_that_died_is_reloaded_before_its_next_call():
    """A preview takes an idle rollout worker, with the newest weights loaded first when it lacks them; a worker
    whose preview failed because it died is forgotten (its weights are the base model's after the restart); one
    whose preview raised keeps its weights."""
    from maskfocus.actors.pool import WorkerPool
    from maskfocus.driver import RayRun

    calls = []

    class Method:
        def __init__(self, name):
            self.name = name

        def remote(self, *args):
            calls.append((self.name, *args))
            return f"{self.name}-ref"

    worker = SimpleNamespace(preview=Method("preview"), load_weights=Method("load"))
    run = RayRun.__new__(RayRun)
    run.rollouts, run.version, run.weights, run.collective = WorkerPool([worker], initial_version=2), 3, ["w3"], False
    run.preview_loads = {}
    started, outcomes = [], iter([(0, True), (0, False)])
    run.previews = SimpleNamespace(
        wanted=lambda: True,
        start=lambda index, actor, version, load: started.append((index, version, load)),
        finish=lambda ref: next(outcomes),
    )
    run.dispatch_preview()
    assert calls == [("load", 3, "w3")] and started == [(0, 3, "load-ref")] and run.rollouts.idle == []
    assert run.preview_loads == {0: "load-ref"}  # its seconds go into the record of the next rollout there
    run.dispatch_preview()  # the only worker is busy: nothing more
    assert len(started) == 1
    run.on_preview("preview-ref")  # it died: reloaded before its next call
    assert run.rollouts.idle == [0] and run.rollouts.versions == [-1]
    run.rollouts.versions = [3]
    run.dispatch_preview()
    run.on_preview("preview-ref")  # it raised: its weights stay known
    assert run.rollouts.idle == [0] and run.rollouts.versions == [3] and started[-1] == (0, 3, None)


def test_a_learner_that_fails_or_hangs_after_the_last_iteration_stops_the_run_with_a_clear_error(monkeypatch):
    """Its last stage (the stop item, a last checkpoint, Ray Train's end of fit) happens after its last record."""
    import maskfocus.driver as driver
    from maskfocus.config import default_run_config
    from maskfocus.driver import RayRun

    puts = []
    run = RayRun.__new__(RayRun)
    run.config, run.current_model = default_run_config(), lambda: "final model"
    run.draw_last_preview = lambda: None
    run.batches = "the batch queue"
    monkeypatch.setattr(driver, "put_within", lambda batches, item, wait_s: puts.append((batches, item)))
    with pytest.raises(RuntimeError, match=r"learner group failed after the last iteration: OSError\('disk full'\)"):
        run.finish(FinishedLearner(error=OSError("disk full")))
    with pytest.raises(RuntimeError, match=r"learner group did not stop within 600 s \(ray.timeout_s\)"):
        run.finish(FinishedLearner(alive=True))
    assert run.finish(FinishedLearner()) == "final model"
    assert puts == [("the batch queue", None)] * 3  # the stop item, each time


def test_the_ray_driver_reports_a_non_finite_loss_and_stops_when_it_persists(tmp_path, capsys):
    """The in-process trainer's watch (tests/test_divergence.py) in the driver's record writing: train_ray turns
    Diverged into the run's failure message."""
    from maskfocus.config import default_run_config
    from maskfocus.divergence import KEY, Diverged, NonFiniteWatch
    from maskfocus.driver import RayRun
    from maskfocus.run_io import MetricsLog

    run = RayRun.__new__(RayRun)  # only what write_record touches
    run.config = default_run_config({"train.num_iterations": 10, "train.image_every": 100})
    run.counts, run.queue_depth, run.load_seconds, run.enqueue_wait = {}, 0, {}, {}
    run.last_update, run.metrics, run.run_dir = time.perf_counter(), NoMetrics(), tmp_path
    run.log = MetricsLog(tmp_path / "metrics.jsonl")
    run.nonfinite = NonFiniteWatch(patience=2)
    run.write_record({"iteration": 1, KEY: 1.0})
    assert (
        "iteration 1: the loss or its gradient was non-finite at 100% of the optimizer steps" in capsys.readouterr().out
    )
    with pytest.raises(Diverged, match="iterations 1-2"):
        run.write_record({"iteration": 2, KEY: 1.0})
    run.log.close()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2  # both written before the stop


def test_a_learned_iterations_prompts_are_let_go():
    """The driver kept every iteration's prompt rows for the whole run (about 660 bytes a prompt: some 200 MB over
    10,000 iterations of 32 prompts); a learned iteration is never redone."""
    from tqdm import tqdm

    from maskfocus.actors.receives import WeightReceives
    from maskfocus.run_io import RecentReward

    run = bare_run(collective=False)
    run.metadata[4] = ([{"prompt": "a blue square"}], 2)
    run.observe_queue = lambda: None
    run.receives, run.load_seconds, run.learned = WeightReceives(), {}, 0
    run.progress, run.recent, written = tqdm(disable=True), RecentReward(), []
    run.write_record = written.append
    run.on_update((4, None, {"iteration": 3, "reward/mean": 0.5}))
    assert run.learned == 1 and [record["iteration"] for record in written] == [3]
    assert list(run.metadata) == [4]  # the iteration in flight keeps its rows for a redo


def test_a_stop_counts_the_iterations_learned_before_this_call_too():
    """A run resumed at iteration 4 of 10 that learns 2 more stops with 6 learned, not 2 (the stop message)."""
    run = bare_run(collective=False)
    run.total, run.learned = 6, 2
    assert run.progress_words() == "6 of 10 iterations learned"
    run.end, run.total, run.learned = 1, 1, 0
    assert run.progress_words() == "0 of 1 iteration learned"


def test_closing_the_run_puts_back_the_streams_its_bar_took(monkeypatch):
    """While the bar shows, sys.stdout and sys.stderr are line streams that keep Ray's worker lines off the bar; a run
    that ended without putting them back would leave them swapped for the rest of the process (diff review)."""
    import io
    import sys

    from tqdm import tqdm

    from maskfocus.bar_output import LinesAboveBar

    real = io.StringIO()
    monkeypatch.setattr(sys, "stdout", real)
    run = bare_run(collective=False)
    run.progress = tqdm(total=10, file=io.StringIO())
    run.lines_above_bar = LinesAboveBar(run.progress)
    run.log = SimpleNamespace(close=lambda: None)
    killed = []
    run.rollouts.kill = lambda: killed.append("rollout")
    run.rewards.kill = lambda: killed.append("reward")
    assert sys.stdout is not real
    print("a worker's last line", end="")
    run.close()
    assert sys.stdout is real and real.getvalue() == "a worker's last line\n" and killed == ["rollout", "reward"]
