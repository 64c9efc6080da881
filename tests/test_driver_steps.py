"""The Ray driver's steps one at a time, on a bare RayRun with fakes where a whole run would be slow: the idle check,
which worker a failure forgets, how many failures stop the run, the final model of a resumed finished run, the
learner's end (tests/test_driver.py runs whole Ray runs against the in-process reference; tests/test_driver_run.py
their start and end)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from ray_fixture import random_model, ray_session, tiny_config  # noqa: F401


class FinishedLearner:
    """A learner group that has ended (`error`: how) or, with `alive`, does not end."""

    def __init__(self, error: BaseException | None = None, alive: bool = False):
        self.error, self.alive = error, alive

    def join(self, timeout: float) -> None:
        pass


class NoMetrics:
    def record(self, *args, **kwargs) -> None:
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
        run.receives, run.restarts = WeightReceives(), RestartWatch(1.5, 0, False)
        run.dispatch_rollouts = run.dispatch_preview = run.dispatch_scores = run.enqueue = lambda: None
        run.previews = SimpleNamespace(drawing={})
        start = run.last_event = time.perf_counter()
        idle_error = r"no rollout, score or update finished for \d+ s \(ray.timeout_s\); free on the cluster now: \d"
        with pytest.raises(RuntimeError, match=idle_error):
            run.run(FinishedLearner(alive=True), StopAfter(30.0))
        assert 3.0 < time.perf_counter() - start < 30.0
    finally:
        ray.kill(store)


def one_worker_pool(version: int, role: str):
    """A pool of one fake worker whose calls return fresh stand-ins for object refs (its readiness probes
    `probe-<role>-<n>`)."""
    from ray import ActorID

    from maskfocus.actors.pool import WorkerPool

    probes = iter(f"probe-{role}-{n}" for n in range(100))
    actor = SimpleNamespace(
        _actor_id=ActorID.from_random(),
        sample_split=SimpleNamespace(options=lambda **options: SimpleNamespace(remote=lambda *a: (object(), object()))),
        score_split=SimpleNamespace(options=lambda **options: SimpleNamespace(remote=lambda *a: (object(), object()))),
        __ray_ready__=SimpleNamespace(remote=lambda: next(probes)),
    )
    return WorkerPool([actor], initial_version=version)


def answer_probes(run, monkeypatch, roles=("rollout", "reward")) -> None:
    """The held workers of `roles` answer their readiness probes."""
    import maskfocus.actors.restarts as restarts

    monkeypatch.setattr(restarts.ray, "get", lambda ref, timeout: None)
    for ref in run.restarts.refs():
        if ref.split("-")[1] in roles:
            run.restarts.on_ready(ref)


def bare_run(collective: bool, **ray_settings):
    """A RayRun at iteration 4 of 10, policy version 3, one rollout and one reward worker, iteration 3 in flight."""
    from maskfocus.actors.restarts import RestartWatch
    from maskfocus.config import default_run_config
    from maskfocus.driver import RayRun

    run = RayRun.__new__(RayRun)
    run.config = default_run_config({"ray": {"max_staleness": 0, **ray_settings}})
    run.collective, run.metrics = collective, NoMetrics()
    run.rollouts, run.rewards = one_worker_pool(3, "rollout"), one_worker_pool(3, "reward")
    run.restarts = RestartWatch(run.config.ray.timeout_s / 2, run.config.ray.max_restarts, collective)
    run.redo, run.rolling, run.sampled, run.scoring, run.scored, run.failures = [], {}, [], {}, {}, {}
    run.counts, run.metadata = {"sync/redone": 0, "sync/dropped_stale": 0}, {3: ([{"prompt": "a red circle"}], 1)}
    run.next_iteration, run.end, run.version, run.weights, run.version_offset = 4, 10, 3, None, 0
    run.preview_loads = {}
    return run


def actor_unavailable(actor):
    from ray.exceptions import ActorUnavailableError

    return ActorUnavailableError("The actor was restarted", actor._actor_id.binary())


@pytest.mark.parametrize("collective", [False, True])
def test_a_reward_workers_failure_scores_the_same_trajectory_again_on_a_healthy_rollout_worker(collective, monkeypatch):
    """The trajectory is intact (the driver owns it): it is scored again, not sampled again (a full rollout thrown
    away), once the reward worker answers again; the healthy rollout worker keeps its weights. With the collective
    transport, forgetting them left it waiting for a broadcast that never comes, and the run hung until the
    learner's timeout."""
    from maskfocus.driver import Attempt

    run = bare_run(collective=collective)
    attempt = Attempt(3, 0, 3, None, trajectory="trajectory-3", reward_index=run.rewards.acquire(), batch="batch-3")
    run.rewards.release(0)  # as on_scored does before it reads the failure
    run._redo_after_failure(attempt, actor_unavailable(run.rewards.actors[0]))
    run.dispatch_scores()
    assert run.scoring == {} and run.restarts.refs() == ["probe-reward-0"]  # held until it answers
    answer_probes(run, monkeypatch)
    assert run.redo == [] and run.counts["sync/redone"] == 1 and run.failures == {3: 1}
    assert run.sampled == [attempt] and (attempt.trajectory, attempt.reward_index, attempt.batch) == (
        "trajectory-3",
        -1,
        None,
    )
    assert run.rollouts.versions == [3] and run.rollouts.held == set()
    run.dispatch_scores()
    assert list(run.scoring.values()) == [attempt] and attempt.reward_index == 0  # back, it scores the trajectory


@pytest.mark.parametrize(("collective", "versions"), [(False, [-1]), (True, [3])])
def test_a_failed_preview_forgets_the_weights_only_of_a_worker_ray_restarts(collective, versions):
    """A collective rollout worker is never restarted: after a transient failure of its preview it still holds its
    weights, and forgetting them left the only worker waiting for a broadcast that needs its next rollout."""
    run = bare_run(collective=collective)
    run.previews = SimpleNamespace(finish=lambda ref: (0, True))  # the call failed: the worker may be restarted
    assert run.rollouts.acquire() == 0  # drawing the preview
    run.on_preview("preview-ref")
    assert run.rollouts.versions == versions and run.rollouts.acquire() == 0  # released either way


@pytest.mark.parametrize(("collective", "versions"), [(False, [-1]), (True, [3])])
def test_a_rollout_workers_failure_samples_the_iteration_again(collective, versions, monkeypatch):
    """The score call of a dead rollout worker's trajectory fails with that worker's actor id (checked on Ray
    2.60). Ray restarts the worker with the base weights: they are forgotten, and reloaded before its next rollout.
    A collective worker is never restarted: one that failed for good stops the run when its probe says so
    (tests/actors/test_restarts.py); one that answers again still holds its weights."""
    from maskfocus.driver import Attempt

    run = bare_run(collective=collective)
    run._redo_after_failure(Attempt(3, 0, 3, None, reward_index=0), actor_unavailable(run.rollouts.actors[0]))
    assert run.redo == [3] and run.counts["sync/redone"] == 1 and run.sampled == []
    assert run.rollouts.versions == versions and run.restarts.refs() == ["probe-rollout-0"]
    run.dispatch_rollouts()
    assert not run.rolling  # held until it answers
    answer_probes(run, monkeypatch)
    if collective:
        run.dispatch_rollouts()
        assert [a.iteration for a in run.rolling.values()] == [3]
    else:
        assert run.rollouts.acquire() == 0  # back in the pool (its reload needs published weights: none here)


def test_a_failed_rollout_is_seen_when_it_returns_and_its_worker_gets_no_new_work(monkeypatch):
    """The driver learned of a failed rollout only when its score failed: meanwhile the restarting worker was handed
    the next iteration (sampled with the base weights, or failing too) and a reward worker a doomed score."""
    import maskfocus.driver as driver

    run = bare_run(collective=False)
    run.redo, run.next_iteration = [3], 3  # iteration 3 to sample
    run.dispatch_rollouts()
    ((version_ref, attempt),) = run.rolling.items()
    fetched = []

    def get(ref, timeout):
        fetched.append(ref)
        raise actor_unavailable(run.rollouts.actors[0])

    monkeypatch.setattr(driver.ray, "get", get)
    run.on_sampled(version_ref)
    assert fetched == [version_ref, attempt.trajectory]  # the trajectory's error fetched too: none left unreported
    assert run.sampled == [] and run.redo == [3] and run.counts["sync/redone"] == 1
    assert run.rollouts.versions == [-1] and run.restarts.refs() == ["probe-rollout-0"]
    run.dispatch_rollouts()
    run.dispatch_scores()
    assert run.rolling == {} and run.scoring == {}  # held until it answers; nothing to score


def test_a_trajectory_lost_with_its_node_is_redone_from_the_rollout():
    """A rollout worker's node that dies after `sample` returned takes the trajectory with it: the score call fails
    with an ObjectLostError subclass (actor tasks are not retried, so Ray cannot rebuild it), which names no actor.
    The iteration is redone and the rollout worker, restarted elsewhere, is reloaded; it used to stop the run."""
    from ray.exceptions import ObjectReconstructionFailedError

    from maskfocus.driver import RECOVERABLE, Attempt

    lost = ObjectReconstructionFailedError("ab" * 14, None, "")
    assert isinstance(lost, RECOVERABLE)
    run = bare_run(collective=False)
    run._redo_after_failure(Attempt(3, 0, 3, None, reward_index=0), lost)
    assert run.redo == [3] and run.counts["sync/redone"] == 1
    assert run.rollouts.versions == [-1]  # forgotten: reloaded before its next rollout


@pytest.mark.parametrize(("max_staleness", "redone"), [(0, True), (3, False)])
def test_a_batch_a_restarted_rollout_worker_sampled_too_stale_is_redone_at_once(max_staleness, redone, monkeypatch):
    """A rollout worker restarted between its weight load and its rollout samples with the base weights (version
    0). Where the learner would drop that batch as too stale, it also dropped every batch queued behind it (they
    wait for the redo); the driver, which knows the version the learner will be at, redoes it as soon as the rollout
    returns, before a score is spent on it. Within max_staleness it is scored and learned as a stale batch."""
    import maskfocus.driver as driver
    from maskfocus.driver import Attempt

    run = bare_run(collective=False, max_staleness=max_staleness)
    attempt = Attempt(3, run.rollouts.acquire(), 3, None, trajectory="trajectory-ref")  # its rollout worker
    run.rolling = {"version-ref": attempt}
    monkeypatch.setattr(driver.ray, "get", lambda ref, timeout: 0)  # the version that sampled it
    run.on_sampled("version-ref")
    assert run.rollouts.versions == [-1]  # reloaded before its next rollout either way
    if redone:  # the learner learns iteration 3 at version 3: 3 versions stale, max_staleness 0
        assert run.redo == [3] and not run.sampled and run.counts["sync/dropped_stale"] == 1  # no score spent
    else:
        assert run.redo == [] and run.sampled == [attempt] and run.counts["sync/dropped_stale"] == 0


@pytest.mark.parametrize("max_restarts", [0, 2])
def test_an_iteration_that_fails_more_than_max_restarts_times_stops_the_run(max_restarts):
    """Each failure of an iteration is redone, up to ray.max_restarts; the next one stops the run and names the
    limit and the last error (tests/test_driver.py stops a real run on a worker whose restarts are used up)."""
    from maskfocus.driver import Attempt

    run = bare_run(collective=False, max_restarts=max_restarts)
    error = actor_unavailable(run.rollouts.actors[0])
    for redone in range(1, max_restarts + 1):
        run._redo_after_failure(Attempt(3, 0, 3, None, reward_index=0), error)
        assert run.redo == [3] * redone and run.counts["sync/redone"] == redone
    expected = rf"iteration 3 failed {max_restarts + 1} times \(ray.max_restarts={max_restarts}\); last error: "
    with pytest.raises(RuntimeError, match=expected + "ActorUnavailableError: .*The actor was restarted"):
        run._redo_after_failure(Attempt(3, 0, 3, None, reward_index=0), error)
    assert run.counts["sync/redone"] == max_restarts  # the failure that stops the run is not redone
    assert run.redo == [3] * (max_restarts + 1)  # unlearned: the stop that follows queues no later batch ahead of it


@pytest.mark.parametrize("failed", ["reward", "rollout"])
def test_a_worker_that_could_not_start_stops_the_run_at_once_with_its_constructors_error(failed):
    """Ray does not restart an actor whose constructor raised (tests/actors/test_pool.py): the run stops at its
    first failure, naming the worker and the exception, rather than redoing the iteration until the restarts run
    out and reporting only a dead worker."""
    from ray.exceptions import ActorDiedError

    from maskfocus.driver import Attempt

    run = bare_run(collective=False, max_restarts=2)
    error = ActorDiedError()  # the fields Ray sets from the constructor's RayTaskError
    error.actor_id = (run.rollouts if failed == "rollout" else run.rewards).actors[0]._actor_id.hex()
    error.error_msg = (
        'ray::Worker.__init__() (pid=1)\n  File "/w.py", line 3, in __init__\n    load()\n    ^^^^^^\n'
        "maskfocus.models.base.ModelLoadError: model folder not found: /x"
    )
    error._actor_init_failed = True
    expected = f"^{failed} worker 0 could not start: maskfocus.models.base.ModelLoadError: model folder not found: /x$"
    with pytest.raises(RuntimeError, match=expected):
        run._redo_after_failure(Attempt(3, 0, 3, None, reward_index=0), error)
    assert run.counts["sync/redone"] == 0 and run.restarts.refs() == []  # not redone: nothing waited for
    assert run.redo == [3]  # still unlearned, so the stop that follows queues no later batch ahead of it


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


def test_a_failure_holds_its_workers_without_blocking_the_loop_and_a_slow_one_is_named(monkeypatch):
    """The driver waited for a restarted worker inside the loop, up to half of ray.timeout_s: no other worker's
    result was handled and no learner record read meanwhile. Now the failed workers are held and probed, and the
    loop goes on; one that does not answer within half of ray.timeout_s stops the run, named, with what is free (a
    restarted actor may wait for resources, which a longer timeout would not bring)."""
    from ray.exceptions import ObjectReconstructionFailedError

    import maskfocus.actors.restarts as restarts
    from maskfocus.driver import Attempt

    monkeypatch.setattr(restarts, "free_resources_note", lambda: "; free on the cluster now: 0 CPUs")
    run = bare_run(collective=False, max_restarts=2, timeout_s=60.0)
    lost = ObjectReconstructionFailedError("ab" * 14, None, "")  # names neither worker: both are held
    started = time.monotonic()
    run._redo_after_failure(Attempt(3, 0, 3, None, reward_index=0), lost)
    assert time.monotonic() - started < 1.0 and run.redo == [3]
    assert run.restarts.refs() == ["probe-rollout-0", "probe-reward-0"]
    assert (run.rollouts.acquire(), run.rewards.acquire()) == (None, None)
    run.restarts.check()  # within the deadline: nothing to say
    answer_probes(run, monkeypatch, roles=("rollout",))
    now = time.monotonic()
    monkeypatch.setattr(restarts.time, "monotonic", lambda: now + 30.5)
    with pytest.raises(
        RuntimeError, match=r"^reward worker 0 did not take calls again within 30 s of its restart"
    ) as e:
        run.restarts.check()
    assert str(e.value).endswith("or free what it waits for; free on the cluster now: 0 CPUs")


@pytest.mark.parametrize("failed", ["reward", "rollout"])
def test_only_the_worker_the_error_names_is_held(failed):
    """A healthy worker is usually busy with its next call (the rollout worker sampling the next iteration), which a
    readiness probe waits behind: after a reward worker's failure the driver waited for the rest of that rollout,
    and one longer than half of ray.timeout_s stopped the run, saying the rollout worker had not come back from a
    restart it never had."""
    from maskfocus.driver import Attempt

    run = bare_run(collective=False, timeout_s=60.0)
    failed_actor = (run.rollouts if failed == "rollout" else run.rewards).actors[0]
    run._redo_after_failure(Attempt(3, 0, 3, None, reward_index=0), actor_unavailable(failed_actor))
    assert run.restarts.refs() == [f"probe-{failed}-0"]
    assert (run.rollouts.held, run.rewards.held) == (({0}, set()) if failed == "rollout" else (set(), {0}))
    assert (run.redo, len(run.sampled)) == (([], 1) if failed == "reward" else ([3], 0))  # scored again, or sampled


def test_a_stop_still_puts_its_stop_item_when_the_held_batches_cannot_be_queued(monkeypatch, capsys):
    """The held batches go to the learner first at a stop; a failure doing so (the queue actor gone, say) is
    reported, and the stop item, which lets the learner checkpoint and end, is still put."""
    import maskfocus.driver as driver

    run = bare_run(collective=False, timeout_s=5.0)
    run.rollouts.kill = run.rewards.kill = lambda: None
    run.pending_update, run.batches = None, "the batch queue"
    run.store = SimpleNamespace(next_update=SimpleNamespace(remote=lambda poll_s: "poll"))
    learner = SimpleNamespace(alive=True, join=lambda timeout: None)

    def gone(until):
        raise ConnectionError("the queue actor is gone")

    puts = []

    def put_within(batches, item, wait_s):
        puts.append(item)
        learner.alive = False  # it takes the stop item and ends

    run.enqueue = gone
    monkeypatch.setattr(driver, "put_within", put_within)
    monkeypatch.setattr(driver.ray, "get", lambda ref, timeout: None)  # no more records
    run.stop_early(learner)
    assert puts == [None]  # the stop item
    assert "the scored batches were not queued: ConnectionError: the queue actor is gone" in capsys.readouterr().out


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
