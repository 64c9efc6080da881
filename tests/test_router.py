"""Entropy routing (ALGORITHM.md section 2) against loop references, and plugged into the sampler.

Shape legend: B samples, G group size, T steps, L image tokens, V codebook size.
"""

from __future__ import annotations

import math

import pytest
import torch
from support import ToyGenerator

from maskfocus.router import EntropyRouter, exploration_temperature, route_lowest_entropy, token_entropy
from maskfocus.sampling import sample, seeded_generator


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
    temperature_BL, routes_B = EntropyRouter(a, b, c, group_size=4)(3, entropy_B, logits_BLV, masked_BL)
    assert torch.equal(routes_B, route_lowest_entropy(entropy_B, 4))
    expected_BL = a * torch.exp(-token_entropy(logits_BLV) / b) + c
    torch.testing.assert_close(temperature_BL[routes_B], expected_BL[routes_B])
    assert (temperature_BL[~routes_B] == 1.0).all()


def _sample(model, router, seed=0, num_prompts=3, group_size=4, steps=6):
    prompts = [f"prompt {i}" for i in range(num_prompts)]
    condition = model.encode_prompts(prompts).repeat_interleave(group_size)  # samples of a group are adjacent
    return sample(
        model,
        condition,
        None,
        num_steps=steps,
        cfg_scale=1.0,
        gumbel_temperature_initial=2.0,
        generator=seeded_generator(seed),
        record=True,
        token_temperature=router,
    )


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
