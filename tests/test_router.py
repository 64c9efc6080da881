"""Entropy routing (ALGORITHM.md section 2) against loop references, and plugged into the sampler.

Shape legend: B samples, G group size, T steps, L image tokens, V codebook size.
"""

from __future__ import annotations

import math

import pytest
import torch
from support import (
    BannedTokenGenerator,
    ToyGenerator,
    assert_least_confident_go_back,
    noise_per_step,
    record_gumbel_noise,
    reference_entropy,
    reference_guided_logits,
)

from maskfocus.router import EntropyRouter, exploration_temperature, route_lowest_entropy, token_entropy
from maskfocus.sampling import mask_schedule, sample, seeded_generator


def reference_routes(entropy: list[float], group_size: int) -> list[bool]:
    routes = [False] * len(entropy)
    for start in range(0, len(entropy), group_size):
        members = list(range(start, start + group_size))
        ranked = sorted(members, key=lambda b: (entropy[b], b))
        for b in ranked[: group_size // 2]:
            routes[b] = True
    return routes


@pytest.mark.parametrize("group_size,num_groups", [(2, 1), (2, 5), (3, 4), (4, 3), (5, 2), (8, 2), (1, 4)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_routes_lowest_entropy_half_of_each_group(group_size, num_groups, seed):
    generator = torch.Generator().manual_seed(seed)
    entropy_B = torch.rand(group_size * num_groups, generator=generator)
    routes_B = route_lowest_entropy(entropy_B, group_size)
    assert routes_B.dtype == torch.bool
    assert routes_B.tolist() == reference_routes(entropy_B.tolist(), group_size)
    assert routes_B.view(num_groups, group_size).sum(-1).tolist() == [group_size // 2] * num_groups


def test_ties_go_to_the_lower_index_deterministically():
    entropy_B = torch.tensor([1.0, 1.0, 1.0, 1.0, 0.5, 2.0, 0.5, 0.5])
    routes_B = route_lowest_entropy(entropy_B, group_size=4)
    assert routes_B.tolist() == [True, True, False, False, True, False, True, False]


@pytest.mark.parametrize("batch,seed", [(4, 0), (7, 1), (16, 2)])
def test_batch_scope_routes_lower_half_of_the_whole_batch(batch, seed):
    entropy_B = torch.rand(batch, generator=torch.Generator().manual_seed(seed))
    routes_B = route_lowest_entropy(entropy_B, group_size=3, scope="batch")  # group size unused (7 % 3 != 0)
    assert routes_B.tolist() == reference_routes(entropy_B.tolist(), batch)


def test_bad_scope_or_group_size_is_a_clear_error():
    with pytest.raises(ValueError, match="scope"):
        route_lowest_entropy(torch.rand(4), 2, scope="median")
    with pytest.raises(ValueError, match="multiple of the group size"):
        route_lowest_entropy(torch.rand(5), 2)
    with pytest.raises(ValueError, match="scope"):
        EntropyRouter(group_size=2, scope="device")
    with pytest.raises(ValueError, match="router group_size must be >= 1, got 0"):
        EntropyRouter(group_size=0)
    for a, b, c in ((-0.1, 1.0, 1.0), (1.0, 0.0, 1.0), (1.0, 1.0, 0.0)):
        with pytest.raises(ValueError, match=rf"needs a >= 0, b > 0, c > 0 \(got a={a}, b={b}, c={c}\)"):
            EntropyRouter(a, b, c, group_size=2)


@pytest.mark.parametrize("seed", [0, 1])
def test_token_entropy_and_temperature_match_the_formulas(seed):
    generator = torch.Generator().manual_seed(seed)
    logits_BLV = 3 * torch.randn(2, 5, 7, generator=generator)
    entropy_BL = token_entropy(logits_BLV)
    for b in range(2):
        for pos in range(5):
            probs = [math.exp(x) for x in logits_BLV[b, pos].tolist()]
            probs = [p / sum(probs) for p in probs]
            expected = -sum(p * math.log(p) for p in probs)
            assert entropy_BL[b, pos].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
            tau = exploration_temperature(entropy_BL[b, pos], a=2.5, b=3.0, c=0.7).item()
            assert tau == pytest.approx(2.5 * math.exp(-entropy_BL[b, pos].item() / 3.0) + 0.7, rel=1e-6)
    assert exploration_temperature(torch.zeros(1)).item() == pytest.approx(3.2)  # a + c for a certain token


@pytest.mark.parametrize("a,b,c,seed", [(2.5, 3.0, 0.7, 0), (1.0, 0.5, 0.2, 1)])
def test_router_temperature_is_tau_on_routed_samples_and_one_elsewhere(a, b, c, seed):
    generator = torch.Generator().manual_seed(seed)
    logits_BLV = 2 * torch.randn(8, 6, 5, generator=generator)
    masked_BL = torch.rand(8, 6, generator=generator) < 0.7
    entropy_B = torch.rand(8, generator=generator)
    router = EntropyRouter(a, b, c, group_size=4)
    temperature_BL, routes_B = router(3, entropy_B, token_entropy(logits_BLV), masked_BL)
    assert torch.equal(routes_B, route_lowest_entropy(entropy_B, 4))
    expected_BL = a * torch.exp(-token_entropy(logits_BLV) / b) + c
    torch.testing.assert_close(temperature_BL[routes_B], expected_BL[routes_B])
    assert (temperature_BL[~routes_B] == 1.0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_token_entropy_gives_minus_inf_logits_zero_weight_and_finite_gradients(seed):
    logits_BLV = 3 * torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(seed))
    logits_BLV[0, :, 2] = float("-inf")
    logits_BLV[1, 1, 1:] = float("-inf")  # one certain token: entropy 0
    logits_BLV.requires_grad_(True)
    entropy_BL = token_entropy(logits_BLV)
    for b in range(2):
        for pos in range(4):
            expected = reference_entropy(logits_BLV[b, pos].tolist())
            assert entropy_BL[b, pos].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    entropy_BL.sum().backward()
    assert torch.isfinite(logits_BLV.grad).all()


def _conditions(model, num_prompts, group_size, cfg):
    prompts = [f"prompt {i}" for i in range(num_prompts)]
    condition = model.encode_prompts(prompts).repeat_interleave(group_size)  # samples of a group are adjacent
    uncondition = model.encode_prompts([""]).repeat_interleave(len(condition)) if cfg != 1.0 else None
    return condition, uncondition


def _sample(model, router, seed=0, num_prompts=3, group_size=4, steps=6, cfg=1.0, tau0=2.0):
    condition, uncondition = _conditions(model, num_prompts, group_size, cfg)
    return sample(
        model,
        condition,
        uncondition,
        num_steps=steps,
        cfg_scale=cfg,
        gumbel_temperature_initial=tau0,
        generator=seeded_generator(seed),
        record=True,
        token_temperature=router,
    )


def _reference_logits(model, result, step, num_prompts, group_size, cfg):
    """Guided logits (float64) of `step`, recomputed from the recorded input state with two separate forwards."""
    condition, uncondition = _conditions(model, num_prompts, group_size, cfg)
    inputs_BL = result.x0_BTL[:, step].masked_fill(result.masks_BTL[:, step], model.mask_token_id)
    return reference_guided_logits(model, inputs_BL, condition, uncondition, cfg, step, result.masks_BTL.shape[1])


def _mean_masked_entropy(logits_LV, masked_L) -> float:
    masked = [pos for pos in range(masked_L.shape[0]) if masked_L[pos]]
    return sum(reference_entropy(logits_LV[pos].tolist()) for pos in masked) / len(masked)


@pytest.mark.parametrize("seed,cfg", [(0, 3.0), (1, 5.0)])
def test_routes_follow_the_masked_mean_entropy_of_the_guided_distribution_under_cfg(seed, cfg):
    model, num_prompts, group_size, steps = ToyGenerator(seed=seed), 2, 4, 5
    result = _sample(model, EntropyRouter(group_size=group_size), seed, num_prompts, group_size, steps, cfg=cfg)
    largest_cfg_effect = 0.0
    for step in range(steps):
        guided_BLV = _reference_logits(model, result, step, num_prompts, group_size, cfg)
        cond_BLV = _reference_logits(model, result, step, num_prompts, group_size, 1.0)
        masked_BL = result.masks_BTL[:, step]
        entropy = [_mean_masked_entropy(guided_BLV[b], masked_BL[b]) for b in range(len(masked_BL))]
        assert result.entropy_BT[:, step].tolist() == pytest.approx(entropy, rel=1e-4, abs=1e-5)
        assert result.routes_BT[:, step].tolist() == reference_routes(entropy, group_size)
        for b in range(len(masked_BL)):
            largest_cfg_effect = max(
                largest_cfg_effect, abs(entropy[b] - _mean_masked_entropy(cond_BLV[b], masked_BL[b]))
            )
    assert largest_cfg_effect > 0.1  # guidance really moves the entropy the router sees


@pytest.mark.parametrize("seed,cfg,tau0", [(0, 3.0, 0.0), (1, 3.0, 2.0), (2, 1.0, 2.0)])
def test_exploratory_branch_tempers_the_draw_and_the_confidence_with_tau_of_h(monkeypatch, seed, cfg, tau0):
    """Routed samples: draw = argmax(log q + g), confidence = log q(drawn) + tau_i g' with q = softmax(l / tau(H)) and
    tau(H) = 2.5 exp(-H / 3) + 0.7 per token, H the entropy of the guided softmax; unrouted ones use q = softmax(l)."""
    noises = record_gumbel_noise(monkeypatch)
    model, num_prompts, group_size, steps = ToyGenerator(seed=seed), 2, 4, 6
    result = _sample(model, EntropyRouter(group_size=group_size), seed, num_prompts, group_size, steps, cfg, tau0)
    counts = mask_schedule(16, steps)
    num_unlike_untempered = 0
    for step, (draw_noise_BLV, confidence_noise_BL) in enumerate(noise_per_step(noises)):
        guided_BLV = _reference_logits(model, result, step, num_prompts, group_size, cfg)
        tau = tau0 * (1 - (step + 1) / steps)
        for b in range(len(guided_BLV)):
            is_routed = bool(result.routes_BT[b, step])
            drawn_L, masked_L = result.x0_BTL[b, step], result.masks_BTL[b, step]
            positions = [pos for pos in range(16) if masked_L[pos]]
            log_q, log_p = {}, {}
            for pos in positions:
                temperature = 2.5 * math.exp(-reference_entropy(guided_BLV[b, pos].tolist()) / 3.0) + 0.7
                log_q[pos] = torch.log_softmax(guided_BLV[b, pos] / (temperature if is_routed else 1.0), dim=-1)
                log_p[pos] = torch.log_softmax(guided_BLV[b, pos], dim=-1)
                scores = (log_q[pos] + draw_noise_BLV[b, pos].double()).tolist()
                assert scores[drawn_L[pos]] >= max(scores) - 1e-5
            if step == steps - 1:
                continue  # n_T = 0: the last step re-masks nothing
            noise = {pos: tau * confidence_noise_BL[b, pos].item() for pos in positions}
            confidence = {pos: log_q[pos][drawn_L[pos]].item() + noise[pos] for pos in positions}
            assert_least_confident_go_back(confidence, result.masks_BTL[b, step + 1], counts[step + 1])
            untempered = sorted(positions, key=lambda pos: log_p[pos][drawn_L[pos]].item() + noise[pos])
            remasked = set(result.masks_BTL[b, step + 1].nonzero().flatten().tolist())
            num_unlike_untempered += is_routed and set(untempered[: counts[step + 1]]) != remasked
    assert num_unlike_untempered > 0  # tempering changed some order, so the check above could see it missing


def test_router_with_minus_inf_logits_keeps_entropy_finite_and_never_draws_banned_tokens():
    model = BannedTokenGenerator(banned=(0, 3))
    result = _sample(model, EntropyRouter(group_size=4), seed=1)
    assert torch.isfinite(result.entropy_BT).all()
    assert (result.routes_BT.view(-1, 4, result.routes_BT.shape[1]).sum(1) == 2).all()
    assert not torch.isin(result.x0_BTL, torch.tensor([0, 3])).any()


@pytest.mark.parametrize("group_size", [2, 3, 4])
def test_sampler_records_floor_half_of_each_group_per_step(group_size):
    result = _sample(ToyGenerator(), EntropyRouter(group_size=group_size), group_size=group_size)
    routes_BT, entropy_BT = result.routes_BT, result.entropy_BT
    num_steps = routes_BT.shape[1]
    per_group = routes_BT.view(-1, group_size, num_steps).sum(1)
    assert (per_group == group_size // 2).all()
    for step in range(num_steps):  # routed on the very entropies the sampler recorded
        assert torch.equal(routes_BT[:, step], route_lowest_entropy(entropy_BT[:, step], group_size))


def test_routing_changes_samples_and_unit_temperature_does_not():
    model = ToyGenerator()
    plain = _sample(model, None, seed=3)
    routed = _sample(model, EntropyRouter(group_size=4), seed=3)
    neutral = _sample(model, EntropyRouter(a=0.0, b=1.0, c=1.0, group_size=4), seed=3)  # tau == 1 everywhere
    assert not torch.equal(plain.tokens_BL, routed.tokens_BL)
    assert torch.equal(plain.tokens_BL, neutral.tokens_BL)
    assert neutral.routes_BT.any() and not plain.routes_BT.any()
