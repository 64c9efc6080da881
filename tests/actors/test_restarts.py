"""actors/restarts.py: workers held after a failure and probed without blocking the driver's loop; and the pool's
hold and back (no Ray started: the probes' answers are faked). A real restart: tests/test_driver.py (killed actors)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.exceptions import ActorDiedError, ActorUnavailableError

import maskfocus.actors.restarts as restarts
from maskfocus.actors.pool import WorkerPool
from maskfocus.actors.restarts import RestartWatch


def fake_pool(num: int) -> WorkerPool:
    """Actors whose readiness probes return `probe-<index>-<n>`."""
    counters = [iter(range(100)) for _ in range(num)]
    actors = [
        SimpleNamespace(__ray_ready__=SimpleNamespace(remote=lambda i=i: f"probe-{i}-{next(counters[i])}"))
        for i in range(num)
    ]
    return WorkerPool(actors)


def answers(monkeypatch, outcome: dict[str, BaseException | None]) -> None:
    """ray.get of a probe raises its entry in `outcome` (None: the actor answered)."""

    def get(ref, timeout):
        if (error := outcome.get(ref)) is not None:
            raise error
        return None

    monkeypatch.setattr(restarts.ray, "get", get)


def test_a_held_busy_worker_goes_back_to_idle_only_when_its_call_ended_and_it_answered():
    pool = fake_pool(2)
    assert pool.acquire() == 0
    pool.hold(0)  # failed while busy with a call (a lost object names no worker)
    pool.hold(1)
    assert pool.acquire() is None
    pool.release(0)  # its call ends: still held
    assert pool.acquire() is None and pool.idle == []
    pool.back(0)
    assert pool.acquire() == 0
    assert pool.acquire() is None  # 1 still held
    pool.back(1)
    assert pool.idle == [1]


def test_a_worker_answering_before_its_call_ends_stays_busy_until_it_does():
    pool = fake_pool(1)
    assert pool.acquire() == 0
    pool.hold(0)
    pool.back(0)
    assert pool.acquire() is None
    pool.release(0)
    assert pool.acquire() == 0


def test_a_refused_probe_is_sent_again_after_the_retry_delay_and_the_worker_comes_back(monkeypatch):
    """Calls to an actor still restarting may be refused at once (ActorUnavailableError): probing again at once
    would spin the loop. The learner is told to keep waiting when the worker is held and when it is back, not on
    a refused probe or a second failure of a worker already held."""
    pool, clock, told = fake_pool(1), [100.0], []
    monkeypatch.setattr(restarts.time, "monotonic", lambda: clock[0])
    watch = RestartWatch(30.0, 2, collective=False, keep_waiting=lambda: told.append(clock[0]))
    watch.watch("rollout", pool, 0)
    watch.watch("rollout", pool, 0)  # watched already: one probe, the first deadline
    assert watch.refs() == ["probe-0-0"] and "probe-0-0" in watch and pool.acquire() is None
    answers(monkeypatch, {"probe-0-0": ActorUnavailableError("restarting", None)})
    watch.on_ready("probe-0-0")
    assert watch.refs() == [] and told == [100.0]
    clock[0] += restarts.RETRY_S / 2
    watch.check()
    assert watch.refs() == []  # not due yet
    clock[0] += restarts.RETRY_S
    watch.check()
    assert watch.refs() == ["probe-0-1"]
    watch.on_ready("probe-0-1")
    assert watch.refs() == [] and watch.watched() == [] and pool.acquire() == 0
    assert told == [100.0, 100.0 + 1.5 * restarts.RETRY_S]


@pytest.mark.parametrize(
    ("role", "collective", "message"),
    [
        ("reward", False, "reward worker 0 is dead for good (ray.max_restarts=2)"),
        ("rollout", False, "rollout worker 0 is dead for good (ray.max_restarts=2)"),
        ("rollout", True, "rollout worker 0 died; with ray.weight_transport: collective it is not restarted"),
        ("reward", True, "reward worker 0 is dead for good (ray.max_restarts=2)"),
    ],
)
def test_a_worker_dead_for_good_stops_the_run_naming_it(monkeypatch, role, collective, message):
    pool, watch = fake_pool(1), RestartWatch(30.0, 2, collective, keep_waiting=lambda: None)
    watch.watch(role, pool, 0)
    died = ActorDiedError()
    answers(monkeypatch, {"probe-0-0": died})
    with pytest.raises(RuntimeError) as raised:
        watch.on_ready("probe-0-0")
    assert str(raised.value) == message and raised.value.__cause__ is died


def test_a_worker_refusing_probes_past_its_deadline_is_named_as_too_slow(monkeypatch):
    pool, clock = fake_pool(1), [0.0]
    monkeypatch.setattr(restarts.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(restarts, "free_resources_note", lambda: "; free on the cluster now: 0 GPUs")
    watch = RestartWatch(30.0, 2, collective=False, keep_waiting=lambda: None)
    watch.watch("rollout", pool, 0)
    answers(monkeypatch, {"probe-0-0": ActorUnavailableError("restarting", None)})
    watch.on_ready("probe-0-0")  # a retry waits: the deadline applies to it as well
    clock[0] = 30.5
    with pytest.raises(RuntimeError) as raised:
        watch.check()
    assert str(raised.value) == (
        "rollout worker 0 did not take calls again within 30 s of its restart (half of ray.timeout_s); raise "
        "ray.timeout_s if loading a worker takes that long, or free what it waits for; free on the cluster now: 0 GPUs"
    )
