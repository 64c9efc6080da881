"""Joining a cluster: a closed port or an unknown host is a clear error in seconds, naming where the address was
given (ray.init would retry for minutes with only its own log lines); a join Ray refuses is one clear line too."""

from __future__ import annotations

import socket

import pytest

from maskfocus.actors import cluster
from maskfocus.actors.cluster import check_cluster_reachable, cluster_address, connect
from maskfocus.config import ConfigError, RayConfig


@pytest.fixture
def listening():
    """host:port of a socket that accepts connections."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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
