"""Weights of recent policy versions: kept by version, the oldest dropped, swapped in and restored exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskfocus.behaviour import VersionSnapshots, reshard


def weights(module: nn.Module) -> list[torch.Tensor]:
    return [parameter.detach().clone() for parameter in module.parameters()]


def moved(module: nn.Module, by: float) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(by)


def test_each_version_is_swapped_in_and_the_current_weights_come_back_bit_for_bit():
    module = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    snapshots = VersionSnapshots(module, keep=2)
    snapshots.record(0)
    at_0 = weights(module)
    moved(module, 0.5)
    snapshots.record(1)
    at_1 = weights(module)
    moved(module, 0.25)
    now = weights(module)
    x = torch.randn(5, 3)
    for version, expected in ((0, at_0), (1, at_1)):
        with snapshots.weights_of(version):
            assert all(torch.equal(a, b) for a, b in zip(weights(module), expected, strict=True))
            reference = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
            with torch.no_grad():
                for parameter, value in zip(reference.parameters(), expected, strict=True):
                    parameter.copy_(value)
            assert torch.equal(module(x), reference(x))
        assert all(torch.equal(a, b) for a, b in zip(weights(module), now, strict=True))


def test_only_the_last_keep_versions_stay_and_a_missing_one_is_named():
    module = nn.Linear(2, 2)
    snapshots = VersionSnapshots(module, keep=2)
    for version in range(4):
        snapshots.record(version)
        moved(module, 1.0)
    assert snapshots.versions == [2, 3] and 1 not in snapshots and 3 in snapshots
    missing = r"no weights of policy version 1 kept \(have \[2, 3\]\)"
    with pytest.raises(KeyError, match=missing), snapshots.weights_of(1):
        pass
    with pytest.raises(ValueError, match="keep=0"):
        VersionSnapshots(module, keep=0)


def test_the_weights_are_restored_when_the_forward_fails():
    module = nn.Linear(2, 2)
    snapshots = VersionSnapshots(module, keep=1)
    snapshots.record(7)
    moved(module, 1.0)
    now = weights(module)
    with pytest.raises(RuntimeError, match="boom"), snapshots.weights_of(7):
        raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(weights(module), now, strict=True))


def test_reshard_calls_every_sharded_submodule_and_leaves_plain_ones():
    calls = []

    class Sharded(nn.Linear):  # stands in for an FSDP2 module, whose gathered parameters reshard() frees
        def reshard(self):
            calls.append(self)

    inner, outer = Sharded(2, 2), Sharded(2, 2)
    reshard(nn.Sequential(inner, nn.ReLU(), nn.Sequential(outer)))
    assert calls == [inner, outer]
