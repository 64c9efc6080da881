"""Before a Ray run: which transports this configuration supports, and joining or starting the cluster."""

from __future__ import annotations

import os

import ray

from maskfocus.config import ConfigError, RayConfig, RunConfig


def connect(ray_config: RayConfig, address: str | None) -> bool:
    """Join the cluster at `address` / ray.address / RAY_ADDRESS, else start a local Ray; True if we called init."""
    if ray.is_initialized():
        return False
    address = address or ray_config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=ray_config.num_cpus, object_store_memory=ray_config.object_store_memory)
    return True


def check_supported(config: RunConfig) -> None:
    """`collective` broadcasts over NCCL, one whole GPU per member (NCCL refuses two ranks of a group on one GPU);
    on CPU Ray's gloo collective cannot reach a Ray Train worker (learner/weight_transport.py)."""
    ray_config = config.ray
    if ray_config.weight_transport == "collective" and (ray_config.learner_gpus < 1 or ray_config.rollout_gpus < 1):
        raise ConfigError(
            "ray.weight_transport: collective broadcasts the weights over NCCL and needs ray.learner_gpus >= 1 and "
            f"ray.rollout_gpus >= 1 (got {ray_config.learner_gpus} and {ray_config.rollout_gpus}): NCCL takes a whole "
            "GPU per member, and on CPU Ray 2.60's gloo collective cannot join a Ray Train learner worker to the "
            "rollout actors (it reuses the worker's own torch.distributed group). Allowed: object_store (any "
            "device), collective (GPU learner and rollout workers)"
        )
