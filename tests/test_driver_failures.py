"""The Ray driver's handling of failed workers, on a bare RayRun with fake workers (tests/driver_fakes.py): which
iteration is redone and from where (the rollout, or the same trajectory), which worker is held until it answers
and whose weights are forgotten, how many failures stop the run, and the stop's last batches. Whole Ray runs with
killed actors: tests/test_driver.py."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
from driver_fakes import actor_unavailable, answer_probes, bare_run


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
    assert run.told_to_keep_waiting == 1  # the learner's wait for iteration 3 starts again
    answer_probes(run, monkeypatch)
    assert run.told_to_keep_waiting == 2  # and again once the worker is back, for the redo
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


@pytest.mark.parametrize("full", [False, True])
def test_the_learner_is_told_to_keep_waiting_through_the_queue_unless_it_is_full(monkeypatch, full):
    """With one worker of a role, the learner's wait for the delayed batch began before the failure, and a restart
    near half of ray.timeout_s let it time out first (learner/loop.py `_take` starts its wait again on this item).
    A full queue holds batches the learner is still to take: it is not waiting."""
    import queue as queue_lib

    import maskfocus.driver as driver
    from maskfocus.learner.loop import KEEP_WAITING

    run, puts = bare_run(collective=False, timeout_s=60.0), []
    run.batches = "the batch queue"

    def put_now(batches, item, timeout_s):
        if full:
            raise queue_lib.Full
        puts.append((batches, item, timeout_s))

    monkeypatch.setattr(driver, "put_now", put_now)
    run.keep_learner_waiting()
    assert puts == ([] if full else [("the batch queue", KEEP_WAITING, 60.0)])


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


def test_the_last_preview_says_why_it_was_not_drawn_when_every_rollout_worker_is_held(capsys):
    """A run whose only rollout worker was restarting at its end skipped its last preview without a word."""
    run = bare_run(collective=False, timeout_s=60.0)
    run.rollouts.hold(0)
    run.previews = SimpleNamespace(wanted=lambda: True, drawing={})
    started = time.monotonic()
    run.draw_last_preview()
    assert time.monotonic() - started < 1.0
    expected = "the last preview was not drawn: no rollout worker takes calls (restarting); skipped"
    assert expected in capsys.readouterr().out
