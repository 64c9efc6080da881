"""Pools of Ray actors built from config, with idle tracking and the weight version each actor holds.

Roles are plain classes; `make_actors` turns one into `num` Ray actors with the resources from config.
A dead actor is restarted by Ray (`max_restarts`) with its constructor state, so the pool forgets the
weights it held (`forget`) and the driver reloads them before the actor's next batch. Calls to an actor
that is still restarting may fail at once (ActorUnavailableError), so the driver holds it out of the pool (`hold`)
until it answers again (`back`; actors/restarts.py watches it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import GetTimeoutError, RayActorError

if TYPE_CHECKING:
    from maskfocus.config import RunConfig
    from maskfocus.learner.weight_transport import WeightGroup


def make_actors(
    role: type, num: int, *args: Any, num_cpus: float, num_gpus: float = 0.0, max_restarts: int = 0
) -> list[ActorHandle]:
    """`num` actors of the plain class `role`, each built with `role(*args, worker=index)` (its index in the pool)."""
    remote = ray.remote(role).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts)
    return [remote.remote(*args, worker=index) for index in range(num)]


class WorkerPool:
    """Actors of one role: which are idle, which are held out after a failure (until they answer again), and which
    weight version each has loaded (-1 = unknown)."""

    def __init__(self, actors: list[ActorHandle], initial_version: int = 0):
        self.actors = actors
        self.versions = [initial_version] * len(actors)
        self.idle = list(range(len(actors)))
        self.busy: set[int] = set()
        self.held: set[int] = set()

    def acquire(self) -> int | None:
        """The index of an idle actor, now marked busy; None when all are busy or held."""
        if not self.idle:
            return None
        index = self.idle.pop(0)
        self.busy.add(index)
        return index

    def release(self, index: int) -> None:
        """Its call finished: idle again, unless it is held (then idle once it is `back`)."""
        assert index not in self.idle
        self.busy.discard(index)
        if index not in self.held:
            self.idle.append(index)

    def hold(self, index: int) -> None:
        """A call of actor `index` failed: handed no call until it is `back` (a busy one finishes its call first)."""
        self.held.add(index)
        if index in self.idle:
            self.idle.remove(index)

    def back(self, index: int) -> None:
        """Actor `index` answers again: idle, or busy until its call in flight finishes."""
        self.held.discard(index)
        if index not in self.busy and index not in self.idle:
            self.idle.append(index)

    def forget(self, index: int) -> None:
        """The actor died (and is being restarted): its weights are the constructor's, not a known version."""
        self.versions[index] = -1

    def kill(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)

    def __len__(self) -> int:
        return len(self.actors)


def role_pools(
    config: RunConfig, run_name: str, weight_group: WeightGroup | None = None
) -> tuple[WorkerPool, WorkerPool]:
    """The rollout and reward pools of a run, sized and resourced from `config.ray`. With a collective weight
    group the rollout workers join it (ranks 1..N; the learner is rank 0) and are never restarted, since a
    restarted actor cannot rejoin the group."""
    from maskfocus.actors.reward_worker import RewardWorker
    from maskfocus.actors.rollout_worker import RolloutWorker

    ray_config = config.ray
    rollouts = WorkerPool(
        make_actors(
            RolloutWorker,
            ray_config.num_rollout_workers,
            config,
            run_name,
            num_cpus=ray_config.rollout_cpus,
            num_gpus=ray_config.rollout_gpus,
            max_restarts=0 if weight_group is not None else ray_config.max_restarts,
        )
    )
    try:  # a failure or a stop from here on would leave the rollout pool running until the driver process ends
        if weight_group is not None:
            ranks = enumerate(rollouts.actors, 1)
            joins = [actor.join_weight_group.remote(weight_group, rank) for rank, actor in ranks]
            join_weight_group(joins, ray_config.timeout_s)
        rewards = WorkerPool(
            make_actors(
                RewardWorker,
                ray_config.num_reward_workers,
                config,
                run_name,
                num_cpus=ray_config.reward_cpus,
                num_gpus=ray_config.reward_gpus,
                max_restarts=ray_config.max_restarts,
            )
        )
    except BaseException:
        rollouts.kill()
        raise
    return rollouts, rewards


def join_weight_group(joins: list[ray.ObjectRef], timeout_s: float) -> None:
    """Wait for every rollout worker's `join_weight_group` call; past `timeout_s`, an error that says what did not
    happen and what the cluster has free (a worker waiting for a GPU never starts), not Ray's bare 'not ready'."""
    from maskfocus.actors.cluster import free_resources_note

    try:
        ray.get(joins, timeout=timeout_s)
    except GetTimeoutError as error:
        raise RuntimeError(
            f"the rollout workers did not join the weight broadcast group within {timeout_s:.0f} s (ray.timeout_s): "
            f"a worker waiting for the resources it asks for never starts{free_resources_note()}"
        ) from error


def names_actor(error: BaseException, actor: ActorHandle) -> bool:
    """Whether the actor error `error` names `actor` as the one that failed. A call whose argument came from a dead
    actor fails with that actor's error: a score call fails with the id of a rollout worker that died."""
    return getattr(error, "actor_id", None) == actor._actor_id.hex()


def creation_failure(error: BaseException) -> str | None:
    """What an actor's constructor raised: the exception at the end of its remote traceback, all of its lines
    (e.g. `maskfocus.models.base.ModelLoadError: model folder not found: ...`); None when `error` is not an actor
    that failed to start. Ray does not restart such an actor: the same constructor would fail again."""
    if not (isinstance(error, RayActorError) and error.actor_init_failed):
        return None
    lines = str(error.error_msg).splitlines()
    frames = [index for index, line in enumerate(lines) if line.startswith('  File "')]
    after = lines[frames[-1] + 1 :] if frames else lines
    start = next((index for index, line in enumerate(after) if line and not line[0].isspace()), None)
    text = "\n".join(after[start:]).strip() if start is not None else ""
    return text or next((line.strip() for line in reversed(lines) if line.strip()), "no message")
