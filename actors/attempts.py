"""One try at an iteration's rollout and score in the Ray driver (maskfocus/driver.py), and which of its workers a
failure names."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import ray
from ray import ObjectRef
from ray.exceptions import ActorUnavailableError, ObjectLostError, RayActorError, RayError

from maskfocus.actors.pool import WorkerPool, names_actor

RECOVERABLE = (RayActorError, ActorUnavailableError, ObjectLostError)
"""Failures the run redoes an iteration after: a worker that died (Ray restarts it), or a trajectory lost with its
rollout worker's node before it was scored (actor tasks are not retried, so Ray cannot rebuild it)."""


@dataclass
class Attempt:
    """One try at an iteration's rollout and score; a failed try is redone from the rollout, or from its trajectory
    when only the reward worker failed."""

    iteration: int
    rollout_index: int
    version: int
    """The weights version the rollout worker holds for this rollout (after `load`)."""
    load: ObjectRef | None
    trajectory: ObjectRef | None = None
    reward_index: int = -1
    """The reward worker scoring it (-1: not handed to one yet)."""
    batch: ObjectRef | None = None


Worker = tuple[str, WorkerPool, int]
"""(role, its pool, its index there)."""


def attempt_workers(attempt: Attempt, rollouts: WorkerPool, rewards: WorkerPool) -> list[Worker]:
    """The workers the attempt has used: its rollout worker, and its reward worker once it has one."""
    workers = [("rollout", rollouts, attempt.rollout_index)]
    if attempt.reward_index >= 0:
        workers.append(("reward", rewards, attempt.reward_index))
    return workers


def fetch_errors(refs: list[ObjectRef | None], timeout_s: float) -> None:
    """Fetch a failed call's other results (their errors): Ray reports the errors nobody fetched."""
    for ref in refs:
        with contextlib.suppress(RayError):
            if ref is not None:
                ray.get(ref, timeout=timeout_s)


def named_workers(error: BaseException, workers: list[Worker]) -> list[Worker]:
    """Those of `workers` whose actor the failure names (none for a lost object)."""
    return [worker for worker in workers if names_actor(error, worker[1].actors[worker[2]])]
