"""Before a Ray run: which transports this configuration supports, and joining or starting the cluster."""

from __future__ import annotations

import math
import os
import socket
import sys
from collections import Counter
from typing import Any

import ray

from maskfocus.config import ConfigError, RayConfig, RunConfig


def connect(ray_config: RayConfig, address: str | None) -> bool:
    """Join the cluster at `address` / ray.address / RAY_ADDRESS, else start a local Ray; True if we called init."""
    if ray.is_initialized():
        return False
    plain_log_prefixes()
    given = cluster_address(ray_config, address)
    if given is None:  # "local": a new Ray of this run's size, never one that a `ray start` left on this node
        without_preemption_watcher()
        ray.init(address="local", num_cpus=ray_config.num_cpus, object_store_memory=ray_config.object_store_memory)
        try:
            check_resources(ray_config, ray.cluster_resources())
        except ConfigError:
            ray.shutdown()
            raise
        return True
    source, address = given
    check_reachable(address, source)  # `maskfocus train` checked it already; a caller of train_ray may not have
    try:
        ray.init(address=address)
    except ConnectionError as error:  # `auto` with no Ray on this node, or something other than Ray answers
        cause = f"; {error.__cause__}" if error.__cause__ else ""
        raise ConfigError(f"{source} {address}: could not join a Ray cluster there ({error}{cause})") from error
    return True


PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def without_preemption_watcher() -> None:
    """Before a local Ray starts (its processes inherit this environment): Ray Train's preemption watcher off.

    It watches for nodes an autoscaler drains, which a Ray started on this machine never has. On a cluster it
    stays: there the run joins a Ray that someone else started. Left on locally, the learner group's controller
    printed an error-level `core_worker.cc` line for it in every run (Ray 2.60), and it was one more Ray process.
    A value the user set stays."""
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")


def plain_log_prefixes() -> None:
    """The workers' log lines this driver prints without colour codes where its output (stdout, or stderr, where
    Ray prints their error lines) is not a terminal (a log file, `ray job logs`): they showed as
    `[36m(RayTrainWorker pid=...)[0m`. RAY_COLOR_PREFIX, if set, stays."""
    if not (sys.stdout.isatty() and sys.stderr.isatty()):
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def on_driver_node() -> dict[str, Any]:
    """Actor options that place a run's helper actors (the batch queue, the weight store) on the driver's node.

    Ray places an actor that asks for no CPU on a random node of the cluster; on a preemptible GPU node it would
    take every queued batch and the learner's records with it. The driver's node ends the run when it dies anyway."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return {"num_cpus": 0, "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False)}


def role_requests(ray_config: RayConfig) -> list[tuple[int, float, float]]:
    """(count, CPUs each, GPUs each) of the learner, rollout and reward actors, in the order a run makes them."""
    return [
        (ray_config.num_learner_workers, ray_config.learner_cpus, ray_config.learner_gpus),
        (ray_config.num_rollout_workers, ray_config.rollout_cpus, ray_config.rollout_gpus),
        (ray_config.num_reward_workers, ray_config.reward_cpus, ray_config.reward_gpus),
    ]


RENDEZVOUS_CPUS = 1.0
"""What ray.util.collective's NCCL rendezvous actor (NCCLUniqueIDStore, made at the first broadcast) needs free to
be placed: a plain `@ray.remote` actor's default CPU; without it the first broadcast waits until ray.timeout_s."""


def actor_demand(ray_config: RayConfig) -> dict[str, float]:
    """The CPUs and GPUs the run's actors reserve in all, with the NCCL rendezvous actor's CPU under
    `weight_transport: collective` (the queue, the weight store and Ray Train's controller reserve none)."""
    roles = role_requests(ray_config)
    rendezvous = RENDEZVOUS_CPUS if ray_config.weight_transport == "collective" else 0.0
    return {
        "CPU": sum(count * cpus for count, cpus, _ in roles) + rendezvous,
        "GPU": sum(count * gpus for count, _, gpus in roles),
    }


def unplaced_gpu_requests(ray_config: RayConfig, num_gpus: int) -> list[float]:
    """The actors' GPU requests that do not fit on `num_gpus` GPUs when placed as Ray places them: in the order the
    run makes the actors (the learner group, then the rollout and reward pools), a fraction on the fullest GPU that
    still has room for it (Ray does not split one over GPUs: three of 0.6 need three GPUs, not 1.8), a whole number
    on free GPUs."""
    free = [1.0] * num_gpus
    unplaced = []
    for count, _, request in role_requests(ray_config):
        for _ in range(count if request > 0 else 0):
            if request >= 1:
                whole = [index for index, left in enumerate(free) if left >= 1.0 - 1e-9][: int(request)]
                placed = len(whole) == int(request)
                for index in whole if placed else []:
                    free[index] = 0.0
            else:
                fitting = [index for index, left in enumerate(free) if left >= request - 1e-9]
                placed = bool(fitting)
                if placed:
                    free[min(fitting, key=lambda index: free[index])] -= request
            if not placed:
                unplaced.append(request)
    return unplaced


def check_resources(ray_config: RayConfig, available: dict[str, float]) -> None:
    """A local Ray (one node, no autoscaler) holds what every actor reserves; else the actors that do not fit wait,
    and the run stops after ray.timeout_s with no word of why."""
    demand = actor_demand(ray_config)
    short = {kind: amount for kind, amount in demand.items() if amount > available.get(kind, 0.0) + 1e-9}
    if short:
        needs = ", ".join(
            f"{amount:g} {kind}s (ray.*_{kind.lower()}s x ray.num_*_workers)" for kind, amount in short.items()
        )
        has = ", ".join(f"{available.get(kind, 0.0):g} {kind}s" for kind in short)
        if "CPU" in short and ray_config.weight_transport == "collective":
            needs += f", with {RENDEZVOUS_CPUS:g} free for ray.weight_transport: collective's NCCL rendezvous actor"
        raise ConfigError(
            f"the run's rollout, reward and learner actors reserve {needs}, but this local Ray has {has}; the actors "
            "that do not fit would wait until ray.timeout_s. Lower ray.rollout_cpus / reward_cpus / learner_cpus (or "
            "the GPUs), the ray.num_*_workers, or raise ray.num_cpus"
        )
    gpus = available.get("GPU", 0.0)
    if demand["GPU"] > 0 and math.isfinite(gpus) and (unplaced := unplaced_gpu_requests(ray_config, int(gpus))):
        raise ConfigError(
            f"the actors' GPU requests do not pack onto this local Ray's {int(gpus)} GPUs: "
            f"{', '.join(f'{request:g}' for request in unplaced)} left over (Ray puts each fraction on one GPU, so "
            "fractions must add up to at most 1 per GPU); choose ray.*_gpus that share GPUs evenly, e.g. 0.5 or 0.25"
        )


WAITING_STATES = ("DEPENDENCIES_UNREADY", "PENDING_CREATION", "RESTARTING")
"""Ray's states of an actor that exists but cannot take calls yet."""


def waiting_actors_note(actors: list[Any]) -> str:
    """`; actors not running: 2 RolloutWorker (PENDING_CREATION)` from Ray's actor states (class_name, state)."""
    counts = Counter((actor.class_name, actor.state) for actor in actors if actor.state in WAITING_STATES)
    if not counts:
        return ""
    return "; actors not running: " + ", ".join(f"{n} {name} ({state})" for (name, state), n in counts.items())


def free_resources_note() -> str:
    """What the cluster has free now, and which actors wait (a worker restarted, a node lost): an actor asking for
    more than is free waits for it. The actor list needs the dashboard's state API; without it the note omits it."""
    try:
        free = ray.available_resources()
    except Exception:  # the note only explains; the error it joins matters more
        return ""
    try:
        from ray.util.state import list_actors

        waiting = waiting_actors_note(list_actors(filters=[("state", "!=", "ALIVE")], timeout=5, limit=1000))
    except Exception:  # no dashboard (include_dashboard=False), or it did not answer
        waiting = ""
    return (
        f"; free on the cluster now: {free.get('CPU', 0.0):g} CPUs, {free.get('GPU', 0.0):g} GPUs (an actor asking "
        f"for more, by ray.*_cpus / ray.*_gpus, waits until they are){waiting}"
    )


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
    """The cluster a run would join answers; a local Ray would hold the actors' CPUs (ray.num_cpus, else this
    machine's; its GPUs are checked once it runs): `maskfocus train` checks it before it makes the run folder."""
    given = cluster_address(ray_config, address)
    if given is None:
        check_resources(ray_config, {"CPU": float(ray_config.num_cpus or usable_cpus()), "GPU": math.inf})
        return
    check_reachable(given[1], given[0])


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's limit), as a local Ray counts them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
    check_role_gpus(config)


def check_role_gpus(config: RunConfig) -> None:
    """With model.device cuda every role (rollout, reward, learner) puts its models there, so each must hold a GPU:
    a zero-GPU actor lands on a CPU-only node (torch's CUDA error) or beside another actor's GPU, and a zero-GPU
    learner trains on the CPU without a word. Several learner ranks need a whole GPU each (one NCCL rank per GPU)."""
    device, ray_config = config.model.device, config.ray
    if not device.startswith("cuda"):
        return
    roles = ("rollout", "reward", "learner")
    without = [f"ray.{role}_gpus" for role in roles if getattr(ray_config, f"{role}_gpus") <= 0]
    if without:
        raise ConfigError(
            f"model.device {device}: the rollout, reward and learner actors all run there, but {', '.join(without)} "
            "is 0, so that actor holds no GPU (on a CPU-only node its CUDA call fails; on a GPU node it shares one "
            "another actor holds; a learner trains on the CPU); give each role a GPU or a fraction of one, e.g. "
            "--set ray.reward_gpus=0.5"
        )
    gpus = ray_config.learner_gpus
    if ray_config.num_learner_workers > 1 and gpus != int(gpus):
        raise ConfigError(
            f"ray.learner_gpus {gpus}: with ray.num_learner_workers {ray_config.num_learner_workers}, each learner "
            "rank needs a whole GPU (NCCL refuses two ranks of one group on one GPU); allowed: 1"
        )
