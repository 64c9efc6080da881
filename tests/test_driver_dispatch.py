"""The Ray driver's bookkeeping of iterations over many turns, with fake workers and a fake learner: dispatch, the
iteration order of the queue, and the redo of a batch the learner dropped (no Ray is started)."""

from __future__ import annotations

import itertools
import queue as queue_lib
from types import SimpleNamespace

import pytest

from maskfocus.actors.pool import WorkerPool
from maskfocus.learner.loop import QueuedBatch

_refs = itertools.count()


def _call(*args) -> int:
    """What a fake actor method's `.remote` returns: a fresh hashable stand-in for an ObjectRef."""
    return next(_refs)


class FakeWorker:
    load_weights = SimpleNamespace(remote=_call)
    sample_split = score_split = SimpleNamespace(
        options=lambda **options: SimpleNamespace(remote=lambda *a: (_call(), _call()))
    )


class FakeQueue:
    """The bounded batch queue the learner takes from."""

    def __init__(self, capacity: int):
        self.items: list[QueuedBatch] = []
        self.capacity = capacity

    def put(self, item: QueuedBatch, block: bool = True) -> None:
        if len(self.items) >= self.capacity:
            raise queue_lib.Full
        self.items.append(item)

    def qsize(self) -> int:
        return len(self.items)


class FakePrompts:
    cursor = 0

    def take(self, count: int) -> list[dict]:
        self.cursor += count
        return [{"prompt": "a red circle"}] * count


def fake_run(max_staleness: int, queue_capacity: int = 4):
    """A RayRun with one rollout and one reward worker whose calls finish within the turn they start."""
    from maskfocus.driver import RayRun

    run = RayRun.__new__(RayRun)
    run.config = SimpleNamespace(
        ray=SimpleNamespace(queue_capacity=queue_capacity, max_staleness=max_staleness, timeout_s=60.0),
        rollout=SimpleNamespace(prompts_per_iteration=1),
    )
    run.rollouts, run.rewards = WorkerPool([FakeWorker()]), WorkerPool([FakeWorker()])
    run.prompts, run.metadata, run.next_iteration, run.end = FakePrompts(), {}, 0, 1000
    run.version, run.weights, run.collective = 0, [object()], False
    run.redo, run.rolling, run.sampled, run.scoring, run.scored = [], {}, [], {}, {}
    run.preview_loads, run.enqueue_wait = {}, {}
    run.batches, run.metrics = FakeQueue(queue_capacity), SimpleNamespace(record=lambda *args: None)
    return run


REPORTED_VERSION: dict[int, int] = {}
"""What each fake rollout's version ref holds (`ray.get` patched to read it)."""


def learned_after(run, turns: int, restart_at: int) -> int:
    """Drive `turns` turns: the rollout of iteration `restart_at` comes from a restarted worker (base weights, version
    0), which the learner drops as too stale, with every batch queued behind it; the learner takes one batch every
    third turn, and each drop goes back to the driver as a redo (as `on_update` does). Returns the version reached."""
    sampled_with: dict[int, int] = {}
    for turn in range(turns):
        run.dispatch_rollouts()
        for ref, attempt in list(run.rolling.items()):
            restarted = attempt.iteration == restart_at and restart_at not in sampled_with
            sampled_with[attempt.iteration] = 0 if restarted else attempt.version
            REPORTED_VERSION[ref] = attempt.version  # the driver does not see the restart: the learner drops it
            run.on_sampled(ref)
        run.dispatch_scores()
        for ref, attempt in list(run.scoring.items()):
            del run.scoring[ref]
            run.rewards.release(attempt.reward_index)
            run.scored[attempt.iteration] = (QueuedBatch(attempt.iteration, 0, [None]), 0.0)
        run.enqueue()
        if turn % 3 == 0 and run.batches.items:
            item = run.batches.items.pop(0)
            stale = run.version - sampled_with[item.iteration] > run.config.ray.max_staleness
            if item.iteration != run.version or stale:
                run.redo.append(item.iteration)
            else:
                run.version += 1
    return run.version


@pytest.mark.parametrize("max_staleness", [0, 1, 4, 8])
def test_batches_dropped_by_the_learner_are_redone_and_the_run_goes_on_whatever_max_staleness(
    max_staleness, monkeypatch
):
    """With max_staleness + 1 at least the driver's limit of iterations held (queue capacity + one per worker), the
    redone iterations, counted against that limit, used to fill it: the redo waited for room that only the redo
    could make, and the run stopped learning at the restarted worker's iteration."""
    import maskfocus.driver as driver

    monkeypatch.setattr(driver, "put_now", lambda batches, item, timeout_s: batches.put(item, block=False))
    monkeypatch.setattr(driver, "queue_size", lambda batches, timeout_s: batches.qsize())
    monkeypatch.setattr(driver.ray, "get", lambda ref, timeout: REPORTED_VERSION[ref])
    run = fake_run(max_staleness, queue_capacity=4)
    turns = 300
    learned = learned_after(run, turns, restart_at=30)
    assert learned >= 30 + 20, f"learning stopped at iteration {learned}; redo {sorted(run.redo)}"
    assert learned <= turns // 3 + 1


def test_a_scored_batch_waits_in_the_driver_while_an_earlier_iteration_is_in_flight(monkeypatch):
    """With two rollout workers (max_staleness >= 1) iteration 5 can finish scoring before 4: queued first, the
    learner (which takes iterations in order) would drop it as out of order and it would be redone. Each place an
    earlier iteration can be (sampling, waiting for a reward worker, scoring, to be redone) holds 5 back."""
    import maskfocus.driver as driver
    from maskfocus.driver import Attempt

    monkeypatch.setattr(driver, "put_now", lambda batches, item, timeout_s: batches.put(item, block=False))
    monkeypatch.setattr(driver, "queue_size", lambda batches, timeout_s: batches.qsize())
    earlier = Attempt(4, 0, 3, None)
    for where in ("rolling", "sampled", "scoring", "redo"):
        run = fake_run(max_staleness=1)
        run.scored = {5: (QueuedBatch(5, 0, [None]), 0.0)}
        if where == "rolling":
            run.rolling["ref"] = earlier
        elif where == "sampled":
            run.sampled.append(earlier)
        elif where == "scoring":
            run.scoring["ref"] = earlier
        else:
            run.redo.append(4)
        run.enqueue()
        assert run.batches.items == [] and list(run.scored) == [5], where
    run = fake_run(max_staleness=1)
    run.scored = {5: (QueuedBatch(5, 0, [None]), 0.0), 4: (QueuedBatch(4, 0, [None]), 0.0)}
    run.enqueue()
    assert [item.iteration for item in run.batches.items] == [4, 5] and not run.scored
