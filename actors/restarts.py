"""Workers held out of their pool after a failed call until they take calls again (Ray restarting them), watched
without blocking the driver's loop.

A restart can take minutes (a node to boot, a model to load). Waiting for it in the loop froze the whole run:
no other worker's result was handled and no learner record read. Here each failed worker is held out of its pool
(`WorkerPool.hold`) and probed with Ray's `__ray_ready__` call, whose reference joins the loop's `ray.wait`; the
worker goes back to its pool once a probe answers. Calls to an actor still restarting may fail at once with
ActorUnavailableError: the probe is sent again after RETRY_S. A worker that does not answer by its deadline, or is
dead for good (its restarts used up), stops the run with a message that says which and why. The learner, waiting
for the batch a failure delays, is told to wait on (`keep_waiting`) when a worker is held and when it is back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import ray
from ray import ObjectRef
from ray.exceptions import ActorUnavailableError, RayActorError

from maskfocus.actors.cluster import free_resources_note
from maskfocus.actors.pool import WorkerPool

RETRY_S = 0.5
"""How long after a refused probe (ActorUnavailableError, answered at once) the next one is sent."""


@dataclass
class Probe:
    role: str
    pool: WorkerPool
    index: int
    deadline: float
    """time.monotonic() by which the worker must answer."""
    retry_at: float = 0.0


class RestartWatch:
    """The probes of the workers held after failures. `wait_s`: how long each may take to answer (half of
    ray.timeout_s). `keep_waiting` is called when a worker is held and when it is back: the learner's wait for the
    delayed batch (ray.timeout_s) then starts again, so it outlasts the restart and the redo after it."""

    def __init__(self, wait_s: float, max_restarts: int, collective: bool, keep_waiting: Callable[[], None]):
        self.wait_s, self.max_restarts, self.collective = wait_s, max_restarts, collective
        self.keep_waiting = keep_waiting
        self.probes: dict[ObjectRef, Probe] = {}
        self.retries: list[Probe] = []

    def watch(self, role: str, pool: WorkerPool, index: int) -> None:
        """Hold worker `index` of `pool` until it answers (a worker already watched keeps its first deadline)."""
        if any(probe.pool is pool and probe.index == index for probe in self.watched()):
            return
        pool.hold(index)
        self._send(Probe(role, pool, index, time.monotonic() + self.wait_s))
        self.keep_waiting()

    def watched(self) -> list[Probe]:
        return [*self.probes.values(), *self.retries]

    def refs(self) -> list[ObjectRef]:
        """The probes in flight, for the loop's `ray.wait`."""
        return list(self.probes)

    def __contains__(self, ref: ObjectRef) -> bool:
        return ref in self.probes

    def on_ready(self, ref: ObjectRef) -> None:
        """A probe finished: the worker goes back to its pool, or is probed again soon (still restarting); one dead
        for good raises RuntimeError."""
        probe = self.probes.pop(ref)
        try:
            ray.get(ref, timeout=self.wait_s)
        except ActorUnavailableError:
            probe.retry_at = time.monotonic() + RETRY_S
            self.retries.append(probe)
            return
        except RayActorError as dead:  # ActorDiedError: dead for good; any other actor error names it too
            raise RuntimeError(self.dead_message(probe.role, probe.index)) from dead
        probe.pool.back(probe.index)
        self.keep_waiting()

    def check(self) -> None:
        """Once a turn of the loop: raise for a worker past its deadline; send the probes that are due again."""
        now = time.monotonic()
        for probe in self.watched():
            if now > probe.deadline:
                raise RuntimeError(self.slow_message(probe.role, probe.index))
        due = [probe for probe in self.retries if probe.retry_at <= now]
        self.retries = [probe for probe in self.retries if probe.retry_at > now]
        for probe in due:
            self._send(probe)

    def dead_message(self, role: str, index: int) -> str:
        if role == "rollout" and self.collective:
            return f"rollout worker {index} died; with ray.weight_transport: collective it is not restarted"
        return f"{role} worker {index} is dead for good (ray.max_restarts={self.max_restarts})"

    def slow_message(self, role: str, index: int) -> str:
        return (
            f"{role} worker {index} did not take calls again within {self.wait_s:.0f} s of its restart (half of "
            "ray.timeout_s); raise ray.timeout_s if loading a worker takes that long, or free what it waits "
            f"for{free_resources_note()}"
        )

    def _send(self, probe: Probe) -> None:
        self.probes[probe.pool.actors[probe.index].__ray_ready__.remote()] = probe
