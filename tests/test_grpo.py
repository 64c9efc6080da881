"""GRPO math (ALGORITHM.md section 4) against per-token loop references, plus its invariants.

Shape legend: B samples, G group size, T steps, K selected steps, L image tokens, V codebook size.
"""

from __future__ import annotations

import math

import pytest
import torch

from maskfocus.grpo import (
    build_training_inputs,
    gather_steps,
    group_advantages,
    masked_entropy_mean,
    newly_unmasked_mask,
    policy_loss,
    token_log_probs,
)

SHAPES = [(2, 3), (4, 16), (8, 5), (6, 64)]  # (B, L)


# ---------------------------------------------------------------- advantages


@pytest.mark.parametrize("group_size,num_groups", [(2, 3), (4, 2), (5, 4), (16, 1)])
@pytest.mark.parametrize("seed", [0, 1])
def test_advantages_sum_to_zero_with_unit_std_per_group(group_size, num_groups, seed):
    rewards_B = torch.randn(group_size * num_groups, generator=torch.Generator().manual_seed(seed))
    advantages_B, info = group_advantages(rewards_B, group_size, eps=1e-4)
    adv_PG, rewards_PG = advantages_B.view(num_groups, group_size), rewards_B.view(num_groups, group_size).double()
    torch.testing.assert_close(adv_PG.sum(-1), torch.zeros(num_groups), atol=1e-5, rtol=0)
    std_P = rewards_PG.std(-1)
    torch.testing.assert_close(adv_PG.double().std(-1), std_P / (std_P + 1e-4))
    for p in range(num_groups):  # loop reference
        values = rewards_PG[p].tolist()
        mean = sum(values) / group_size
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (group_size - 1))
        torch.testing.assert_close(adv_PG[p], torch.tensor([(v - mean) / (std + 1e-4) for v in values]))
    assert (info.num_groups, info.num_zero_groups, info.num_nan_groups) == (num_groups, 0, 0)
    assert info.valid_B.all() and info.has_signal_B.all()


def test_equal_rewards_give_exactly_zero_and_are_counted():
    rewards_B = torch.tensor([0.1, 0.1, 0.1, 1.0, 0.0, 0.2, 7.0, 7.0, 7.0])
    advantages_B, info = group_advantages(rewards_B, 3)
    assert (advantages_B[:3] == 0).all() and (advantages_B[6:] == 0).all()
    assert (advantages_B[3:6] != 0).all()
    assert (info.num_zero_groups, info.num_nan_groups) == (2, 0)
    assert info.valid_B.all()
    assert info.has_signal_B.tolist() == [False] * 3 + [True] * 3 + [False] * 3


def test_group_of_one_has_no_signal_and_no_nan():
    advantages_B, info = group_advantages(torch.tensor([1.0, 2.0, 3.0]), 1)
    assert (advantages_B == 0).all() and info.num_zero_groups == 3


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_group_is_skipped_counted_and_leaves_other_groups_alone(bad):
    rewards_B = torch.tensor([1.0, 2.0, 0.5, bad, 3.0, 0.0, 4.0, 4.0])
    advantages_B, info = group_advantages(rewards_B, 2)
    clean_B, _ = group_advantages(torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0, 4.0]), 2)
    assert torch.isfinite(advantages_B).all()
    assert (advantages_B[2:4] == 0).all()
    torch.testing.assert_close(torch.cat([advantages_B[:2], advantages_B[4:]]), clean_B)
    assert (info.num_nan_groups, info.num_zero_groups) == (1, 1)
    assert info.valid_B.tolist() == [True, True, False, False, True, True, True, True]
    assert info.has_signal_B.tolist() == [True, True, False, False, True, True, False, False]


def test_without_std_normalization_advantages_are_centred_rewards():
    """Dr. GRPO: A = r - mean per group (loop reference); equal and non-finite groups still give exactly 0."""
    rewards_B = torch.tensor([0.0, 1.0, 0.5, 0.25, 0.25, 0.25, 0.9, float("nan"), 0.1, 1.0, 0.2, 0.3])
    advantages_B, info = group_advantages(rewards_B, 3, std_normalize=False)
    expected = []
    for p in range(4):
        values = rewards_B[3 * p : 3 * p + 3].tolist()
        finite = all(math.isfinite(v) for v in values)
        mean = sum(values) / 3 if finite else 0.0
        expected += [v - mean if finite and max(values) > min(values) else 0.0 for v in values]
    torch.testing.assert_close(advantages_B, torch.tensor(expected))
    assert (info.num_zero_groups, info.num_nan_groups) == (1, 1)
    normalized_B, _ = group_advantages(rewards_B, 3)
    ratio = normalized_B[9:] / advantages_B[9:]
    torch.testing.assert_close(ratio, ratio[:1].expand(3))  # same direction, scaled by 1 / (std + eps)
    assert not torch.allclose(ratio[:1], torch.ones(1))


def test_bad_group_size_is_a_clear_error():
    with pytest.raises(ValueError, match="multiple of the group size"):
        group_advantages(torch.rand(5), 2)


# ---------------------------------------------------------------- training inputs


@pytest.mark.parametrize("batch,length", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_remask_masks_exactly_the_requested_counts(batch, length, seed):
    generator = torch.Generator().manual_seed(seed)
    final_BL = torch.randint(0, 10, (batch, length), generator=generator)
    num_masked_B = torch.randint(0, length + 1, (batch,), generator=generator)
    inputs_BL, mask_BL = build_training_inputs(final_BL, num_masked_B, 10, generator)
    assert mask_BL.dtype == torch.bool
    assert torch.equal(mask_BL.sum(-1), num_masked_B)
    assert torch.equal(inputs_BL == 10, mask_BL)  # only masked positions carry the mask id
    assert torch.equal(inputs_BL[~mask_BL], final_BL[~mask_BL])


def test_random_remask_draws_fresh_positions_per_sample_and_is_reproducible():
    final_BL = torch.zeros(8, 32, dtype=torch.long)
    num_masked_B = torch.full((8,), 10)
    _, mask_BL = build_training_inputs(final_BL, num_masked_B, 99, torch.Generator().manual_seed(0))
    _, again_BL = build_training_inputs(final_BL, num_masked_B, 99, torch.Generator().manual_seed(0))
    assert torch.equal(mask_BL, again_BL)
    assert len({tuple(row) for row in mask_BL.tolist()}) == 8
    _, many_BL = build_training_inputs(
        torch.zeros(4000, 8, dtype=torch.long), torch.full((4000,), 2), 9, torch.Generator().manual_seed(1)
    )
    frequency_L = many_BL.float().mean(0)  # every position equally likely: 2 / 8
    assert ((frequency_L - 0.25).abs() < 0.03).all(), frequency_L


def test_trajectory_remask_uses_the_rollout_mask_and_checks_counts():
    final_BL = torch.arange(12).view(2, 6)
    trajectory_BL = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    inputs_BL, mask_BL = build_training_inputs(
        final_BL, torch.tensor([2, 3]), 50, remask="trajectory", trajectory_mask_BL=trajectory_BL
    )
    assert torch.equal(mask_BL, trajectory_BL)
    assert inputs_BL.tolist() == [[50, 1, 50, 3, 4, 5], [6, 50, 50, 50, 10, 11]]
    with pytest.raises(AssertionError):
        build_training_inputs(final_BL, torch.tensor([2, 2]), 50, remask="trajectory", trajectory_mask_BL=trajectory_BL)
    with pytest.raises(ValueError, match="trajectory_mask_BL"):
        build_training_inputs(final_BL, torch.tensor([2, 3]), 50, remask="trajectory")
    with pytest.raises(ValueError, match="remask must be one of"):
        build_training_inputs(final_BL, torch.tensor([2, 3]), 50, torch.Generator(), remask="fresh")


def test_newly_unmasked_tokens_are_those_committed_at_the_step():
    # one sample, T = 3, L = 5: masked sets {0..4} -> {1, 3, 4} -> {4}
    masks_BTL = torch.tensor([[[1, 1, 1, 1, 1], [0, 1, 0, 1, 1], [0, 0, 0, 0, 1]]], dtype=torch.bool)
    newly_BKL = newly_unmasked_mask(masks_BTL, torch.tensor([[0, 1, 2]]))
    assert newly_BKL.int().tolist() == [[[1, 0, 1, 0, 0], [0, 1, 0, 1, 0], [0, 0, 0, 0, 1]]]
    assert newly_unmasked_mask(masks_BTL, torch.tensor([[2, 0]])).int().tolist() == [[[0, 0, 0, 0, 1], [1, 0, 1, 0, 0]]]
    assert (newly_BKL.sum(1) == 1).all()  # every token is committed exactly once


def test_gather_steps_picks_per_sample_records():
    values_BTL = torch.arange(2 * 4 * 3).view(2, 4, 3)
    steps_BK = torch.tensor([[0, 3], [2, 1]])
    assert torch.equal(gather_steps(values_BTL, steps_BK), torch.stack([values_BTL[0, [0, 3]], values_BTL[1, [2, 1]]]))
    assert gather_steps(values_BTL.sum(-1), steps_BK).tolist() == [[3, 30], [57, 48]]


# ---------------------------------------------------------------- log-probs and loss


@pytest.mark.parametrize("seed", [0, 1])
def test_token_log_probs_match_log_softmax_gather_and_entropy_metric(seed):
    generator = torch.Generator().manual_seed(seed)
    logits_BLV = 4 * torch.randn(3, 7, 11, generator=generator)
    targets_BL = torch.randint(0, 11, (3, 7), generator=generator)
    expected_BL = torch.log_softmax(logits_BLV, -1).gather(-1, targets_BL[..., None]).squeeze(-1)
    torch.testing.assert_close(token_log_probs(logits_BLV, targets_BL), expected_BL)
    mask_BL = torch.rand(3, 7, generator=generator) < 0.5
    log_p_BLV = torch.log_softmax(logits_BLV, -1)
    entropy_BL = -(log_p_BLV.exp() * log_p_BLV).sum(-1)
    assert masked_entropy_mean(logits_BLV, mask_BL) == pytest.approx(entropy_BL[mask_BL].mean().item(), rel=1e-5)
    assert masked_entropy_mean(logits_BLV, torch.zeros_like(mask_BL)) == 0.0


def reference_loss(logp, old, adv, mask, clip_eps, beta, ref, num_tokens, behaviour=None, cap=1.0):
    total, count = 0.0, 0
    for b in range(len(logp)):
        for pos in range(len(logp[b])):
            if not mask[b][pos]:
                continue
            count += 1
            ratio = math.exp(logp[b][pos] - old[b][pos])
            surrogate = ratio * adv[b]
            if clip_eps is not None:
                surrogate = min(surrogate, min(max(ratio, 1 - clip_eps), 1 + clip_eps) * adv[b])
            if behaviour is not None:  # decoupled PPO: the truncated weight of the proximal over the behaviour policy
                surrogate *= min(math.exp(old[b][pos] - behaviour[b][pos]), cap)
            k3 = 0.0
            if beta > 0:
                delta = ref[b][pos] - logp[b][pos]
                k3 = math.exp(delta) - delta - 1
            total += surrogate - beta * k3
    return -total / (count if num_tokens is None else num_tokens)


def _random_loss_inputs(batch, length, seed):
    generator = torch.Generator().manual_seed(seed)
    logp_BL = -torch.rand(batch, length, generator=generator) * 3
    old_BL = logp_BL + 0.4 * torch.randn(batch, length, generator=generator)
    ref_BL = logp_BL + 0.4 * torch.randn(batch, length, generator=generator)
    adv_B = torch.randn(batch, generator=generator)
    mask_BL = torch.rand(batch, length, generator=generator) < 0.6
    return logp_BL.double(), old_BL.double(), ref_BL.double(), adv_B.double(), mask_BL


@pytest.mark.parametrize("batch,length", SHAPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "clip_eps,beta,num_tokens",
    [(0.2, 0.01, None), (None, 0.01, None), (0.2, 0.0, None), (0.1, 0.5, 1000), (None, 0.0, 37.5)],
)
def test_vectorized_loss_equals_per_token_loop(batch, length, seed, clip_eps, beta, num_tokens):
    logp_BL, old_BL, ref_BL, adv_B, mask_BL = _random_loss_inputs(batch, length, seed)
    loss, metrics = policy_loss(
        logp_BL, old_BL, adv_B, mask_BL, clip_eps=clip_eps, beta=beta, ref_logp_BL=ref_BL, num_tokens=num_tokens
    )
    lists = [t.tolist() for t in (logp_BL, old_BL, adv_B, mask_BL, ref_BL)]
    expected = reference_loss(*lists[:4], clip_eps, beta, lists[4], num_tokens)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    assert metrics["loss/total"] == pytest.approx(metrics["loss/policy"] + beta * metrics["loss/kl"])
    ratio_N = (logp_BL - old_BL).exp()[mask_BL]
    assert metrics["loss/ratio_mean"] == pytest.approx(ratio_N.mean().item())
    assert metrics["loss/ratio_max"] == pytest.approx(ratio_N.max().item())
    assert metrics["loss/clip_fraction"] == pytest.approx(reference_clip_fraction(*lists[:4], clip_eps))
    assert all(isinstance(value, float) for value in metrics.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(("clip_eps", "beta", "cap"), [(0.2, 0.01, 1.5), (None, 0.0, 1.1), (0.2, 0.01, 100.0)])
def test_stale_batch_weights_equal_a_per_token_loop_and_are_truncated_at_the_cap(seed, clip_eps, beta, cap):
    logp_BL, old_BL, ref_BL, adv_B, mask_BL = _random_loss_inputs(5, 11, seed)
    behaviour_BL = old_BL + 0.3 * torch.randn(old_BL.shape, generator=torch.Generator().manual_seed(seed + 10)).double()
    behaviour_BL[~mask_BL] = -math.inf  # off the mask nothing may leak, not even an infinite weight
    loss, metrics = policy_loss(
        logp_BL,
        old_BL,
        adv_B,
        mask_BL,
        clip_eps=clip_eps,
        beta=beta,
        ref_logp_BL=ref_BL,
        behaviour_logp_BL=behaviour_BL,
        behaviour_cap=cap,
    )
    lists = [t.tolist() for t in (logp_BL, old_BL, adv_B, mask_BL, ref_BL, behaviour_BL)]
    expected = reference_loss(*lists[:4], clip_eps, beta, lists[4], None, behaviour=lists[5], cap=cap)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    raw_N = (old_BL - behaviour_BL).exp()[mask_BL]
    assert metrics["loss/behaviour_weight_mean"] == pytest.approx(raw_N.clamp(max=cap).mean().item())
    assert metrics["loss/behaviour_capped_fraction"] == pytest.approx((raw_N > cap).double().mean().item())
    abs_log_ratio = (old_BL - behaviour_BL)[mask_BL].abs().mean().item()
    assert metrics["loss/behaviour_abs_log_ratio"] == pytest.approx(abs_log_ratio)
    if cap < 2:
        assert 0 < metrics["loss/behaviour_capped_fraction"] < 1  # the cap binds on some tokens, not all


def test_behaviour_equal_to_the_old_policy_changes_nothing():
    logp_BL, old_BL, ref_BL, adv_B, mask_BL = _random_loss_inputs(4, 9, 3)
    kwargs = {"clip_eps": 0.2, "beta": 0.01, "ref_logp_BL": ref_BL}
    plain, plain_metrics = policy_loss(logp_BL, old_BL, adv_B, mask_BL, **kwargs)
    same, metrics = policy_loss(logp_BL, old_BL, adv_B, mask_BL, behaviour_logp_BL=old_BL.clone(), **kwargs)
    assert torch.equal(plain, same)
    assert metrics["loss/behaviour_weight_mean"] == 1.0 and metrics["loss/behaviour_abs_log_ratio"] == 0.0
    assert "loss/behaviour_weight_mean" not in plain_metrics


def reference_clip_fraction(logp, old, adv, mask, clip_eps):
    """Share of masked tokens whose clipped term is the smaller one (the clip binds), by a loop."""
    binds, count = 0, 0
    for b in range(len(logp)):
        for pos in range(len(logp[b])):
            if mask[b][pos]:
                count += 1
                ratio = math.exp(logp[b][pos] - old[b][pos])
                if clip_eps is not None:
                    binds += min(max(ratio, 1 - clip_eps), 1 + clip_eps) * adv[b] < ratio * adv[b]
    return binds / count


def test_on_policy_ratio_is_one_and_loss_is_minus_mean_advantage():
    logp_BL, _, _, adv_B, mask_BL = _random_loss_inputs(4, 9, 0)
    loss, metrics = policy_loss(logp_BL, logp_BL.clone(), adv_B, mask_BL, clip_eps=0.2, beta=0.0)
    expected = -(adv_B[:, None].expand_as(mask_BL)[mask_BL]).mean()
    torch.testing.assert_close(loss, expected)
    assert metrics["loss/ratio_mean"] == 1.0 and metrics["loss/ratio_max"] == 1.0
    assert metrics["loss/clip_fraction"] == 0.0


@pytest.mark.parametrize(
    "ratio,advantage,expected,clipped",
    [
        (1.5, 2.0, 1.2 * 2.0, True),  # above 1 + eps, good sample: the gain is capped at 1.2 A
        (1.5, -2.0, 1.5 * -2.0, False),  # above 1 + eps, bad sample: the full penalty stays
        (0.5, -2.0, 0.8 * -2.0, True),  # below 1 - eps, bad sample: the relief is capped at 0.8 A
        (0.5, 2.0, 0.5 * 2.0, False),  # below 1 - eps, good sample: the full loss of gain stays
    ],
)
def test_clipping_is_pessimistic_on_both_sides(ratio, advantage, expected, clipped):
    """surrogate = min(r A, clip(r, 0.8, 1.2) A), worked out by hand for each side of the trust region."""
    logp_BL = torch.tensor([[math.log(ratio)]], dtype=torch.float64)
    old_BL = torch.zeros(1, 1, dtype=torch.float64)
    loss, metrics = policy_loss(
        logp_BL, old_BL, torch.tensor([advantage]), torch.ones(1, 1, dtype=torch.bool), clip_eps=0.2, beta=0.0
    )
    assert loss.item() == pytest.approx(-expected)
    assert metrics["loss/clip_fraction"] == float(clipped)
    unclipped, _ = policy_loss(
        logp_BL, old_BL, torch.tensor([advantage]), torch.ones(1, 1, dtype=torch.bool), clip_eps=None, beta=0.0
    )
    assert unclipped.item() == pytest.approx(-ratio * advantage)


def test_k3_is_zero_at_the_reference_and_positive_elsewhere():
    logp_BL, _, ref_BL, adv_B, mask_BL = _random_loss_inputs(4, 16, 1)
    _, metrics = policy_loss(logp_BL, logp_BL, adv_B, mask_BL, clip_eps=0.2, beta=0.1, ref_logp_BL=logp_BL)
    assert metrics["loss/kl"] == 0.0
    _, metrics = policy_loss(logp_BL, logp_BL, adv_B, mask_BL, clip_eps=0.2, beta=0.1, ref_logp_BL=ref_BL)
    assert metrics["loss/kl"] > 0.0
    for delta in (-2.0, -0.1, 0.3, 5.0):  # k3(x) = e^x - x - 1 > 0 for x != 0
        logp = torch.zeros(1, 1, dtype=torch.float64)
        _, metrics = policy_loss(
            logp,
            logp,
            torch.zeros(1),
            torch.ones(1, 1, dtype=torch.bool),
            clip_eps=None,
            beta=1.0,
            ref_logp_BL=logp + delta,
        )
        assert metrics["loss/kl"] == pytest.approx(math.exp(delta) - delta - 1)


def test_gradients_flow_to_logp_only():
    logp_BL, old_BL, ref_BL, adv_B, mask_BL = (t.clone() for t in _random_loss_inputs(3, 8, 2))
    for tensor in (logp_BL, old_BL, ref_BL, adv_B):
        tensor.requires_grad_(True)
    loss, _ = policy_loss(logp_BL, old_BL, adv_B, mask_BL, clip_eps=0.2, beta=0.05, ref_logp_BL=ref_BL)
    loss.backward()
    assert old_BL.grad is None and ref_BL.grad is None and adv_B.grad is None
    assert logp_BL.grad is not None and (logp_BL.grad[~mask_BL] == 0).all() and logp_BL.grad[mask_BL].abs().sum() > 0


def test_beta_zero_needs_no_reference_and_positive_beta_does():
    logp_BL, old_BL, _, adv_B, mask_BL = _random_loss_inputs(2, 5, 0)
    loss, metrics = policy_loss(logp_BL, old_BL, adv_B, mask_BL, clip_eps=0.2, beta=0.0, ref_logp_BL=None)
    assert torch.isfinite(loss) and metrics["loss/kl"] == 0.0
    with pytest.raises(ValueError, match="ref_logp_BL"):
        policy_loss(logp_BL, old_BL, adv_B, mask_BL, clip_eps=0.2, beta=0.01)


def test_infinite_logp_outside_the_mask_does_not_leak_nan():
    logp_BL = torch.tensor([[-1.0, float("-inf")]], requires_grad=True)
    old_BL = torch.tensor([[-1.2, float("-inf")]])
    mask_BL = torch.tensor([[True, False]])
    loss, metrics = policy_loss(
        logp_BL,
        old_BL,
        torch.tensor([1.0]),
        mask_BL,
        clip_eps=0.2,
        beta=0.1,
        ref_logp_BL=torch.tensor([[-1.1, float("-inf")]]),
    )
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp_BL.grad).all()
    assert math.isfinite(metrics["loss/kl"])
    empty, metrics = policy_loss(
        logp_BL, old_BL, torch.tensor([1.0]), torch.zeros_like(mask_BL), clip_eps=0.2, beta=0.0
    )
    assert empty.item() == 0.0 and metrics["loss/ratio_mean"] == 1.0
    assert all(math.isfinite(value) for value in metrics.values()), metrics  # nothing NaN for the log's means
    assert metrics["loss/clip_fraction"] == 0.0 and metrics["loss/ratio_max"] == 1.0


def test_global_token_count_splits_the_loss_across_workers():
    logp_BL, old_BL, ref_BL, adv_B, mask_BL = _random_loss_inputs(8, 12, 3)
    whole, _ = policy_loss(logp_BL, old_BL, adv_B, mask_BL, clip_eps=0.2, beta=0.01, ref_logp_BL=ref_BL)
    total_tokens = int(mask_BL.sum())
    parts = [
        policy_loss(
            logp_BL[rows],
            old_BL[rows],
            adv_B[rows],
            mask_BL[rows],
            clip_eps=0.2,
            beta=0.01,
            ref_logp_BL=ref_BL[rows],
            num_tokens=total_tokens,
        )[0]
        for rows in (slice(0, 3), slice(3, 8))
    ]
    torch.testing.assert_close(parts[0] + parts[1], whole)


def test_a_token_share_below_one_is_kept_and_only_zero_tokens_fall_back_to_one():
    """One scored token over two ranks is a share of 0.5 each: flooring it at 1 halved that rank's loss."""
    logp_BL, old_BL, ref_BL, adv_B, mask_BL = _random_loss_inputs(2, 6, 4)
    mask_BL = torch.zeros_like(mask_BL)
    mask_BL[0, 2] = True
    kwargs = {"clip_eps": 0.2, "beta": 0.01, "ref_logp_BL": ref_BL}
    share, _ = policy_loss(logp_BL, old_BL, adv_B, mask_BL, num_tokens=0.5, **kwargs)
    one, _ = policy_loss(logp_BL, old_BL, adv_B, mask_BL, num_tokens=1.0, **kwargs)
    torch.testing.assert_close(share, 2 * one)
    none, _ = policy_loss(logp_BL, old_BL, adv_B, torch.zeros_like(mask_BL), num_tokens=0.0, **kwargs)
    assert none.item() == 0.0
