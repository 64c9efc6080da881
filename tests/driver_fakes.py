"""Fakes of the Ray driver's parts for the tests of its steps (tests/test_driver_steps.py,
tests/test_driver_failures.py): a RayRun at a known state with one fake worker per role, no Ray started."""

from __future__ import annotations

from types import SimpleNamespace


class NoMetrics:
    def record(self, *args, **kwargs) -> None:
        pass


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
    run.told_to_keep_waiting = 0
    """How often the learner was told to keep waiting (RayRun.keep_learner_waiting: its own test puts to a queue)."""

    def keep_waiting() -> None:
        run.told_to_keep_waiting += 1

    run.restarts = RestartWatch(run.config.ray.timeout_s / 2, run.config.ray.max_restarts, collective, keep_waiting)
    run.redo, run.rolling, run.sampled, run.scoring, run.scored, run.failures = [], {}, [], {}, {}, {}
    run.counts, run.metadata = {"sync/redone": 0, "sync/dropped_stale": 0}, {3: ([{"prompt": "a red circle"}], 1)}
    run.next_iteration, run.end, run.version, run.weights, run.version_offset = 4, 10, 3, None, 0
    run.preview_loads = {}
    return run


def actor_unavailable(actor):
    from ray.exceptions import ActorUnavailableError

    return ActorUnavailableError("The actor was restarted", actor._actor_id.binary())
