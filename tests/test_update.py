"""The learner update on a toy generator: frozen old log-probs, update schemes, skipped groups."""

from __future__ import annotations

import math

import pytest
import torch
from support import ToyGenerator, make_batch, make_updater

import maskfocus.update as update_module
from maskfocus.grpo import token_log_probs


@pytest.mark.parametrize("scheme", ["per_step", "accumulate"])
def test_first_update_of_a_batch_has_ratio_exactly_one(scheme, monkeypatch):
    """The steps scored before the first optimizer step take their old log-probs from their own training forward,
    which makes a ratio of 1 true by construction; here every old log-prob comes from the separate frozen forward
    instead, so the ratio is 1 only if that forward sees the same inputs, weights and mode as the training one."""
    model = ToyGenerator()
    updater = make_updater(model, update=scheme, beta=0.0)
    monkeypatch.setattr(updater, "_steps_before_first_update", lambda num_steps: 0)
    calls = _record_policy_loss_calls(monkeypatch)
    metrics = updater.update(make_batch(model), torch.Generator().manual_seed(1))
    first = calls[0][2]
    assert first["loss/ratio_mean"] == 1.0 and first["loss/ratio_max"] == 1.0 and first["loss/clip_fraction"] == 0.0
    if scheme == "accumulate":  # every step is scored before the one optimizer step
        assert metrics["loss/ratio_mean"] == 1.0 and metrics["loss/ratio_max"] == 1.0
    else:  # later steps see the moved policy
        assert calls[1][2]["loss/ratio_max"] > 1.0


def test_per_step_takes_k_optimizer_steps_and_accumulate_one():
    for scheme, expected in (("per_step", 3), ("accumulate", 1)):
        model = ToyGenerator()
        updater = make_updater(model, update=scheme)
        metrics = updater.update(make_batch(model), torch.Generator().manual_seed(1))
        assert metrics["perf/optimizer_steps"] == expected
        assert updater.num_updates == expected


def test_the_learner_clock_stops_after_the_devices_queued_work(monkeypatch):
    """On CUDA the last optimizer step runs asynchronously: perf/learner_seconds is read after waiting for it."""
    model = ToyGenerator()
    updater = make_updater(model)
    events = []
    monkeypatch.setattr(update_module, "wait_for_device", lambda device: events.append(("wait", device)))
    clock = update_module.time.perf_counter
    monkeypatch.setattr(update_module.time, "perf_counter", lambda: events.append(("clock", None)) or clock())
    updater.update(make_batch(model), torch.Generator().manual_seed(1))
    assert ("wait", model.device) in events
    assert events[-2:] == [("wait", model.device), ("clock", None)]


def _gradients_at_optimizer_steps(updater, monkeypatch) -> list[torch.Tensor]:
    """Record the trained weight's gradient as each optimizer step sees it (before clipping)."""
    seen, original = [], updater._optimizer_step

    def recorded(has_tokens):
        seen.append(updater.module.weight.grad.detach().clone())
        return original(has_tokens)

    monkeypatch.setattr(updater, "_optimizer_step", recorded)
    return seen


def _reference_step_gradient(model, step, batch) -> torch.Tensor:
    """The GRPO gradient of one selected step at ratio 1, written out: -sum over its masked tokens of A * grad log p,
    divided by its masked-token count (no clip binds at ratio 1, beta = 0)."""
    weight = model.transformer.weight
    logits_BLV = model.logits(step.inputs_BL, model.encode_prompts(batch.prompts_B), step.steps_B, 6)
    logp_BL = torch.log_softmax(logits_BLV, -1).gather(-1, batch.tokens_BL.unsqueeze(-1)).squeeze(-1)
    mask_BL = step.loss_mask_BL.float()
    objective = (batch.advantages_B.unsqueeze(-1) * logp_BL * mask_BL).sum() / mask_BL.sum()
    return torch.autograd.grad(-objective, weight)[0]


@pytest.mark.parametrize("scheme", ["per_step", "accumulate"])
def test_the_gradient_of_each_optimizer_step_is_its_steps_summed_losses(scheme, monkeypatch):
    """accumulate: one optimizer step on the sum of the K selected steps' gradients, each from the same weights;
    per_step: the first optimizer step sees the first selected step's gradient alone. Checked against gradients
    written out step by step (counting optimizer steps alone let a zero_grad between the K backwards pass)."""
    model = ToyGenerator()
    batch = make_batch(model)
    updater = make_updater(model, update=scheme, beta=0.0)
    steps = updater.prepare(batch, torch.Generator().manual_seed(1))  # the inputs update() builds from this seed
    per_step_reference = [_reference_step_gradient(model, step, batch) for step in steps]
    seen = _gradients_at_optimizer_steps(updater, monkeypatch)
    updater.update(batch, torch.Generator().manual_seed(1))
    if scheme == "accumulate":
        assert len(seen) == 1
        torch.testing.assert_close(seen[0], sum(per_step_reference), rtol=1e-5, atol=1e-6)
    else:
        assert len(seen) == 3
        torch.testing.assert_close(seen[0], per_step_reference[0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(per_step_reference[0], sum(per_step_reference), rtol=1e-3)  # the two claims differ


@pytest.mark.parametrize(("scheme", "per_pass"), [("per_step", 3), ("accumulate", 1)])
def test_each_epoch_takes_the_schemes_optimizer_steps(scheme, per_pass):
    model = ToyGenerator()
    updater = make_updater(model, update=scheme, epochs=2)
    metrics = updater.update(make_batch(model), torch.Generator().manual_seed(1))
    assert metrics["perf/optimizer_steps"] == 2 * per_pass
    assert updater.num_updates == 2 * per_pass


def _record_policy_loss_calls(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Wrap policy_loss so each call records (log-probs, old log-probs, metrics)."""
    calls = []
    original = update_module.policy_loss

    def recorded(logp_BL, old_logp_BL, *args, **kwargs):
        loss, metrics = original(logp_BL, old_logp_BL, *args, **kwargs)
        calls.append((logp_BL.detach().clone(), old_logp_BL, metrics))
        return loss, metrics

    monkeypatch.setattr(update_module, "policy_loss", recorded)
    return calls


def test_later_epochs_keep_the_sampling_policys_old_log_probs_and_clip(monkeypatch):
    model = ToyGenerator()
    batch = make_batch(model)
    updater = make_updater(model, update="per_step", epochs=2, beta=0.0, clip_eps=0.05)
    # The slow reference: the same training inputs (same generator seed), scored before any update.
    steps = updater.prepare(batch, torch.Generator().manual_seed(1))
    condition = model.encode_prompts(batch.prompts_B)
    with torch.no_grad():
        expected_old = [
            token_log_probs(model.logits(s.inputs_BL, condition, s.steps_B, 6), batch.tokens_BL) for s in steps
        ]
    calls = _record_policy_loss_calls(monkeypatch)
    updater.update(batch, torch.Generator().manual_seed(1))
    assert len(calls) == 6  # 2 passes x K = 3 steps
    for index, (_, old_logp_BL, metrics) in enumerate(calls):
        step = steps[index % 3]
        torch.testing.assert_close(old_logp_BL[step.loss_mask_BL], expected_old[index % 3][step.loss_mask_BL])
        if index == 0:
            assert metrics["loss/ratio_mean"] == 1.0 and metrics["loss/clip_fraction"] == 0.0
    second_pass_first_step = calls[3]
    assert not torch.allclose(second_pass_first_step[0], second_pass_first_step[1])
    assert second_pass_first_step[2]["loss/clip_fraction"] > 0.0  # the policy left the trust region on this batch


def test_per_step_later_steps_see_a_moved_policy():
    model = ToyGenerator()
    updater = make_updater(model, update="per_step", clip_eps=None, beta=0.0)
    before = model.transformer.weight.detach().clone()
    metrics = updater.update(make_batch(model), torch.Generator().manual_seed(1))
    assert not torch.equal(before, model.transformer.weight)
    assert metrics["loss/ratio_max"] > 1.0  # steps after the first are scored by an updated policy


def test_kl_is_zero_at_the_first_update_and_reference_stays_frozen():
    model = ToyGenerator()
    updater = make_updater(model, update="accumulate", beta=0.5)  # every step is scored before the optimizer step
    reference_before = updater.reference.weight.detach().clone()
    first = updater.update(make_batch(model), torch.Generator().manual_seed(1))
    assert first["loss/kl"] == 0.0  # policy == reference: k3 is exactly 0 at every token
    assert torch.equal(reference_before, updater.reference.weight)
    metrics = updater.update(make_batch(model, seed=3), torch.Generator().manual_seed(2))
    assert metrics["loss/kl"] > 0.0


def test_each_selected_step_is_scored_at_its_own_step_index_and_mask_count():
    """The training state of step j pairs |m_j| with step j's timestep (not the released code's j-1)."""
    model = ToyGenerator()
    batch = make_batch(model)  # steps 1, 2, 3 with 12, 8 and 4 masked tokens
    seen = []
    original = model.logits

    def recording(inputs_BL, condition, step=0, num_steps=1, module=None):
        seen.append((step.clone(), (inputs_BL == model.mask_token_id).sum(-1), num_steps))
        return original(inputs_BL, condition, step, num_steps, module)

    model.logits = recording
    make_updater(model, update="per_step", beta=0.0).update(batch, torch.Generator().manual_seed(1))
    assert len(seen) == 3 + 2  # three training forwards, two old log-prob forwards (steps 2 and 3)
    for step_B, masked_B, num_steps in seen:
        k = int(step_B[0]) - 1
        assert torch.equal(step_B, batch.steps_BK[:, k])
        assert torch.equal(masked_B, batch.num_masked_BK[:, k])
        assert num_steps == 6
    assert sorted({int(step_B[0]) for step_B, _, _ in seen}) == [1, 2, 3]


def test_beta_zero_skips_the_reference_model():
    updater = make_updater(ToyGenerator(), beta=0.0)
    assert updater.reference is None


def test_invalid_samples_contribute_nothing():
    model = ToyGenerator()
    batch = make_batch(model)
    batch.valid_B[:] = False
    updater = make_updater(model)
    before = model.transformer.weight.detach().clone()
    metrics = updater.update(batch, torch.Generator().manual_seed(1))
    assert torch.equal(before, model.transformer.weight)  # zero gradient: AdamW with no decay leaves weights
    assert metrics["loss/policy"] == 0.0


def test_newly_unmasked_scores_only_committed_tokens():
    model = ToyGenerator()
    batch = make_batch(model, num_selected=1)
    masks = torch.zeros(8, 1, 16, dtype=torch.bool)
    masks[:, 0, :12] = True
    scored = torch.zeros_like(masks)
    scored[:, 0, 8:12] = True
    batch.masks_BKL, batch.scored_BKL = masks, scored
    updater = make_updater(model, tokens="newly_unmasked")
    steps = updater.prepare(batch, torch.Generator().manual_seed(0))
    assert torch.equal(steps[0].loss_mask_BL, scored[:, 0])
    assert (steps[0].inputs_BL[:, :12] == model.mask_token_id).all()


@pytest.mark.parametrize("remask", ["random", "trajectory"])
def test_training_inputs_have_the_selected_mask_counts(remask):
    model = ToyGenerator()
    batch = make_batch(model)
    if remask == "trajectory":
        batch.masks_BKL = torch.stack([torch.arange(16).expand(8, 16) < c for c in (12, 8, 4)], dim=1)
    updater = make_updater(model, remask=remask)
    steps = updater.prepare(batch, torch.Generator().manual_seed(0))
    for step, count in zip(steps, (12, 8, 4), strict=True):
        assert ((step.inputs_BL == model.mask_token_id).sum(-1) == count).all()
        assert step.loss_mask_BL.sum(-1).eq(count).all()


def _counting_forward_rows(model: ToyGenerator) -> list[int]:
    """Wrap model.logits so each call records how many samples it ran on."""
    seen: list[int] = []
    original = model.logits

    def counted(inputs_BL, *args, **kwargs):
        seen.append(inputs_BL.shape[0])
        return original(inputs_BL, *args, **kwargs)

    model.logits = counted
    return seen


def _update_with_half_invalid(monkeypatch, compact: bool):
    model = ToyGenerator()
    batch = make_batch(model)
    batch.valid_B = torch.tensor([True] * 4 + [False] * 4)
    updater = make_updater(model, update="per_step", beta=0.1)
    seen = _counting_forward_rows(model)
    if not compact:  # the slow reference: every sample goes through the forwards, masked out of the loss
        monkeypatch.setattr(update_module, "learning_rows", lambda batch, steps: (batch, steps))
    metrics = updater.update(batch, torch.Generator().manual_seed(1))
    monkeypatch.undo()
    return model.transformer.weight.detach().clone(), metrics, seen


def test_forwards_skip_invalid_samples_and_the_update_is_unchanged(monkeypatch):
    fast_w, fast_m, fast_seen = _update_with_half_invalid(monkeypatch, compact=True)
    slow_w, slow_m, slow_seen = _update_with_half_invalid(monkeypatch, compact=False)
    # 2 old (the first step's comes from its training forward) + 3 reference + 3 training forwards each
    assert fast_seen == [4] * 8 and slow_seen == [8] * 8
    torch.testing.assert_close(fast_w, slow_w, rtol=1e-5, atol=1e-6)
    for key in ("loss/policy", "loss/kl", "loss/total", "loss/grad_norm"):
        assert fast_m[key] == pytest.approx(slow_m[key], rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("scheme", ["per_step", "accumulate"])
def test_a_batch_without_valid_samples_leaves_the_weights_despite_adam_momentum(scheme):
    """Zero gradients would still move the weights through AdamW's momentum: the optimizer step is skipped."""
    model = ToyGenerator()
    updater = make_updater(model, update=scheme)
    updater.update(make_batch(model), torch.Generator().manual_seed(1))  # builds up momentum
    batch = make_batch(model, seed=4)
    batch.valid_B[:] = False
    before = model.transformer.weight.detach().clone()
    updates_before = updater.num_updates
    metrics = updater.update(batch, torch.Generator().manual_seed(2))
    assert torch.equal(before, model.transformer.weight)
    expected_steps = 3 if scheme == "per_step" else 1
    assert metrics["loss/skipped_steps"] == expected_steps
    assert updater.num_updates == updates_before + expected_steps  # the schedule still advances


@pytest.mark.parametrize("scheme", ["per_step", "accumulate"])
def test_a_non_finite_loss_is_back_propagated_and_its_optimizer_step_skipped(scheme):
    """Every step still runs backward (a sharded learner's ranks must join the same collectives); the NaN gradient
    norm keeps the weights and the optimizer state clean, and the next batch learns normally."""
    model = ToyGenerator()
    updater = make_updater(model, update=scheme)
    batch = make_batch(model)
    batch.advantages_B[0] = float("nan")
    backwards = []
    model.transformer.weight.register_hook(lambda grad: backwards.append(bool(torch.isfinite(grad).all())))
    before = model.transformer.weight.detach().clone()
    metrics = updater.update(batch, torch.Generator().manual_seed(1))
    assert backwards == [False, False, False]
    assert torch.equal(before, model.transformer.weight)
    assert metrics["loss/skipped_nonfinite"] == 1.0  # every step's loss was NaN (the mean of the record flags)
    assert metrics["loss/skipped_steps"] == (3 if scheme == "per_step" else 1)
    assert not updater.optimizer.state  # AdamW never stepped: no NaN moments
    updater.update(make_batch(model, seed=5), torch.Generator().manual_seed(2))
    assert torch.isfinite(model.transformer.weight).all() and not torch.equal(before, model.transformer.weight)


def test_with_no_valid_sample_one_stays_for_the_forward_and_adds_no_loss():
    model = ToyGenerator()
    batch = make_batch(model)
    batch.valid_B[:] = False
    seen = _counting_forward_rows(model)
    metrics = make_updater(model).update(batch, torch.Generator().manual_seed(1))
    assert set(seen) == {1}
    assert metrics["loss/policy"] == 0.0 and metrics["loss/kl"] == 0.0


@pytest.mark.parametrize(("scheme", "old_forwards"), [("per_step", 2), ("accumulate", 0)])
def test_steps_before_the_first_optimizer_step_reuse_their_training_forward(monkeypatch, scheme, old_forwards):
    """The reused old log-probs give the same update as separate no-grad forwards (the slow reference)."""
    results = []
    for reuse in (True, False):
        model = ToyGenerator()
        updater = make_updater(model, update=scheme, beta=0.1)
        if not reuse:
            monkeypatch.setattr(updater, "_steps_before_first_update", lambda num_steps: 0)
        seen = _counting_forward_rows(model)
        metrics = updater.update(make_batch(model), torch.Generator().manual_seed(1))
        results.append((model.transformer.weight.detach().clone(), metrics, len(seen)))
    (fast_w, fast_m, fast_calls), (slow_w, slow_m, slow_calls) = results
    assert fast_calls == old_forwards + 3 + 3 and slow_calls == 3 + 3 + 3  # old + reference + training
    torch.testing.assert_close(fast_w, slow_w, rtol=1e-6, atol=1e-7)
    for key in ("loss/policy", "loss/kl", "loss/ratio_mean", "loss/grad_norm"):
        assert fast_m[key] == pytest.approx(slow_m[key], rel=1e-6, abs=1e-8)


def test_the_learner_compiles_with_the_configured_backend(monkeypatch):
    """`train.learner_compile_backend: aot_eager` traces the policy and reference forwards (and their backward)
    without inductor's code generation; the update equals the eager one."""
    backends = []
    real_compile = torch.compile

    def recording_compile(module, **options):
        backends.append(options["backend"])
        return real_compile(module, **options)

    monkeypatch.setattr(torch, "compile", recording_compile)
    results = []
    for compile in (False, True):
        model = ToyGenerator()
        updater = make_updater(model, compile=compile, compile_backend="aot_eager", beta=0.1)
        metrics = updater.update(make_batch(model), torch.Generator().manual_seed(1))
        results.append((model.transformer.weight.detach().clone(), metrics))
    assert backends == ["aot_eager", "aot_eager"]  # the policy and the reference copy
    (eager_w, eager_m), (compiled_w, compiled_m) = results
    torch.testing.assert_close(compiled_w, eager_w, rtol=1e-5, atol=1e-6)
    for key in ("loss/policy", "loss/kl", "loss/grad_norm"):
        assert compiled_m[key] == pytest.approx(eager_m[key], rel=1e-4, abs=1e-6)


def test_compiled_learner_matches_the_eager_update_and_keeps_the_first_ratio_exactly_one():
    results = []
    for compile in (False, True):
        model = ToyGenerator()
        updater = make_updater(model, compile=compile, update="per_step", beta=0.1)
        first = updater.update(make_batch(model), torch.Generator().manual_seed(1))
        second = updater.update(make_batch(model, num_samples=4, seed=5), torch.Generator().manual_seed(2))
        results.append((model.transformer.weight.detach().clone(), first, second, updater))
    (eager_w, eager_first, eager_second, _), (compiled_w, first, second, updater) = results
    assert updater.policy_forward is not updater.module and updater.reference_forward is not updater.reference
    assert updater.policy_forward.batch_sizes == [8]  # the smaller second batch ran on the padded kernels
    torch.testing.assert_close(compiled_w, eager_w, rtol=1e-5, atol=1e-6)
    for key in ("loss/policy", "loss/kl", "loss/grad_norm"):
        assert second[key] == pytest.approx(eager_second[key], rel=1e-4, abs=1e-6)
    assert first["loss/ratio_max"] > 1.0  # later steps see the moved policy ...
    updater.grpo = updater.grpo.model_copy(update={"update": "accumulate"})
    accumulated = updater.update(make_batch(model, seed=7), torch.Generator().manual_seed(3))
    assert accumulated["loss/ratio_mean"] == 1.0 and accumulated["loss/ratio_max"] == 1.0  # ... the first never


def test_learner_forwards_run_with_dropout_off():
    """With dropout on, each forward would draw its own mask: the first ratio would not be 1, nor the first KL 0."""
    model = ToyGenerator()
    linear = model.transformer
    model.transformer = torch.nn.Sequential(torch.nn.Dropout(0.5), linear).train()
    updater = make_updater(model, update="accumulate", beta=0.5)
    metrics = updater.update(make_batch(model), torch.Generator().manual_seed(1))
    assert metrics["loss/ratio_mean"] == 1.0 and metrics["loss/ratio_max"] == 1.0
    assert metrics["loss/kl"] == 0.0
    assert not model.transformer.training


def test_merged_metrics_weight_token_means_by_scored_tokens_and_skip_empty_records():
    rank_0 = {"loss/ratio_mean": 0.8, "loss/total": 0.2, "loss/ratio_max": 1.5, "loss/scored_tokens": 30.0}
    rank_1 = {"loss/ratio_mean": 1.0, "loss/total": 0.4, "loss/ratio_max": 1.0, "loss/scored_tokens": 0.0}
    rank_2 = {"loss/ratio_mean": 1.2, "loss/total": 0.3, "loss/ratio_max": 1.3, "loss/scored_tokens": 10.0}
    merged = update_module.merge_metrics([rank_0, rank_1, rank_2])
    assert merged["loss/ratio_mean"] == pytest.approx((0.8 * 30 + 1.2 * 10) / 40)  # rank 1's placeholder 1.0 left out
    assert merged["loss/total"] == pytest.approx(0.3)  # already globally normalised: a plain mean
    assert merged["loss/ratio_max"] == 1.5 and merged["loss/scored_tokens"] == 40.0
    empty = [{**rank_1, "loss/clip_fraction": 0.0}, {**rank_1, "loss/clip_fraction": 0.5}]
    nothing = update_module.merge_metrics(empty)
    assert nothing["loss/clip_fraction"] == 0.25 and nothing["loss/ratio_mean"] == 1.0  # no tokens: plain means


@pytest.mark.parametrize("scheme", ["per_step", "accumulate"])
def test_nan_weights_count_as_non_finite_even_with_no_scored_token(scheme):
    """A batch (or a learner rank's share) with no valid sample has a zero loss whatever the weights hold, but NaN
    weights still give a NaN gradient: the divergence watch must see every such step as non-finite."""
    model = ToyGenerator()
    with torch.no_grad():
        model.transformer.weight[0, 0] = float("nan")
    batch = make_batch(model)
    batch.valid_B[:] = False
    metrics = make_updater(model, update=scheme).update(batch, torch.Generator().manual_seed(1))
    assert metrics["loss/total"] == 0.0 and math.isnan(metrics["loss/grad_norm"])
    assert metrics["loss/skipped_nonfinite"] == 1.0


def test_finite_weights_with_no_scored_token_are_not_counted_as_non_finite():
    model = ToyGenerator()
    batch = make_batch(model)
    batch.valid_B[:] = False
    metrics = make_updater(model).update(batch, torch.Generator().manual_seed(1))
    assert metrics["loss/skipped_nonfinite"] == 0.0 and metrics["loss/skipped_steps"] == 3.0


def test_the_learner_scores_tokens_under_the_rollouts_sampling_temperature():
    """Rollouts draw from softmax(logits / sampler.temperature): the learner's old, reference and new log-probs must
    be of that policy, not of the plain softmax (which it used whatever the temperature)."""
    from maskfocus.config import GRPOConfig, OptimConfig
    from maskfocus.update import PolicyUpdater, StepInputs

    model = ToyGenerator()
    batch = make_batch(model)
    updater = PolicyUpdater(model, GRPOConfig(), OptimConfig(), 6, total_updates=10, temperature=0.5)
    condition = model.encode_prompts(batch.prompts_B)
    inputs_BL = torch.full_like(batch.tokens_BL, model.mask_token_id)
    every_position_BL = torch.ones_like(inputs_BL, dtype=torch.bool)
    step = StepInputs(inputs_BL, every_position_BL, torch.zeros(len(batch), dtype=torch.long))
    logp_BL, _ = updater._logp(step, batch.tokens_BL, condition, updater.policy_forward)
    plain_BLV = model.logits(inputs_BL, condition, step.steps_B, 6)
    torch.testing.assert_close(logp_BL, token_log_probs(plain_BLV / 0.5, batch.tokens_BL))
    assert not torch.allclose(logp_BL, token_log_probs(plain_BLV, batch.tokens_BL))
