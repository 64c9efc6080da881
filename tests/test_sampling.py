from __future__ import annotations

import math

import pytest
import torch
from support import ToyGenerator

from maskfocus.sampling import (
    guided_logits,
    gumbel_temperature,
    mask_schedule,
    sample,
    sample_prompts,
    seeded_generator,
)


def reference_schedule(num_tokens: int, num_steps: int) -> list[int]:
    counts = [num_tokens]
    for i in range(num_steps - 1):
        value = math.floor(num_tokens * math.cos(math.pi / 2 * (i + 1) / num_steps))
        value = min(counts[-1] - 1, max(1, value))
        counts.append(max(0, value))
    return counts + [0]


@pytest.mark.parametrize("num_tokens,num_steps", [(256, 12), (256, 16), (16, 4), (16, 16), (1024, 64), (5, 3)])
def test_schedule_counts_match_the_cosine_formula(num_tokens, num_steps):
    counts = mask_schedule(num_tokens, num_steps)
    assert counts == reference_schedule(num_tokens, num_steps)
    assert counts[0] == num_tokens and counts[-1] == 0 and len(counts) == num_steps + 1
    assert all(b < a for a, b in zip(counts, counts[1:], strict=False) if a > 0)


def test_gumbel_temperature_falls_linearly_to_zero():
    values = [gumbel_temperature(i, 8, 2.0) for i in range(8)]
    assert values[-1] == 0.0
    diffs = [a - b for a, b in zip(values, values[1:], strict=False)]
    assert all(d == pytest.approx(0.25) for d in diffs)


def _run(model, seed=0, record=True, cfg=2.0, steps=6, batch=5, **options):
    cond = model.encode_prompts([f"p{i}" for i in range(batch)])
    uncond = model.encode_prompts([""]).repeat_interleave(batch) if cfg != 1.0 else None
    return sample(
        model,
        cond,
        uncond,
        num_steps=steps,
        cfg_scale=cfg,
        gumbel_temperature_initial=2.0,
        generator=seeded_generator(seed),
        record=record,
        **options,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_committed_tokens_never_change_and_final_grid_has_no_mask(seed):
    model = ToyGenerator(seed=seed)
    result = _run(model, seed=seed)
    mask_id = model.mask_token_id
    assert (result.tokens_BL != mask_id).all()
    masks, x0 = result.masks_BTL, result.x0_BTL
    steps = masks.shape[1]
    assert masks[:, 0].all()
    for t in range(1, steps):
        known = ~masks[:, t]
        assert (x0[:, t][known] == x0[:, t - 1][known]).all()  # committed before step t, unchanged at t
        assert (result.tokens_BL[known] == x0[:, t][known]).all()  # and kept to the end
    counts = mask_schedule(16, steps)
    assert masks.sum(-1).tolist() == [counts[:-1]] * masks.shape[0]


def test_masks_shrink_monotonically_and_are_nested():
    result = _run(ToyGenerator())
    masks = result.masks_BTL
    for t in range(1, masks.shape[1]):
        assert not (masks[:, t] & ~masks[:, t - 1]).any()  # a position never becomes masked again


def test_same_seed_same_images_and_different_seed_differs():
    model = ToyGenerator()
    a, b, c = _run(model, seed=7), _run(model, seed=7), _run(model, seed=8)
    assert torch.equal(a.tokens_BL, b.tokens_BL)
    assert not torch.equal(a.tokens_BL, c.tokens_BL)


def test_near_zero_temperature_draws_the_argmax_of_the_guided_logits():
    model = ToyGenerator()
    steps, batch, cfg = 5, 4, 2.0
    result = _run(model, steps=steps, batch=batch, cfg=cfg, temperature=1e-6)
    cond = model.encode_prompts([f"p{i}" for i in range(batch)])
    uncond = model.encode_prompts([""]).repeat_interleave(batch)
    for step in range(steps):
        masked_BL = result.masks_BTL[:, step]
        inputs_BL = result.x0_BTL[:, step].masked_fill(masked_BL, model.mask_token_id)
        logits_BLV = guided_logits(model, inputs_BL, cond, uncond, cfg, step, steps)
        assert torch.equal(result.x0_BTL[:, step][masked_BL], logits_BLV.argmax(-1)[masked_BL])
    assert torch.equal(_run(model, seed=3).tokens_BL, _run(model, seed=3, temperature=1.0).tokens_BL)  # default
    hot, cold = _run(model, temperature=3.0), _run(model, temperature=0.3)
    assert hot.entropy_BT[:, 0].mean() > cold.entropy_BT[:, 0].mean()  # same all-mask input at step 0


def test_cfg_uses_one_batched_forward_per_step_and_none_without_guidance():
    model = ToyGenerator()
    _run(model, cfg=3.0, steps=5)
    assert model.calls == 5
    model.calls = 0
    _run(model, cfg=1.0, steps=5)
    assert model.calls == 5


def test_guided_entropy_is_recorded_per_sample_and_step():
    result = _run(ToyGenerator(), steps=4, batch=3)
    assert result.entropy_BT.shape == (3, 4)
    assert (result.entropy_BT >= 0).all()
    assert (result.entropy_BT <= math.log(8) + 1e-5).all()


def test_too_many_steps_is_a_clear_error():
    with pytest.raises(ValueError, match="num_steps"):
        _run(ToyGenerator(), steps=17)


def test_sample_prompts_records_nothing_by_default():
    model = ToyGenerator()
    result = sample_prompts(
        model, ["a", "b"], num_steps=3, cfg_scale=2.0, gumbel_temperature_initial=1.0, generator=seeded_generator(0)
    )
    assert result.masks_BTL is None and result.tokens_BL.shape == (2, 16)


def test_seeded_generators_differ_across_workers_and_iterations():
    draws = {tuple(torch.rand(4, generator=seeded_generator(0, i, w)).tolist()) for i in range(3) for w in range(3)}
    assert len(draws) == 9
