"""The driver's book of the rollout workers' weight receives under the collective transport (`ray.weight_transport:
collective`): every rollout worker takes part in each of the learner's broadcasts, and the driver starts their
receive calls when the learner announces a version."""

from __future__ import annotations

import ray
from ray import ObjectRef
from ray.actor import ActorHandle


class WeightReceives:
    """Receive calls started and not yet collected, each with the iteration of the update it carries (-1: the
    starting weights). One user, RayRun: a class of its own to keep the driver's event loop readable."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, ObjectRef]] = []

    def start(self, actors: list[ActorHandle], version: int, iteration: int) -> None:
        """Every rollout worker takes part in the learner's broadcast of `version`."""
        self.pending += [(iteration, actor.receive_weights.remote(version)) for actor in actors]

    def check(self, timeout_s: float) -> None:
        """Raise the error of a receive that has failed (a layout mismatch), without waiting for those still running:
        called every turn of the driver's loop, so such a run stops at once rather than at the next learned record
        (after a resume's first broadcast none may come). The pending receives are dropped with it: the stop that
        follows collects the learner's records, and must not raise this error again before the learner's stop item
        is queued."""
        if not self.pending:
            return
        refs = [ref for _, ref in self.pending]
        finished, _ = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
        for ref in finished:
            try:
                ray.get(ref, timeout=timeout_s)
            except Exception:
                self.pending.clear()
                raise

    def collect(self, timeout_s: float) -> dict[int, float]:
        """The receives started so far have finished (the learner publishes a record after its broadcast): raise a
        receiver's error; returns the slowest receive's seconds of each update."""
        seconds: dict[int, float] = {}
        for iteration, ref in self.pending:
            took = ray.get(ref, timeout=timeout_s)
            if iteration >= 0:
                seconds[iteration] = max(seconds.get(iteration, 0.0), took)
        self.pending.clear()
        return seconds
