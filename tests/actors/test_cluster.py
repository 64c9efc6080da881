"""Joining a cluster: a closed port or an unknown host is a clear error in seconds, naming where the address was
given (ray.init would retry for minutes with only its own log lines); a join Ray refuses is one clear line too."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from support import refusing_port

from maskfocus.actors import cluster
from maskfocus.actors.cluster import check_cluster_reachable, cluster_address, connect
from maskfocus.config import ConfigError, RayConfig, config_from_dict


@pytest.fixture
def listening():
    """host:port of a socket that accepts connections."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture
def closed_port() -> Iterator[int]:
    with refusing_port() as port:
        yield port


def test_the_address_comes_from_the_option_then_the_config_then_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "env:6379")
    assert cluster_address(RayConfig(address="cfg:6379"), "cli:6379") == ("--address", "cli:6379")
    assert cluster_address(RayConfig(address="cfg:6379"), None) == ("ray.address", "cfg:6379")
    assert cluster_address(RayConfig(), None) == ("RAY_ADDRESS", "env:6379")
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster_address(RayConfig(), None) is None


def test_a_cluster_that_answers_and_the_addresses_ray_resolves_itself_pass(monkeypatch, listening):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for address in (listening, f"ray://{listening}", "auto", "local", None):
        check_cluster_reachable(RayConfig(), address)  # raises ConfigError when refused


def test_a_closed_port_is_refused_with_its_source_and_port_hint(monkeypatch, closed_port):
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{closed_port}")
    with pytest.raises(ConfigError, match=rf"^RAY_ADDRESS 127.0.0.1:{closed_port}: no Ray cluster answers .*6379"):
        check_cluster_reachable(RayConfig(), None)
    with pytest.raises(ConfigError, match=r"^ray.address ray://127.0.0.1:\d+: no Ray cluster .*the Ray client port"):
        check_cluster_reachable(RayConfig(address=f"ray://127.0.0.1:{closed_port}"), None)


def test_a_dashboard_address_is_refused_as_the_job_servers(monkeypatch):
    with pytest.raises(ConfigError, match=r"^--address http://head:8265: that is a dashboard \(job server\) address"):
        check_cluster_reachable(RayConfig(), "http://head:8265")


def test_a_failed_join_is_one_clear_error_naming_the_address(monkeypatch, listening):
    def refuse(**kwargs):
        raise ConnectionError(f"Failed to connect to Ray cluster at {kwargs['address']}")

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", refuse)
    with pytest.raises(ConfigError, match=rf"^--address {listening}: could not join a Ray cluster there \(Failed to"):
        connect(RayConfig(), listening)


def test_without_an_address_a_new_local_ray_starts_even_beside_a_ray_start_cluster(monkeypatch):
    """ray.init() with no address joins the cluster that `ray start` left in /tmp/ray/ray_current_cluster, and Ray
    then refuses the run's object_store_memory with a traceback; "local" always starts the run's own Ray."""
    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert connect(RayConfig(num_cpus=2, object_store_memory=300_000_000), None) is True
    assert calls == [{"address": "local", "num_cpus": 2, "object_store_memory": 300_000_000}]


@pytest.mark.parametrize(
    ("address", "users_value", "seen_by_ray"), [(None, None, "0"), (None, "1", "1"), ("auto", None, None)]
)
def test_a_local_ray_starts_without_ray_trains_preemption_watcher_unless_the_user_set_it(
    monkeypatch, address, users_value, seen_by_ray
):
    """The watcher looks for nodes an autoscaler drains; a Ray started here has none. It printed an error-level line
    in every local run. A cluster the run joins keeps its own setting, and so does a value the user set."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    # set first, so that monkeypatch records it and the test process gets its own value back
    monkeypatch.setenv(cluster.PREEMPTION_WATCHER_ENV, users_value or "")
    if users_value is None:
        monkeypatch.delenv(cluster.PREEMPTION_WATCHER_ENV)
    seen = []
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(
        cluster.ray, "init", lambda **kwargs: seen.append(os.environ.get(cluster.PREEMPTION_WATCHER_ENV))
    )
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 2.0})
    assert connect(RayConfig(num_cpus=2), address) is True
    assert seen == [seen_by_ray]


def test_a_local_ray_too_small_for_the_actors_is_refused_at_once_and_shut_down(monkeypatch):
    """Actors that do not fit wait: `--set ray.rollout_gpus=1` on a laptop stopped the run after ray.timeout_s
    with "no rollout, score or update finished", which did not say why."""
    from maskfocus.actors.cluster import actor_demand, check_resources

    assert actor_demand(RayConfig()) == {"CPU": 1.5, "GPU": 0.0}  # 0.5 CPU for each of the three roles
    check_resources(RayConfig(), {"CPU": 2.0})
    with pytest.raises(ConfigError, match=r"reserve 1 GPUs \(ray.\*_gpus x ray.num_\*_workers\), but this local "):
        check_resources(RayConfig(rollout_gpus=1), {"CPU": 2.0})
    # Ray puts each fraction on one GPU: three actors of 0.6 do not fit on 2 GPUs, though 1.8 <= 2 (the third
    # waited until ray.timeout_s); 0.5 each packs two to a GPU
    fractions = RayConfig(rollout_gpus=0.6, reward_gpus=0.6, learner_gpus=0.6)
    with pytest.raises(ConfigError, match=r"do not pack onto this local Ray's 2 GPUs: 0.6 left over"):
        check_resources(fractions, {"CPU": 2.0, "GPU": 2.0})
    check_resources(fractions, {"CPU": 2.0, "GPU": 3.0})
    check_resources(RayConfig(rollout_gpus=0.5, reward_gpus=0.5, learner_gpus=1), {"CPU": 2.0, "GPU": 2.0})
    with pytest.raises(ConfigError, match=r"2 GPUs: 0.75 left over"):
        check_resources(RayConfig(rollout_gpus=0.75, reward_gpus=0.75, learner_gpus=0.5), {"CPU": 2.0, "GPU": 2.0})
    # in the order the run makes them (learners first), each on the fullest GPU with room, as Ray places them: two
    # learners of 0.4 share one GPU, so the second rollout worker of 0.6 finds no room (largest first, it fits)
    made_in_order = RayConfig(num_learner_workers=2, learner_gpus=0.4, num_rollout_workers=2, rollout_gpus=0.6)
    with pytest.raises(ConfigError, match=r"2 GPUs: 0.6 left over"):
        check_resources(made_in_order, {"CPU": 4.0, "GPU": 2.0})
    check_resources(fractions, {"CPU": 2.0, "GPU": float("inf")})  # `maskfocus train`'s check before Ray starts
    # collective transport: NCCL's rendezvous actor, made at the first broadcast, needs a free CPU to be placed
    gpus = {"learner_gpus": 1, "rollout_gpus": 1, "reward_gpus": 1}
    collective = RayConfig(weight_transport="collective", **gpus)
    assert actor_demand(collective) == {"CPU": 2.5, "GPU": 3.0}
    check_resources(RayConfig(**gpus), {"CPU": 2.0, "GPU": 3.0})
    with pytest.raises(ConfigError, match=r"2.5 CPUs .*, with 1 free for ray.weight_transport: collective's NCCL"):
        check_resources(collective, {"CPU": 2.0, "GPU": 3.0})
    check_resources(collective, {"CPU": 3.0, "GPU": 3.0})
    shut_down = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: None)
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 1.0})
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: shut_down.append(True))
    with pytest.raises(ConfigError, match=r"reserve 1.5 CPUs .* this local Ray has 1 CPUs; .* raise ray.num_cpus"):
        connect(RayConfig(num_cpus=1), None)
    assert shut_down == [True]


@pytest.mark.parametrize(
    ("address", "probed"),
    [
        ("10.0.0.5:6379", True),
        ("ray://head:10001", True),
        ("[::1]:6379", True),
        ("auto", False),
        ("local", False),
        ("head", False),
        ("http://head:8265", False),  # refused before any probe
    ],
)
def test_the_addresses_a_connection_is_tried_for(address, probed):
    assert cluster.probed_address(address) is probed


def test_a_cuda_run_needs_a_gpu_for_every_role_and_a_whole_one_per_learner_rank():
    """With model.device cuda and ray.reward_gpus 0, the reward actor failed on the CPU-only head with torch's CUDA
    error, or shared a GPU another actor held; with learner_gpus 0 the learner trained on the CPU without a word."""
    from maskfocus.actors.cluster import check_supported
    from maskfocus.config import default_run_config

    gpus = {"ray.rollout_gpus": 1, "ray.reward_gpus": 0.5, "ray.learner_gpus": 1}
    check_supported(default_run_config({"model.device": "cuda", **gpus}))  # every role holds a GPU
    check_supported(default_run_config({}))  # a CPU run needs none
    missing = default_run_config({"model.device": "cuda", **gpus, "ray.reward_gpus": 0, "ray.learner_gpus": 0})
    with pytest.raises(ConfigError, match=r"^model.device cuda: .* ray.reward_gpus, ray.learner_gpus is 0, so"):
        check_supported(missing)
    shared = default_run_config({"model.device": "cuda", **gpus, "ray.learner_gpus": 0.5, "ray.num_learner_workers": 2})
    with pytest.raises(ConfigError, match=r"^ray.learner_gpus 0.5: with ray.num_learner_workers 2, each learner rank"):
        check_supported(shared)


def test_the_idle_note_names_the_actors_that_wait_and_omits_them_without_a_state_api(monkeypatch):
    """The driver's idle error says what the cluster has free and which actors cannot run; without the dashboard's
    state API (tests start Ray without it) only the free resources are named."""
    from types import SimpleNamespace

    import ray
    import ray.util.state

    def actor(name, state):
        return SimpleNamespace(class_name=name, state=state)

    states = [actor("RolloutWorker", "PENDING_CREATION")] * 2 + [actor("RewardWorker", "DEAD")]
    states += [actor("RewardWorker", "RESTARTING")]
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 0.5})
    monkeypatch.setattr(ray.util.state, "list_actors", lambda **_: states)
    note = cluster.free_resources_note()
    assert note.startswith("; free on the cluster now: 0.5 CPUs, 0 GPUs")
    assert note.endswith("; actors not running: 2 RolloutWorker (PENDING_CREATION), 1 RewardWorker (RESTARTING)")

    def no_dashboard(**_):
        raise ConnectionError("Failed to connect to API server")

    monkeypatch.setattr(ray.util.state, "list_actors", no_dashboard)
    assert cluster.free_resources_note().endswith("waits until they are)")


def test_the_runs_helper_actors_are_pinned_to_the_drivers_node_and_ask_for_no_cpu(ray_session):
    """Ray spreads zero-CPU actors over random nodes: the queue of batches and the weight store must not land on a
    preemptible GPU node. One node here, so this checks the options are the pinning ones and that Ray accepts them."""
    import ray
    from ray.util.queue import Queue

    from maskfocus.actors.cluster import on_driver_node

    driver_node = ray.get_runtime_context().get_node_id()
    options = on_driver_node()
    assert options["num_cpus"] == 0
    assert (options["scheduling_strategy"].node_id, options["scheduling_strategy"].soft) == (driver_node, False)

    @ray.remote
    def node_of_caller() -> str:
        return ray.get_runtime_context().get_node_id()

    batches = Queue(maxsize=1, actor_options=on_driver_node())
    try:
        batches.put(1, timeout=30)
        assert batches.get(timeout=30) == 1
        assert ray.get(node_of_caller.options(**on_driver_node()).remote(), timeout=30) == driver_node
    finally:
        batches.shutdown()


@pytest.mark.parametrize("role", ["rollout", "reward", "learner"])
@pytest.mark.parametrize("gpus", [1.5, 2.0])
def test_an_actor_holds_at_most_one_gpu(role, gpus):
    """Each actor computes on one GPU: a second one sat idle (and Ray refused 1.5 only when the pool was made)."""
    with pytest.raises(ConfigError, match=rf"ray.{role}_gpus: .*{gpus:g} GPUs: each actor computes on one GPU, so"):
        config_from_dict({"ray": {f"{role}_gpus": gpus}})
    assert config_from_dict({"ray": {f"{role}_gpus": 1.0}}).ray.model_dump()[f"{role}_gpus"] == 1.0


def test_worker_log_prefixes_lose_their_colour_codes_only_where_the_output_is_not_a_terminal(monkeypatch):
    """Redirected to a file, the driver's copies of worker lines read `[36m(RayTrainWorker pid=...)[0m`."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("RAY_COLOR_PREFIX", "")  # recorded, so that the test process gets its own value back
    for stdout, stderr, expected in (
        (Terminal(), Terminal(), None),
        (io.StringIO(), Terminal(), "0"),
        (Terminal(), io.StringIO(), "0"),  # `2> log`: Ray prints the workers' error lines to stderr
    ):
        monkeypatch.delenv("RAY_COLOR_PREFIX")
        monkeypatch.setattr(sys, "stdout", stdout)
        monkeypatch.setattr(sys, "stderr", stderr)
        cluster.plain_log_prefixes()
        assert cluster.os.environ.get("RAY_COLOR_PREFIX", None) == expected
        monkeypatch.setenv("RAY_COLOR_PREFIX", "")
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")  # the user's choice stays
    cluster.plain_log_prefixes()
    assert cluster.os.environ["RAY_COLOR_PREFIX"] == "1"
