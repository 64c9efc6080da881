"""maskfocus/divergence.py: a run whose loss stays non-finite is reported at once and stopped, not run to the end."""

from __future__ import annotations

import json

import pytest

from maskfocus.divergence import KEY, NAN_REWARD_KEY, Diverged, NonFiniteWatch


def records(fractions):
    return [{"iteration": i, **({} if f is None else {KEY: f})} for i, f in enumerate(fractions)]


def test_the_first_non_finite_iteration_of_each_run_of_them_is_reported_once():
    watch = NonFiniteWatch(patience=None)
    notes = [watch.observe(r) for r in records([0.0, 1 / 3, 1.0, 1.0, 0.0, None, 1.0])]
    assert notes[0] is None and notes[2:4] == [None, None] and notes[4:6] == [None, None]
    expected = (
        "iteration 1: the loss or its gradient was non-finite at 33% of the optimizer steps; those steps were skipped"
    )
    assert notes[1] == f"{expected} ({KEY} in metrics.jsonl)"
    assert notes[6].startswith(
        "iteration 6: the loss or its gradient was non-finite at 100%"
    )  # a new run of them, after finite ones


def test_patience_counts_wholly_non_finite_iterations_in_a_row():
    watch = NonFiniteWatch(patience=3)
    for record in records([1.0, 1.0, 0.5, 1.0, 1.0]):  # a partly finite iteration breaks the streak
        watch.observe(record)
    with pytest.raises(
        Diverged, match=r"^the loss or its gradient was non-finite at every optimizer step of iterations 3-5, so none"
    ):
        watch.observe({"iteration": 5, KEY: 1.0})


def test_a_streak_of_one_iteration_is_named_as_one_and_the_advice_holds_without_checkpoints():
    """With patience 1 the message said "iterations 1-1" and told a run without any checkpoint to move "those
    checkpoints" aside (new-user walkthrough)."""
    with pytest.raises(Diverged) as stopped:
        NonFiniteWatch(patience=1).observe({"iteration": 1, KEY: 1.0})
    message = str(stopped.value)
    assert message.startswith("the loss or its gradient was non-finite at every optimizer step of iteration 1, so none")
    assert (
        "Start again with a lower learning rate, or, where a checkpoint from well before iteration 1 is kept" in message
    )
    assert not stopped.value.weights_finite  # no checkpoint of these weights
    with pytest.raises(Diverged, match=r"^every group's reward was NaN in iteration 4: nothing was learned") as nan:
        NonFiniteWatch(patience=1).observe({"iteration": 4, NAN_REWARD_KEY: 1.0})
    assert nan.value.weights_finite  # NaN rewards skip every step: the weights are as they were, worth keeping


def test_iterations_whose_every_group_reward_is_nan_are_reported_and_stop_the_run():
    """A reward term returning NaN skips its group; with every group skipped the run learned nothing (not even the KL
    term: its optimizer steps were skipped), and nothing said so beyond a metric."""
    watch = NonFiniteWatch(patience=3)
    nan_rewards = [{"iteration": i, NAN_REWARD_KEY: f} for i, f in enumerate([0.0, 0.25, 1.0, 1.0, 0.5])]
    notes = [watch.observe(record) for record in nan_rewards]
    assert notes[0] is None and notes[2:] == [None] * 3
    assert (
        notes[1]
        == f"iteration 1: 25% of the groups had a NaN reward and were skipped ({NAN_REWARD_KEY} in metrics.jsonl)"
    )
    watch.observe({"iteration": 5, NAN_REWARD_KEY: 1.0})
    watch.observe({"iteration": 6, NAN_REWARD_KEY: 1.0})
    with pytest.raises(Diverged, match=r"^every group's reward was NaN in iterations 5-7: nothing was learned"):
        watch.observe({"iteration": 7, NAN_REWARD_KEY: 1.0})
    both = NonFiniteWatch(patience=None).observe({"iteration": 0, NAN_REWARD_KEY: 1.0, KEY: 0.5})
    assert both.splitlines()[0].startswith("iteration 0: 100% of the groups") and "its gradient was non-finite" in both


TINY_RUN = {
    "rollout.prompts_per_iteration": 2,
    "rollout.group_size": 2,
    "sampler.num_steps": 3,
    "selection.num_steps": 1,
    "sampler.compile": "false",
    "train.compile_learner": "false",
    "train.final_eval": "false",
    "train.max_nonfinite_iterations": 2,
}


def train_tiny(tmp_path) -> int:
    from maskfocus.cli import main

    settings = [
        arg
        for key, value in {**TINY_RUN, "train.out_dir": str(tmp_path)}.items()
        for arg in ("--set", f"{key}={value}")
    ]
    return main(["train", "--executor", "local", "--name", "run", "--iterations", "5", *settings])


def test_an_in_process_run_whose_rewards_are_all_nan_stops_with_exit_status_one(tmp_path, monkeypatch, capsys):
    """A reward term returning NaN skips every group: the run learned nothing and said "done"."""
    import torch

    import maskfocus.trainer as trainer

    real_build = trainer.build_rewards

    def nan_rewards(*args, **kwargs):
        reward = real_build(*args, **kwargs)

        def scored(images, metadata):
            total, parts = reward(images, metadata)
            return torch.full_like(total, float("nan")), parts

        return scored

    monkeypatch.setattr(trainer, "build_rewards", nan_rewards)
    assert train_tiny(tmp_path) == 1
    captured = capsys.readouterr()
    assert "iteration 0: 100% of the groups had a NaN reward and were skipped" in captured.out + captured.err
    assert "every group's reward was NaN in iterations 0-1: nothing was learned from them" in captured.err
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r[NAN_REWARD_KEY]) for r in logged] == [(0, 1.0), (1, 1.0)]


def test_an_in_process_run_whose_loss_stays_nan_stops_with_exit_status_one(tmp_path, monkeypatch, capsys):
    """With weights gone NaN (optim.learning_rate 1e10) every optimizer step was skipped, the reward fell to 0,
    and the run still went to its end and said "done", exit status 0."""
    import maskfocus.update as update

    real_step_loss = update.PolicyUpdater._step_loss

    def nan_loss(self, *args, **kwargs):
        loss, metrics, num_tokens = real_step_loss(self, *args, **kwargs)
        return loss * float("nan"), metrics, num_tokens

    monkeypatch.setattr(update.PolicyUpdater, "_step_loss", nan_loss)
    status = train_tiny(tmp_path)
    captured = capsys.readouterr()
    assert status == 1
    assert (
        "iteration 0: the loss or its gradient was non-finite at 100% of the optimizer steps"
        in captured.out + captured.err
    )
    assert "the loss or its gradient was non-finite at every optimizer step of iterations 0-1" in captured.err
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["iteration"], r[KEY]) for r in logged] == [(0, 1.0), (1, 1.0)]
