from __future__ import annotations

import math
from types import SimpleNamespace

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

from maskfocus.models.base import Condition
from maskfocus.router import token_entropy
from maskfocus.sampling import (
    guided_logits,
    gumbel_temperature,
    mask_schedule,
    masked_mean,
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


def test_schedule_counts_of_common_sizes_are_the_hand_computed_ones():
    """floor(L cos(pi/2 t/T)), worked out by hand, so that the loop reference above cannot share a mistake with the
    implementation it was written beside (e.g. 16 cos(pi/8) = 14.78 -> 14)."""
    assert mask_schedule(16, 4) == [16, 14, 11, 6, 0]
    assert mask_schedule(16, 6) == [16, 15, 13, 11, 8, 4, 0]
    assert mask_schedule(256, 12) == [256, 253, 247, 236, 221, 203, 181, 155, 128, 97, 66, 33, 0]


def test_gumbel_temperature_falls_linearly_to_zero():
    values = [gumbel_temperature(i, 8, 2.0) for i in range(8)]
    assert values[-1] == 0.0
    diffs = [a - b for a, b in zip(values, values[1:], strict=False)]
    assert all(d == pytest.approx(0.25) for d in diffs)


def test_gumbel_temperature_is_tau0_times_one_minus_next_step_fraction():
    """Our schedule, kept on purpose (not the released code's linspace, which starts at tau_0): see its docstring."""
    assert [gumbel_temperature(i, 4, 2.0) for i in range(4)] == [1.5, 1.0, 0.5, 0.0]
    for num_steps, initial in [(4, 2.0), (12, 4.0), (64, 2.0), (1, 3.0)]:
        values = [gumbel_temperature(i, num_steps, initial) for i in range(num_steps)]
        assert values[0] == initial * (1 - 1 / num_steps)
        assert values[-1] == 0.0


def _conditions(model, batch, cfg):
    cond = model.encode_prompts([f"p{i}" for i in range(batch)])
    uncond = model.encode_prompts([""]).repeat_interleave(batch) if cfg != 1.0 else None
    return cond, uncond


def _run(model, seed=0, record=True, cfg=2.0, steps=6, batch=5, tau0=2.0, **options):
    cond, uncond = _conditions(model, batch, cfg)
    return sample(
        model,
        cond,
        uncond,
        num_steps=steps,
        cfg_scale=cfg,
        gumbel_temperature_initial=tau0,
        generator=seeded_generator(seed),
        record=record,
        **options,
    )


def _reference_logits(model, result, step, cfg, temperature=1.0):
    """Guided logits (float64) of `step`, recomputed from the recorded input state with two separate forwards."""
    cond, uncond = _conditions(model, result.tokens_BL.shape[0], cfg)
    inputs_BL = result.x0_BTL[:, step].masked_fill(result.masks_BTL[:, step], model.mask_token_id)
    num_steps = result.masks_BTL.shape[1]
    return reference_guided_logits(model, inputs_BL, cond, uncond, cfg, step, num_steps) / temperature


def _count_forward_rows(model) -> list[int]:
    """Spy on model.logits: the returned list receives the batch size of every forward."""
    rows, forward = [], model.logits

    def logits(tokens_BL, *args, **kwargs):
        rows.append(tokens_BL.shape[0])
        return forward(tokens_BL, *args, **kwargs)

    model.logits = logits
    return rows


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
    counts = mask_schedule(masks.shape[2], masks.shape[1])  # and each step's input has the schedule's count masked
    for t in range(masks.shape[1]):
        assert masks[:, t].sum(-1).tolist() == [counts[t]] * masks.shape[0]


def test_same_seed_same_images_and_different_seed_differs():
    model = ToyGenerator()
    a, b, c = _run(model, seed=7), _run(model, seed=7), _run(model, seed=8)
    assert torch.equal(a.tokens_BL, b.tokens_BL)
    assert not torch.equal(a.tokens_BL, c.tokens_BL)


def test_both_noise_streams_follow_the_seed(monkeypatch):
    """The token draw's and the confidence ordering's Gumbel noise each repeat with the seed and change with it:
    differing images need only one of them to follow it, so a stream drawn from a fixed generator passed the test
    above, and every worker and iteration would share that part of the noise."""
    noises = record_gumbel_noise(monkeypatch)
    runs = []
    for seed in (7, 7, 8):
        noises.clear()
        _run(ToyGenerator(), seed=seed)
        runs.append(noise_per_step(noises))
    for kind in (0, 1):  # 0: the draws (B, L, V); 1: the confidence noise (B, L), none at the last step
        same, other, new = ([step[kind] for step in run if step[kind] is not None] for run in runs)
        assert len(same) >= 5 and all(torch.equal(x, y) for x, y in zip(same, other, strict=True))
        assert not any(torch.equal(x, y) for x, y in zip(same, new, strict=True))


def test_near_zero_temperature_draws_the_argmax_of_the_guided_logits():
    model = ToyGenerator()
    steps, batch, cfg = 5, 4, 2.0
    result = _run(model, steps=steps, batch=batch, cfg=cfg, temperature=1e-6)
    cond = model.encode_prompts([f"p{i}" for i in range(batch)])
    uncond = model.encode_prompts([""]).repeat_interleave(batch)
    for step in range(steps):
        masked_BL = result.masks_BTL[:, step]
        inputs_BL = result.x0_BTL[:, step].masked_fill(masked_BL, model.mask_token_id)
        logits_BLV = reference_guided_logits(model, inputs_BL, cond, uncond, cfg, step, steps)
        assert torch.equal(result.x0_BTL[:, step][masked_BL], logits_BLV.argmax(-1)[masked_BL])
    assert torch.equal(_run(model, seed=3).tokens_BL, _run(model, seed=3, temperature=1.0).tokens_BL)  # default
    hot, cold = _run(model, temperature=3.0), _run(model, temperature=0.3)
    assert hot.entropy_BT[:, 0].mean() > cold.entropy_BT[:, 0].mean()  # same all-mask input at step 0


def test_cfg_uses_one_batched_forward_per_step_and_none_without_guidance():
    model = ToyGenerator()
    rows = _count_forward_rows(model)
    _run(model, cfg=3.0, steps=5, batch=3)
    assert rows == [6] * 5  # cond and uncond rows in one forward of 2B
    rows.clear()
    _run(model, cfg=1.0, steps=5, batch=3)
    assert rows == [3] * 5


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_each_step_asks_the_model_for_its_own_step_index_of_the_run(cfg):
    """Meissonic's logits depend on the timestep made from (step, num_steps): the sampler passes 0..T-1 and T, once
    per step (the toy model ignores them, so only a spy sees a wrong index)."""
    model = ToyGenerator()
    seen, forward = [], model.logits

    def logits(tokens_BL, condition, step, num_steps, module=None):
        seen.append((step, num_steps))
        return forward(tokens_BL, condition, step, num_steps, module)

    model.logits = logits
    _run(model, cfg=cfg, steps=5, batch=2)
    assert seen == [(step, 5) for step in range(5)]


@pytest.mark.parametrize("cfg,seed", [(1.5, 0), (3.0, 1), (7.5, 2)])
def test_guided_logits_are_uncond_plus_scale_times_cond_minus_uncond(cfg, seed):
    model = ToyGenerator(seed=seed)
    batch = 3
    cond, uncond = _conditions(model, batch, cfg)
    tokens_BL = torch.randint(0, model.codebook_size + 1, (batch, 16), generator=torch.Generator().manual_seed(seed))
    rows = _count_forward_rows(model)
    guided_BLV = guided_logits(model, tokens_BL, cond, uncond, cfg, 2, 6)
    assert rows == [2 * batch]
    cond_BLV, uncond_BLV = model.logits(tokens_BL, cond, 2, 6), model.logits(tokens_BL, uncond, 2, 6)
    for b, pos, v in [(0, 0, 0), (1, 5, 3), (2, 15, 7)]:  # the formula by hand on a few entries
        expected = uncond_BLV[b, pos, v].item() + cfg * (cond_BLV[b, pos, v].item() - uncond_BLV[b, pos, v].item())
        assert guided_BLV[b, pos, v].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
    expected_BLV = reference_guided_logits(model, tokens_BL, cond, uncond, cfg, 2, 6)
    torch.testing.assert_close(guided_BLV.double(), expected_BLV, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(guided_logits(model, tokens_BL, cond, None, cfg, 2, 6), cond_BLV)  # no CFG


@pytest.mark.parametrize("seed,cfg,temperature", [(0, 1.0, 1.0), (1, 2.5, 1.0), (2, 2.5, 0.6)])
def test_without_gumbel_noise_the_least_confident_drawn_tokens_go_back_to_mask(seed, cfg, temperature):
    """tau_0 = 0: the confidence is log p(drawn token); the n_{i+1} lowest of the newly drawn are re-masked."""
    model, steps, batch = ToyGenerator(seed=seed), 6, 4
    result = _run(model, seed=seed, cfg=cfg, steps=steps, batch=batch, tau0=0.0, temperature=temperature)
    counts = mask_schedule(16, steps)
    for step in range(steps - 1):
        log_probs_BLV = torch.log_softmax(_reference_logits(model, result, step, cfg, temperature), dim=-1)
        for b in range(batch):
            drawn_L, masked_L = result.x0_BTL[b, step], result.masks_BTL[b, step]
            confidence = {pos: log_probs_BLV[b, pos, drawn_L[pos]].item() for pos in range(16) if masked_L[pos]}
            assert_least_confident_go_back(confidence, result.masks_BTL[b, step + 1], counts[step + 1])


@pytest.mark.parametrize("seed,cfg,temperature,tau0", [(0, 1.0, 1.0, 2.0), (1, 3.0, 1.0, 4.0), (2, 2.0, 0.7, 1.0)])
def test_draws_and_confidences_match_a_loop_reference_given_the_same_gumbel_noise(
    monkeypatch, seed, cfg, temperature, tau0
):
    """Draw = argmax(log p + g); confidence = log p(drawn) + tau_i g' with tau_i = tau_0 (1 - (i+1)/T) written out."""
    noises = record_gumbel_noise(monkeypatch)
    model, steps, batch = ToyGenerator(seed=seed), 6, 4
    result = _run(model, seed=seed, cfg=cfg, steps=steps, batch=batch, tau0=tau0, temperature=temperature)
    noise = noise_per_step(noises)
    assert len(noise) == steps
    counts = mask_schedule(16, steps)
    num_unlike_noise_free = 0
    for step, (draw_noise_BLV, confidence_noise_BL) in enumerate(noise):
        log_probs_BLV = torch.log_softmax(_reference_logits(model, result, step, cfg, temperature), dim=-1)
        tau = tau0 * (1 - (step + 1) / steps)
        for b in range(batch):
            drawn_L, masked_L = result.x0_BTL[b, step], result.masks_BTL[b, step]
            positions = [pos for pos in range(16) if masked_L[pos]]
            for pos in positions:
                scores = [log_probs_BLV[b, pos, v].item() + draw_noise_BLV[b, pos, v].item() for v in range(8)]
                assert scores[drawn_L[pos]] >= max(scores) - 1e-5
            if step == steps - 1:
                continue  # n_T = 0: the last step re-masks nothing
            log_p = {pos: log_probs_BLV[b, pos, drawn_L[pos]].item() for pos in positions}
            confidence = {pos: log_p[pos] + tau * confidence_noise_BL[b, pos].item() for pos in positions}
            assert_least_confident_go_back(confidence, result.masks_BTL[b, step + 1], counts[step + 1])
            noise_free = set(sorted(positions, key=log_p.get)[: counts[step + 1]])
            num_unlike_noise_free += noise_free != set(result.masks_BTL[b, step + 1].nonzero().flatten().tolist())
    assert num_unlike_noise_free > 0  # the noise did change some re-masking, so the check above could see it missing


@pytest.mark.parametrize("seed,cfg,temperature", [(0, 2.5, 1.0), (1, 1.0, 1.0), (2, 4.0, 0.5)])
def test_recorded_entropy_is_the_mean_over_masked_positions_of_the_guided_distribution(seed, cfg, temperature):
    model, steps, batch = ToyGenerator(seed=seed), 5, 3
    result = _run(model, seed=seed, cfg=cfg, steps=steps, batch=batch, temperature=temperature)
    for step in range(steps):
        logits_BLV = _reference_logits(model, result, step, cfg, temperature)
        for b in range(batch):
            masked = [pos for pos in range(16) if result.masks_BTL[b, step, pos]]
            expected = sum(reference_entropy(logits_BLV[b, pos].tolist()) for pos in masked) / len(masked)
            assert result.entropy_BT[b, step].item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_the_mean_masked_entropy_gives_minus_inf_logits_zero_weight():
    generator = torch.Generator().manual_seed(0)
    logits_BLV = 3 * torch.randn(2, 5, 6, generator=generator)
    logits_BLV[0, :, 1] = float("-inf")
    logits_BLV[1, 2, :5] = float("-inf")  # one certain token: entropy 0
    masked_BL = torch.tensor([[True, False, True, True, False], [True, True, True, False, False]])
    entropy_B = masked_mean(token_entropy(logits_BLV), masked_BL)
    for b in range(2):
        masked = [pos for pos in range(5) if masked_BL[b, pos]]
        expected = sum(reference_entropy(logits_BLV[b, pos].tolist()) for pos in masked) / len(masked)
        assert entropy_B[b].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    finite_BLV = logits_BLV.clamp(min=-1e4)  # -1e4 underflows to probability 0 too: same entropy as -inf
    torch.testing.assert_close(masked_mean(token_entropy(finite_BLV), masked_BL), entropy_B)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_banned_tokens_with_minus_inf_logits_are_never_drawn_and_entropy_stays_finite(cfg):
    model = BannedTokenGenerator(banned=(0, 3))
    result = _run(model, cfg=cfg, steps=5, batch=4, temperature=0.8)
    assert torch.isfinite(result.entropy_BT).all() and (result.entropy_BT > 0).all()
    assert not torch.isin(result.x0_BTL, torch.tensor([0, 3])).any()


def test_cfg_keeps_out_a_token_the_conditional_branch_rules_out_and_never_gives_nan():
    cond = torch.tensor([[[0.0, float("-inf"), 1.0, float("-inf")]]])
    uncond = torch.tensor([[[0.5, float("-inf"), float("-inf"), 2.0]]])
    model = SimpleNamespace(logits=lambda tokens, condition, *args, **kwargs: torch.cat([cond, uncond]))
    condition = Condition(hidden_BSD=torch.zeros(1, 1, 1), pooled_BD=torch.zeros(1, 1))
    guided = guided_logits(model, torch.zeros(1, 1, dtype=torch.long), condition, condition, 3.0, 0, 1)
    # finite: 0.5 + 3 (0 - 0.5); both -inf: out; only uncond -inf: no guidance (cond); only cond -inf: out
    assert guided.flatten().tolist() == [-1.0, float("-inf"), 1.0, float("-inf")]


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


def test_a_negative_prompt_with_words_the_model_does_not_know_is_named_as_the_setting():
    from maskfocus.config import SamplerConfig
    from maskfocus.models.tokenizer import UnknownWordError, build_word_tokenizer, check_prompts
    from maskfocus.sampling import check_negative_prompt

    tokenizer = build_word_tokenizer(["a", "photo", "blurry"])
    model = SimpleNamespace(check_prompts=lambda prompts: check_prompts(tokenizer, prompts))
    with pytest.raises(UnknownWordError, match=r"^sampler.negative_prompt: prompt 'blurry zebra' uses word\(s\) the"):
        check_negative_prompt(model, SamplerConfig(negative_prompt="blurry zebra", cfg_scale=3.0))
    check_negative_prompt(model, SamplerConfig(negative_prompt="blurry zebra", cfg_scale=1.0))  # no CFG: not used
    check_negative_prompt(model, SamplerConfig(negative_prompt="blurry", cfg_scale=3.0))


def test_sample_draws_in_batches_of_the_sampler_batch_size(tiny_model, monkeypatch):
    """`--num-images 100000` sampled in one batch, asking for 26 GB at once."""
    import maskfocus.sampling
    from maskfocus.config import SamplerConfig
    from maskfocus.images import to_uint8
    from maskfocus.sampling import sample_images_in_batches, sample_with_config, seeded_generator

    sampler = SamplerConfig(num_steps=2, batch_size=2)
    one_call = to_uint8(
        tiny_model.decode(sample_with_config(tiny_model, ["a red circle"] * 2, sampler, seeded_generator(3)).tokens_BL)
    )
    assert (sample_images_in_batches(tiny_model, ["a red circle"] * 2, sampler, seeded_generator(3)) == one_call).all()
    sizes = []

    def recording(model, prompts, sampler, generator):
        sizes.append(len(prompts))
        return sample_with_config(model, prompts, sampler, generator)

    monkeypatch.setattr(maskfocus.sampling, "sample_with_config", recording)
    images = sample_images_in_batches(tiny_model, ["a red circle"] * 5, sampler, seeded_generator(3))
    assert sizes == [2, 2, 1] and images.shape[0] == 5 and (images[:2] == one_call).all()


def test_gumbel_noise_is_drawn_on_the_generators_device_and_moved_to_the_models(monkeypatch):
    """Previews and `maskfocus sample` drove a CUDA model with a CPU generator (they now seed on the model's device);
    torch refuses a generator of another device type, so the draw happens on the generator's device (CI has no GPU:
    the meta device stands in)."""
    from maskfocus.sampling import _gumbel

    expected = -torch.log(-torch.log(torch.rand(3, 5, generator=seeded_generator(7)).clamp(1e-20, 1 - 1e-7)))
    torch.testing.assert_close(_gumbel(torch.Size((3, 5)), seeded_generator(7), torch.device("cpu")), expected)
    drawn_on = []
    real_rand = torch.rand

    def recording_rand(*args, device=None, **kwargs):
        drawn_on.append(torch.device(device))
        return real_rand(*args, device=device, **kwargs)

    monkeypatch.setattr(torch, "rand", recording_rand)
    noise = _gumbel(torch.Size((3, 5)), seeded_generator(7), torch.device("meta"))
    assert drawn_on == [torch.device("cpu")] and noise.device == torch.device("meta") and noise.shape == (3, 5)
