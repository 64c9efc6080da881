"""Stale batches: weights of recent policy versions kept by version, the oldest dropped, swapped in and restored
exactly; the updater scores a stale batch under the version that sampled it and weights its loss by them."""

from __future__ import annotations

import pytest
import torch
from support import ToyGenerator, make_batch
from torch import nn

import maskfocus.update as update_module
from maskfocus.behaviour import VersionSnapshots, reshard
from maskfocus.config import GRPOConfig, OptimConfig
from maskfocus.grpo import policy_loss, token_log_probs
from maskfocus.update import PolicyUpdater


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


def test_the_weights_are_restored_when_the_swap_itself_fails_part_way():
    """The weight copy failing after the first parameter (here a snapshot of another shape) left it swapped."""
    module = nn.Linear(2, 2)
    snapshots = VersionSnapshots(module, keep=1)
    snapshots.record(7)
    snapshots._weights[7][1] = torch.zeros(3)  # the bias's snapshot no longer fits; the weight's copies first
    moved(module, 1.0)
    now = weights(module)
    with pytest.raises(RuntimeError), snapshots.weights_of(7):
        pass
    assert all(torch.equal(a, b) for a, b in zip(weights(module), now, strict=True))


def test_reshard_calls_every_sharded_submodule_and_leaves_plain_ones():
    calls = []

    class Sharded(nn.Linear):  # stands in for an FSDP2 module, whose gathered parameters reshard() frees
        def reshard(self):
            calls.append(self)

    inner, outer = Sharded(2, 2), Sharded(2, 2)
    reshard(nn.Sequential(inner, nn.ReLU(), nn.Sequential(outer)))
    assert calls == [inner, outer]


def stale_correcting_updater(model, cap: float = 2.0, max_staleness: int = 1) -> PolicyUpdater:
    return PolicyUpdater(
        model,
        GRPOConfig(behaviour_weight_cap=cap),
        OptimConfig(learning_rate=1e-2),
        num_sampling_steps=6,
        total_updates=10,
        max_staleness=max_staleness,
    )


def test_a_stale_batch_is_scored_under_the_version_that_sampled_it(monkeypatch):
    """Learner at version 1, batch sampled by version 0: its behaviour log-probs are those of the version-0 weights
    on the same training inputs, the loss weights tokens by them, and the current weights are untouched."""
    model = ToyGenerator()
    updater = stale_correcting_updater(model)
    version_0 = update_module.frozen_copy(updater.module)
    first = updater.update(make_batch(model, seed=0), torch.Generator().manual_seed(1), version=0)
    assert "loss/behaviour_weight_mean" not in first  # on-policy: no correction
    seen = []
    freeze = PolicyUpdater._freeze_log_probs

    def spy(self, steps, tokens_BL, condition):
        seen.append((steps, condition, weights(self.module)))
        freeze(self, steps, tokens_BL, condition)

    monkeypatch.setattr(PolicyUpdater, "_freeze_log_probs", spy)
    stale = make_batch(model, seed=1)  # policy_version 0
    metrics = updater.update(stale, torch.Generator().manual_seed(2), version=1)
    ((steps, condition, current),) = seen
    for step in steps:
        logits = model.logits(step.inputs_BL, condition, step.steps_B, 6, module=version_0)
        assert torch.equal(step.behaviour_logp_BL, token_log_probs(logits, stale.tokens_BL))
    assert not any(torch.equal(a, b) for a, b in zip(current, weights(version_0), strict=True))
    assert metrics["loss/behaviour_abs_log_ratio"] > 0 and 0 < metrics["loss/behaviour_weight_mean"] <= 2.0
    assert "sync/behaviour_missing" in metrics and metrics["sync/behaviour_missing"] == 0.0
    assert updater.snapshots.versions == [0, 1]


def test_the_first_stale_step_equals_a_hand_weighted_loss(monkeypatch):
    """The stale batch's first selected step, per_step: its loss is the decoupled PPO loss computed by hand from
    three forwards (now = old, behaviour = version 0, and the reference)."""
    model = ToyGenerator()
    updater = stale_correcting_updater(model, cap=1.05)
    version_0 = update_module.frozen_copy(updater.module)
    updater.update(make_batch(model, seed=0), torch.Generator().manual_seed(1), version=0)
    now = update_module.frozen_copy(updater.module)
    stale = make_batch(model, seed=1)
    steps = updater.prepare(stale, torch.Generator().manual_seed(2))
    condition = model.encode_prompts(stale.prompts_B)

    def logp(module):
        logits = model.logits(steps[0].inputs_BL, condition, steps[0].steps_B, 6, module=module)
        return token_log_probs(logits, stale.tokens_BL)

    inputs = (logp(now), logp(now), stale.advantages_B, steps[0].loss_mask_BL)
    shipped = {"clip_eps": 0.2, "beta": 0.01, "ref_logp_BL": logp(updater.reference)}
    expected, _ = policy_loss(*inputs, **shipped, behaviour_logp_BL=logp(version_0), behaviour_cap=1.05)
    plain, _ = policy_loss(*inputs, **shipped)
    losses = []
    real = update_module.policy_loss

    def recording(*args, **kwargs):
        loss, metrics = real(*args, **kwargs)
        losses.append(loss.detach())
        return loss, metrics

    monkeypatch.setattr(update_module, "policy_loss", recording)
    updater.update(stale, torch.Generator().manual_seed(2), version=1)
    torch.testing.assert_close(losses[0], expected.detach())
    assert not torch.allclose(expected, plain)  # the weights changed the loss


def test_on_policy_batches_missing_versions_and_no_cap_are_not_corrected():
    model = ToyGenerator()
    updater = stale_correcting_updater(model)
    on_policy = make_batch(model)
    on_policy.policy_version = 3
    assert "loss/behaviour_weight_mean" not in updater.update(on_policy, torch.Generator().manual_seed(1), version=3)
    too_old = make_batch(model)
    too_old.policy_version = 1  # older than any kept version (the learner dropped nothing here: it was never kept)
    metrics = updater.update(too_old, torch.Generator().manual_seed(1), version=4)
    assert metrics["sync/behaviour_missing"] == 1.0 and "loss/behaviour_weight_mean" not in metrics
    assert PolicyUpdater(model, GRPOConfig(), OptimConfig(), 6, 10, max_staleness=2).snapshots is None
    assert stale_correcting_updater(model, max_staleness=0).snapshots is None
