"""Critical step selection (ALGORITHM.md section 3) against loop references, plus its invariants.

Shape legend: B samples, G group size, T steps, K selected steps, L image tokens, D embedding width.
"""

from __future__ import annotations

import math

import pytest
import torch
from support import ToyGenerator

from maskfocus.critical import (
    clip_step_embeddings,
    final_embeddings,
    group_mean_similarity,
    information_gain,
    select_steps,
    step_gains,
    step_similarity,
    vq_step_embeddings,
)
from maskfocus.sampling import sample, seeded_generator

SHAPES = [(2, 4, 3), (4, 8, 5), (6, 16, 2), (8, 5, 7)]  # (B, T, D)


def reference_cosine(u: list[float], v: list[float]) -> float:
    dot = sum(x * y for x, y in zip(u, v, strict=True))
    return dot / (math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v)))


def reference_top_gain(gain: list[float], k: int) -> list[int]:
    ranked = sorted(range(1, len(gain)), key=lambda j: (-gain[j], j))
    return sorted(ranked[:k])


@pytest.mark.parametrize("batch,steps,width", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_similarity_group_mean_and_gain_match_loops(batch, steps, width, seed):
    generator = torch.Generator().manual_seed(seed)
    step_BTD = torch.randn(batch, steps, width, generator=generator)
    final_BD = torch.randn(batch, width, generator=generator)
    s_BT = step_similarity(step_BTD, final_BD)
    expected = [
        [reference_cosine(step_BTD[b, t].tolist(), final_BD[b].tolist()) for t in range(steps)] for b in range(batch)
    ]
    torch.testing.assert_close(s_BT, torch.tensor(expected))

    group_size = 2
    mean_BT = group_mean_similarity(s_BT, group_size)
    for b in range(batch):
        members = range(b // group_size * group_size, (b // group_size + 1) * group_size)
        for t in range(steps):
            assert mean_BT[b, t].item() == pytest.approx(sum(s_BT[m, t].item() for m in members) / group_size)

    gain_BT = information_gain(s_BT)
    assert (gain_BT[:, 0] == float("-inf")).all()
    for b in range(batch):
        for t in range(1, steps):
            assert gain_BT[b, t].item() == pytest.approx(abs(s_BT[b, t].item() - s_BT[b, t - 1].item()), abs=1e-6)

    s_again, gain_again = step_gains(step_BTD, final_BD, group_size)
    torch.testing.assert_close(s_again, mean_BT)
    torch.testing.assert_close(gain_again, information_gain(mean_BT))


@pytest.mark.parametrize("batch,steps,k", [(2, 4, 3), (4, 8, 2), (6, 16, 6), (4, 64, 6), (3, 2, 1)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_critical_picks_top_k_gain_per_sample(batch, steps, k, seed):
    gain_BT = information_gain(torch.rand(batch, steps, generator=torch.Generator().manual_seed(seed)))
    steps_BK = select_steps(gain_BT, k, "critical", group_size=1, per_sample=True)
    assert steps_BK.dtype == torch.long and steps_BK.shape == (batch, k)
    assert steps_BK.tolist() == [reference_top_gain(gain_BT[b].tolist(), k) for b in range(batch)]


@pytest.mark.parametrize("group_size,seed", [(2, 0), (3, 1), (4, 2)])
def test_critical_shares_the_steps_of_the_group_mean_gain(group_size, seed):
    generator = torch.Generator().manual_seed(seed)
    s_BT = torch.rand(3 * group_size, 10, generator=generator)
    per_sample_gain_BT = information_gain(s_BT)
    steps_BK = select_steps(per_sample_gain_BT, 3, "critical", group_size)
    for g in range(3):
        rows = per_sample_gain_BT[g * group_size : (g + 1) * group_size]
        expected = reference_top_gain(rows.mean(0).tolist(), 3)
        assert steps_BK[g * group_size : (g + 1) * group_size].tolist() == [expected] * group_size
    shared_gain_BT = information_gain(group_mean_similarity(s_BT, group_size))  # the default pipeline
    torch.testing.assert_close(
        select_steps(shared_gain_BT, 3, "critical", group_size),
        select_steps(shared_gain_BT, 3, "critical", group_size, per_sample=True),
    )


def test_critical_breaks_ties_toward_earlier_steps_and_never_picks_step_zero():
    gain_BT = information_gain(torch.zeros(2, 6))  # every gain is 0
    assert select_steps(gain_BT, 3, "critical", 2).tolist() == [[1, 2, 3]] * 2
    gain_BT = torch.tensor([[float("-inf"), float("nan"), 0.1, 0.3, 0.2]])
    assert select_steps(gain_BT, 2, "critical", 1).tolist() == [[3, 4]]  # a NaN gain does not outrank real ones


def test_random_steps_are_distinct_sorted_shared_per_group_and_reproducible():
    gain_BT = torch.zeros(12, 16)
    steps_BK = select_steps(gain_BT, 5, "random", 4, torch.Generator().manual_seed(0))
    again_BK = select_steps(gain_BT, 5, "random", 4, torch.Generator().manual_seed(0))
    other_BK = select_steps(gain_BT, 5, "random", 4, torch.Generator().manual_seed(1))
    assert torch.equal(steps_BK, again_BK) and not torch.equal(steps_BK, other_BK)
    assert steps_BK.shape == (12, 5) and steps_BK.dtype == torch.long
    assert ((steps_BK >= 0) & (steps_BK < 16)).all()
    assert (steps_BK[:, 1:] > steps_BK[:, :-1]).all()  # sorted and distinct
    groups = steps_BK.view(3, 4, 5)
    assert (groups == groups[:, :1]).all()
    assert len({tuple(row) for row in groups[:, 0].tolist()}) == 3
    per_sample_BK = select_steps(gain_BT, 5, "random", 4, torch.Generator().manual_seed(0), per_sample=True)
    assert len({tuple(row) for row in per_sample_BK.tolist()}) == 12


def test_random_steps_are_uniform_over_all_steps_including_zero():
    steps_BK = select_steps(torch.zeros(3000, 8), 3, "random", 1, torch.Generator().manual_seed(0))
    counts = torch.bincount(steps_BK.flatten(), minlength=8).float()
    expected = 3000 * 3 / 8
    assert ((counts - expected).abs() < 0.1 * expected).all(), counts
    assert select_steps(torch.zeros(2, 4), 4, "random", 2, torch.Generator()).tolist() == [[0, 1, 2, 3]] * 2


def test_all_returns_every_step_and_ignores_k():
    assert select_steps(torch.rand(3, 7), 2, "all", 3).tolist() == [list(range(7))] * 3


def test_bad_selection_settings_are_clear_errors():
    gain_BT = information_gain(torch.rand(4, 6))
    with pytest.raises(ValueError, match=r"<= num_steps - 1 \(5\)"):
        select_steps(gain_BT, 6, "critical", 2)
    with pytest.raises(ValueError, match=r"<= num_steps \(6\)"):
        select_steps(gain_BT, 7, "random", 2, torch.Generator())
    with pytest.raises(ValueError, match="strategy must be one of"):
        select_steps(gain_BT, 2, "greedy", 2)
    with pytest.raises(ValueError, match=">= 1"):
        select_steps(gain_BT, 0, "critical", 2)
    with pytest.raises(ValueError, match="multiple of the group size"):
        select_steps(gain_BT, 2, "critical", 3)
    with pytest.raises(ValueError, match="Generator"):
        select_steps(gain_BT, 2, "random", 2)


def test_vq_embeddings_flatten_codebook_vectors_of_each_step():
    model = ToyGenerator()
    x0_BTL = torch.randint(0, 8, (3, 4, 16), generator=torch.Generator().manual_seed(0))
    embed_BTD = vq_step_embeddings(model.codebook_vectors, x0_BTL)
    assert embed_BTD.shape == (3, 4, 16 * 3)
    for b in range(3):
        for t in range(4):
            expected = torch.cat([model.embedding[token] for token in x0_BTL[b, t].tolist()])
            assert torch.equal(embed_BTD[b, t], expected)
    assert torch.equal(final_embeddings(model.codebook_vectors, x0_BTL[:, 2]), embed_BTD[:, 2])


@pytest.mark.parametrize("chunk_size", [None, 1, 5])
def test_clip_embeddings_embed_each_decoded_step(chunk_size):
    model = ToyGenerator()
    projection = torch.randn(3 * 4 * 4, 6, generator=torch.Generator().manual_seed(1))

    def image_embed(images_NCHW: torch.Tensor) -> torch.Tensor:
        return images_NCHW.flatten(1) @ projection

    x0_BTL = torch.randint(0, 8, (2, 5, 16), generator=torch.Generator().manual_seed(0))
    embed_BTD = clip_step_embeddings(model.decode, image_embed, x0_BTL, chunk_size=chunk_size)
    assert embed_BTD.shape == (2, 5, 6)
    for b in range(2):
        for t in range(5):
            torch.testing.assert_close(embed_BTD[b, t], image_embed(model.decode(x0_BTL[b, t][None]))[0])


def test_last_step_of_a_real_trajectory_is_identical_to_the_final_image():
    model = ToyGenerator()
    condition = model.encode_prompts(["a", "b"]).repeat_interleave(2)
    result = sample(
        model,
        condition,
        None,
        num_steps=6,
        cfg_scale=1.0,
        gumbel_temperature_initial=2.0,
        generator=seeded_generator(0),
        record=True,
    )
    s_BT, gain_BT = step_gains(
        vq_step_embeddings(model.codebook_vectors, result.x0_BTL),
        final_embeddings(model.codebook_vectors, result.tokens_BL),
        group_size=2,
    )
    torch.testing.assert_close(s_BT[:, -1], torch.ones(4))
    assert torch.isfinite(gain_BT[:, 1:]).all() and (gain_BT[:, 1:] >= 0).all()
    steps_BK = select_steps(gain_BT, 3, "critical", group_size=2)
    assert (steps_BK.view(2, 2, 3) == steps_BK.view(2, 2, 3)[:, :1]).all()  # one choice per group
    for b in (0, 2):  # the group's gains (its members share them) decide, as the loop picks from them
        assert torch.equal(gain_BT[b], gain_BT[b + 1])
        assert sorted(steps_BK[b].tolist()) == sorted(reference_top_gain(gain_BT[b].tolist(), 3))
