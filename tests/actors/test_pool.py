"""The worker pool's view of Ray actor failures: an actor whose constructor raised is reported by its cause."""

from __future__ import annotations

import pytest
from ray_fixture import RAY_TIMEOUT_S, tiny_config

from maskfocus.actors.pool import WorkerPool, creation_failure, make_actors
from maskfocus.actors.rollout_worker import RolloutWorker


@pytest.mark.parametrize("broken", ["model folder", "negative prompt"])
def test_an_actor_whose_constructor_raised_is_reported_by_its_exception_and_not_restarted(
    ray_session, random_model, tmp_path, broken
):
    """A rollout worker whose model folder is gone (the CLI checks the folder first, but a node may lack it), and one
    whose negative prompt the model cannot read: an exception of two lines keeps both."""
    import ray
    from ray.exceptions import ActorDiedError

    if broken == "model folder":
        config = tiny_config(tmp_path / "nowhere", tmp_path)
        expected = f"maskfocus.models.base.ModelLoadError: model folder not found: {tmp_path / 'nowhere'}"
    else:
        config = tiny_config(random_model, tmp_path, sampler={"negative_prompt": "blurry zebra", "num_steps": 4})
        expected = "maskfocus.models.tokenizer.UnknownWordError: sampler.negative_prompt: prompt 'blurry zebra' uses"
    pool = WorkerPool(make_actors(RolloutWorker, 1, config, num_cpus=0, max_restarts=2))
    try:
        with pytest.raises(ActorDiedError) as raised:
            ray.get(pool.actors[0].sample.remote([], 0), timeout=RAY_TIMEOUT_S)
        cause = creation_failure(raised.value)
        assert cause.startswith(expected) and ("\nKnown words: " in cause) == (broken == "negative prompt")
        with pytest.raises(ActorDiedError) as again:  # max_restarts does not bring it back: the driver's probe says so
            ray.get(pool.actors[0].__ray_ready__.remote(), timeout=RAY_TIMEOUT_S)
        assert creation_failure(again.value) == cause
    finally:
        pool.kill()


def test_other_errors_are_not_creation_failures():
    from ray.exceptions import ActorDiedError, ActorUnavailableError

    assert creation_failure(ActorDiedError()) is None  # died while running, cause unknown
    assert creation_failure(ActorUnavailableError("restarting", None)) is None
    assert creation_failure(ValueError("x")) is None


def test_each_actor_of_a_pool_is_built_with_its_index_as_its_worker_tag(ray_session):
    """The per-worker gauges (actors/metrics.py PER_WORKER) tell a pool's workers apart by this index."""
    import ray

    class Tagged:  # defined here: Ray ships it by value (a test module is not importable on its workers)
        def __init__(self, name: str, worker: int = -1):
            self.built = (name, worker)

        def built_with(self) -> tuple[str, int]:
            return self.built

    pool = WorkerPool(make_actors(Tagged, 3, "rollout", num_cpus=0))
    try:
        built = ray.get([actor.built_with.remote() for actor in pool.actors], timeout=RAY_TIMEOUT_S)
        assert built == [("rollout", 0), ("rollout", 1), ("rollout", 2)]
    finally:
        pool.kill()


def kill_mid_call(ray, actor) -> None:
    """What the driver sees: a call in flight fails because its actor was killed (Ray then restarts the actor)."""
    from ray.exceptions import RayActorError

    call = actor.hang.remote()
    ray.kill(actor, no_restart=False)
    with pytest.raises(RayActorError):
        ray.get(call, timeout=RAY_TIMEOUT_S)


def probe_until_settled(ray, watch, limit_s: float) -> None:
    """What the driver's loop does with a RestartWatch: wait on its probes, hand each answer to it, check it."""
    import time

    stop = time.monotonic() + limit_s
    while watch.watched():
        assert time.monotonic() < stop, "the watch neither brought the worker back nor gave up"
        ready, _ = ray.wait(watch.refs(), num_returns=1, timeout=0.2) if watch.refs() else ([], [])
        for ref in ready:
            watch.on_ready(ref)
        watch.check()
        time.sleep(0.0 if ready else 0.1)


def test_a_killed_actor_goes_back_to_its_pool_once_it_answers_and_a_slow_restart_is_named(ray_session, tmp_path):
    """The driver holds a failed worker until its readiness probe answers (actors/restarts.py), and stops the run
    when it does not answer in time: a restart that outlasts the wait must say so, not hang. (Here Ray queues the
    probe until the restart ends; where it refuses it at once, the watch probes again.)"""
    import time

    import ray

    from maskfocus.actors.restarts import RestartWatch

    class Restartable:  # defined here: Ray ships it by value (a test module is not importable on its workers)
        """Its restarts, not its first start, take `restart_s` once `slow_file` exists."""

        def __init__(self, slow_file: str, restart_s: float, worker: int = -1):
            from pathlib import Path

            if Path(slow_file).exists():
                time.sleep(restart_s)

        def hang(self) -> None:
            time.sleep(600)

        def pid(self) -> int:
            import os

            return os.getpid()

    slow_file, restart_s = tmp_path / "slow", 8.0
    pool = WorkerPool(make_actors(Restartable, 1, str(slow_file), restart_s, num_cpus=0, max_restarts=2))
    try:
        first = ray.get(pool.actors[0].pid.remote(), timeout=RAY_TIMEOUT_S)
        kill_mid_call(ray, pool.actors[0])
        watch = RestartWatch(RAY_TIMEOUT_S, 2, collective=False, keep_waiting=lambda: None)
        watch.watch("rollout", pool, 0)
        assert pool.acquire() is None
        probe_until_settled(ray, watch, RAY_TIMEOUT_S)
        assert pool.acquire() == 0
        pool.release(0)
        second = ray.get(pool.actors[0].pid.remote(), timeout=RAY_TIMEOUT_S)
        assert second != first  # the restarted process answers
        slow_file.touch()
        kill_mid_call(ray, pool.actors[0])
        started, impatient = time.monotonic(), RestartWatch(1.0, 2, collective=False, keep_waiting=lambda: None)
        impatient.watch("rollout", pool, 0)
        with pytest.raises(RuntimeError, match="^rollout worker 0 did not take calls again within 1 s"):
            probe_until_settled(ray, impatient, RAY_TIMEOUT_S)
        assert time.monotonic() - started < restart_s - 2.0  # gave up at its own deadline, not the restart's end
        pool.back(0)  # as a fresh watch starts from a released worker
        watch.watch("rollout", pool, 0)
        probe_until_settled(ray, watch, RAY_TIMEOUT_S)
        assert ray.get(pool.actors[0].pid.remote(), timeout=RAY_TIMEOUT_S) not in (first, second)
    finally:
        pool.kill()


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError])
def test_a_stop_or_failure_while_the_reward_pool_is_made_kills_the_rollout_pool_made_before_it(
    tmp_path, monkeypatch, stop
):
    """Ctrl-C, or no room for the reward workers, after the rollout workers exist: the caller gets no pools to kill,
    so the rollout workers ran on until the driver process ended."""
    import maskfocus.actors.pool as pool

    made: list[str] = []
    killed: list[str] = []

    def fake_make_actors(role: type, num: int, *args, **options) -> list[str]:
        if role.__name__ == "RewardWorker":
            raise stop("while the reward pool is made")
        made.extend(f"{role.__name__}-{index}" for index in range(num))
        return made[-num:]

    monkeypatch.setattr(pool, "make_actors", fake_make_actors)
    monkeypatch.setattr(pool.ray, "kill", lambda actor, no_restart: killed.append(actor))
    config = tiny_config(tmp_path / "model", tmp_path, ray={"num_rollout_workers": 2})
    with pytest.raises(stop, match="while the reward pool is made"):
        pool.role_pools(config, "run")
    assert made == ["RolloutWorker-0", "RolloutWorker-1"] and killed == made


def test_rollout_workers_that_never_join_the_weight_group_give_an_error_that_says_so(monkeypatch):
    """Ray's own timeout said only 'Get timed out: some object(s) not ready', after up to half an hour."""
    from ray.exceptions import GetTimeoutError

    import maskfocus.actors.cluster as cluster
    import maskfocus.actors.pool as pool_module

    def never_ready(refs, timeout):
        assert refs == ["join-1", "join-2"] and timeout == 90.0
        raise GetTimeoutError("Get timed out: some object(s) not ready.")

    monkeypatch.setattr(pool_module.ray, "get", never_ready)
    monkeypatch.setattr(cluster, "free_resources_note", lambda: "; free now: {'CPU': 0.5}")
    with pytest.raises(RuntimeError) as raised:
        pool_module.join_weight_group(["join-1", "join-2"], 90.0)
    assert str(raised.value) == (
        "the rollout workers did not join the weight broadcast group within 90 s (ray.timeout_s): a worker waiting "
        "for the resources it asks for never starts; free now: {'CPU': 0.5}"
    )
    assert isinstance(raised.value.__cause__, GetTimeoutError)
