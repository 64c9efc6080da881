"""The Ray executor's config section (`ray:`): pools, resources per actor, the batch queue, weight sync.

Part of the one config tree of `maskfocus.config` (which re-exports RayConfig).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from maskfocus.config_base import Section


class RayConfig(Section):
    """The Ray executor (`train.executor: ray`): pool sizes, resources per actor, queue and weight sync."""

    address: str | None = None
    """Ray cluster address (`auto`, `ray://host:10001`); null = RAY_ADDRESS if set, else start a local Ray."""
    num_cpus: int | None = Field(None, ge=1)
    """CPUs of a locally started Ray (null = all of this machine's); ignored when joining a cluster."""
    object_store_memory: int | None = Field(None, ge=78_643_200)
    """Object store size in bytes of a locally started Ray (null = Ray's default); ignored on a cluster."""
    num_rollout_workers: int = Field(1, ge=1)
    """Rollout actors (one per inference GPU on a cluster)."""
    num_reward_workers: int = Field(1, ge=1)
    """Reward actors; a finished rollout is scored while the next one is sampled."""
    num_learner_workers: int = Field(1, ge=1)
    """Ray Train workers of the learner group (one per training GPU); each batch is sharded across them."""
    rollout_cpus: float = Field(0.5, ge=0.0)
    """CPUs reserved per rollout actor (fractional allowed)."""
    rollout_gpus: float = Field(0.0, ge=0.0)
    """GPUs per rollout actor (fractional allowed, e.g. 0.5 to pack two on one GPU); set model.device: cuda."""
    reward_cpus: float = Field(0.5, ge=0.0)
    """CPUs reserved per reward actor."""
    reward_gpus: float = Field(0.0, ge=0.0)
    """GPUs per reward actor (for GPU reward models such as CLIP)."""
    learner_cpus: float = Field(0.5, ge=0.0)
    """CPUs reserved per learner worker."""
    learner_gpus: float = Field(0.0, ge=0.0)
    """GPUs per learner worker; > 0 makes the group use GPUs (NCCL) instead of CPUs (gloo)."""
    queue_capacity: int = Field(4, ge=1)
    """Most TrainBatches (one whole iteration each) waiting for the learner; a full queue holds reward output."""
    max_staleness: int = Field(0, ge=0)
    """Policy versions a rollout may lag the learner: 0 = strictly on-policy; older batches are dropped and redone."""
    weight_transport: Literal["object_store", "collective"] = "object_store"
    """How new weights reach rollout workers: `object_store` (any device: rank 0 puts them, each worker fetches them
    before its next batch), or `collective` (GPU only, learner_gpus >= 1 and rollout_gpus >= 1: rank 0 broadcasts
    each version to every rollout worker over ray.util.collective NCCL; learner/weight_transport.py: why not CPU)."""
    learner_strategy: Literal["fsdp", "ddp"] = "fsdp"
    """Learner parallelism: FSDP2 `fully_shard` per transformer block then the root, or DDP (full replicas)."""
    torch_threads: int | None = Field(None, ge=1)
    """torch threads in each rollout, reward and learner process; null = Ray's default (the actor's whole CPUs, at
    least 1). With `max_staleness: 0` on a small machine the roles take turns, so each may use every core."""
    max_restarts: int = Field(2, ge=0)
    """Restarts of a dead rollout or reward actor before the run stops; its in-flight batch is redone."""
    timeout_s: float = Field(600.0, gt=0.0)
    """Seconds without progress (no rollout, score or update finishing) after which the run stops with an error."""

    @field_validator("rollout_gpus", "reward_gpus", "learner_gpus")
    @classmethod
    def _at_most_one(cls, gpus: float) -> float:
        """Each actor computes on one device (model.device; a learner rank on the GPU Ray Train gives it), so a second
        GPU would sit idle; Ray also refused 1.5 only when the pool was made, after the run folder and learner group."""
        if gpus > 1:
            raise ValueError(
                f"{gpus:g} GPUs: each actor computes on one GPU, so at most 1 (a fraction shares one); for more "
                "GPUs raise ray.num_rollout_workers / num_reward_workers / num_learner_workers"
            )
        return gpus
