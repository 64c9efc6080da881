"""The learner's optimizer: the learning-rate schedule over every optimizer step (and across a resume), and gradient
clipping."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from support import ToyGenerator, make_batch, make_updater

from maskfocus.config import GRPOConfig, OptimConfig, load_config
from maskfocus.update import PolicyUpdater, lr_factor, optimizer_steps_per_iteration, schedule_span

SHIPPED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "shapes_tiny.yaml"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, 3),
        ({"grpo.update": "accumulate"}, 1),
        ({"grpo.epochs": 2}, 6),
        ({"grpo.epochs": 2, "grpo.update": "accumulate"}, 2),
        ({"selection.strategy": "all", "grpo.epochs": 3}, 36),
        ({"selection.strategy": "all", "rollout.num_steps": 6}, 6),  # all T of the rollouts, not of evaluation
    ],
)
def test_the_learning_rate_schedule_counts_every_optimizer_step(overrides, expected):
    assert optimizer_steps_per_iteration(load_config(SHIPPED_CONFIG, overrides)) == expected


def test_the_schedule_spans_the_steps_taken_then_the_rest_of_the_run_at_this_configs_steps_per_iteration():
    shipped, two_steps = load_config(SHIPPED_CONFIG), load_config(SHIPPED_CONFIG, {"selection.num_steps": 2})
    assert schedule_span(shipped) == 250 * 3 == schedule_span(shipped, num_updates=300, iteration=100)  # crash-resume
    assert schedule_span(two_steps, num_updates=300, iteration=100) == 300 + 150 * 2  # resumed with K 3 -> 2


def test_resumed_schedule_matches_the_uninterrupted_one_without_a_warning():
    import warnings

    model = ToyGenerator()
    straight = make_updater(model)
    for _ in range(4):
        straight.optimizer.step()
        straight.scheduler.step()
    resumed = make_updater(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        resumed.resume_schedule(4)
    assert resumed.num_updates == 4
    assert resumed.scheduler.get_last_lr() == straight.scheduler.get_last_lr()
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in straight.optimizer.param_groups]
    assert straight.scheduler.get_last_lr()[0] < 1e-2  # the schedule did move: the check compares something


def test_lr_factor_decays_linearly_to_the_final_fraction_and_stays_there():
    assert lr_factor(0, 750, 0.1) == 1.0
    assert lr_factor(749, 750, 0.1) == pytest.approx(0.1)  # the last of 750 steps
    assert lr_factor(900, 750, 0.1) == pytest.approx(0.1)
    assert lr_factor(375, 751, 0.1) == pytest.approx(0.55)  # half way
    assert lr_factor(750, 1500, 0.1) == pytest.approx(0.54970, abs=1e-5)  # 250 of 500 iterations, 3 steps each
    assert lr_factor(3, 1, 0.2) == pytest.approx(0.2)  # a one-step schedule ends at once


def test_the_optimizer_takes_each_steps_learning_rate_from_lr_factor():
    updater = make_updater(ToyGenerator())  # peak 1e-2 over 10 optimizer steps, final fraction 0.1
    rates = []
    for _ in range(12):
        rates.append(updater.optimizer.param_groups[0]["lr"])
        updater.optimizer.step()
        updater.scheduler.step()
    assert rates == [1e-2 * lr_factor(step, 10, 0.1) for step in range(12)]
    assert rates[0] == 1e-2 and rates[9] == pytest.approx(1e-3) and rates[11] == rates[9]


def test_gradients_are_clipped_to_grad_clip_and_the_raw_norm_is_reported():
    model = ToyGenerator()
    optim = OptimConfig(learning_rate=1e-2, grad_clip=1e-3)
    updater = PolicyUpdater(model, GRPOConfig(update="accumulate"), optim, num_sampling_steps=6, total_updates=10)
    applied_norms = []
    updater.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: applied_norms.append(float(model.transformer.weight.grad.norm()))
    )
    metrics = updater.update(make_batch(model), torch.Generator().manual_seed(1))
    assert applied_norms == [pytest.approx(1e-3, rel=1e-4)]
    assert metrics["loss/grad_norm"] > 1e-2  # the norm before clipping, far above the clip


def test_a_resume_takes_the_weight_decay_of_its_config_not_of_the_saved_optimizer_state():
    """Loading the optimizer state restored the saved weight decay, though the resume printed the new one and wrote
    it to config.yaml."""
    model = ToyGenerator()

    def updater(weight_decay: float) -> PolicyUpdater:
        return PolicyUpdater(model, GRPOConfig(), OptimConfig(weight_decay=weight_decay), 6, total_updates=10)

    saved = updater(0.01).optimizer.state_dict()
    resumed = updater(0.1)
    resumed.optimizer.load_state_dict(saved)
    assert resumed.optimizer.param_groups[0]["weight_decay"] == 0.01  # what torch restores
    resumed.resume_schedule(0)
    assert [group["weight_decay"] for group in resumed.optimizer.param_groups] == [0.1]


def test_the_logged_learning_rate_is_the_one_the_updates_steps_applied():
    """optim/lr was read after the schedule had advanced: the next update's rate, not this one's."""
    model = ToyGenerator()
    updater = make_updater(model, update="per_step")  # lr 1e-2 decayed over 10 optimizer steps, K = 3 per update
    factors = [lr_factor(step, 10, updater.optim.final_lr_fraction) for step in range(6)]
    for update in range(2):
        metrics = updater.update(make_batch(model), torch.Generator().manual_seed(update))
        applied = [1e-2 * factor for factor in factors[3 * update : 3 * update + 3]]
        assert metrics["optim/lr"] == pytest.approx(sum(applied) / 3, rel=1e-9)
