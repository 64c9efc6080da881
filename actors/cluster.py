"""Before a Ray run: which transports this configuration supports, and joining or starting the cluster."""

from __future__ import annotations

import os
import socket

import ray

from maskfocus.config import ConfigError, RayConfig, RunConfig


def connect(ray_config: RayConfig, address: str | None) -> bool:
    """Join the cluster at `address` / ray.address / RAY_ADDRESS, else start a local Ray; True if we called init."""
    if ray.is_initialized():
        return False
    given = cluster_address(ray_config, address)
    if given is None:
        ray.init(num_cpus=ray_config.num_cpus, object_store_memory=ray_config.object_store_memory)
        return True
    source, address = given
    check_reachable(address, source)  # `maskfocus train` checked it already; a caller of train_ray may not have
    try:
        ray.init(address=address)
    except ConnectionError as error:  # `auto` with no Ray on this node, or something other than Ray answers
        cause = f"; {error.__cause__}" if error.__cause__ else ""
        raise ConfigError(f"{source} {address}: could not join a Ray cluster there ({error}{cause})") from error
    return True


def cluster_address(ray_config: RayConfig, address: str | None) -> tuple[str, str] | None:
    """(where it was given, the address) of the cluster to join, first of --address, ray.address and RAY_ADDRESS;
    None: start a local Ray."""
    given = (
        ("--address", address),
        ("ray.address", ray_config.address),
        ("RAY_ADDRESS", os.environ.get("RAY_ADDRESS")),
    )
    return next(((source, value) for source, value in given if value), None)


def check_cluster_reachable(ray_config: RayConfig, address: str | None) -> None:
    """The cluster a run would join answers (nothing to check for a local Ray): `maskfocus train` checks it before
    it makes the run folder."""
    if (given := cluster_address(ray_config, address)) is not None:
        check_reachable(given[1], given[0])


def check_reachable(address: str, source: str, timeout_s: float = 5.0) -> None:
    """A cluster address `host:port` or `ray://host:port` (given as `source`) answers a TCP connection within
    `timeout_s`: a wrong one is an error in seconds, where `ray.init` retries for minutes. `auto` and `local` pass;
    a dashboard address (http://) is refused: it is what `ray job submit` takes, not `ray.init`."""
    if address.startswith(("http://", "https://")):
        raise ConfigError(
            f"{source} {address}: that is a dashboard (job server) address, for `ray job submit`; a run joins a "
            "cluster at its GCS address HOST:6379 (or ray://HOST:10001), or `auto` on a node of the cluster"
        )
    if not probed_address(address):
        return  # auto, local, or a form Ray itself will judge
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except OSError as error:
        timed_out = isinstance(error, TimeoutError)
        reason = f"no answer within {timeout_s:.0f} s" if timed_out else error.strerror or type(error).__name__
        port_hint = "the Ray client port, 10001" if address.startswith("ray://") else "the GCS port, 6379"
        raise ConfigError(
            f"{source} {address}: no Ray cluster answers there ({reason}); start one with `ray start --head`, or "
            f"check the host and port ({port_hint} by default)"
        ) from None


def probed_address(address: str) -> bool:
    """Whether `check_reachable` tries a TCP connection to `address`: `host:port` or `ray://host:port`."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return bool(host) and port.isdigit() and not address.startswith(("http://", "https://"))


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
