"""maskfocus/trainer.py when something fails mid-run (`--executor local`): the last iteration learned whole is
checkpointed, the message names the resume and the traceback goes to error.log; weights an update left part-way are
never saved (a failure before its first optimizer step leaves the last learned iteration, which is). (The Ray
learner's failure paths: tests/learner/test_loop.py.)"""

from __future__ import annotations

import copy

import pytest
import torch
from ray_fixture import one_thread, random_model, tiny_config  # noqa: F401

import maskfocus.trainer as trainer
from maskfocus.run_io import load_checkpoint_weights
from maskfocus.run_state import latest_checkpoint
from maskfocus.stopping import RunFailed
from maskfocus.update import PolicyUpdater


class ServerDown(RuntimeError):
    pass


def failing_in(iteration: int, calls: list[int]):
    """A stand-in for a callable that works until its `iteration`-th call (0-based), then raises ServerDown."""

    def call(real, *args, **kwargs):
        calls.append(len(calls))
        if len(calls) - 1 == iteration:
            raise ServerDown("reward server answered HTTP 500")
        return real(*args, **kwargs)

    return call


@pytest.fixture
def updaters(monkeypatch) -> list[PolicyUpdater]:
    """Every PolicyUpdater the trainer makes, to read its weights after the failure."""
    made: list[PolicyUpdater] = []

    class Kept(PolicyUpdater):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(trainer, "PolicyUpdater", Kept)
    return made


def test_a_reward_failure_checkpoints_the_last_learned_iteration_and_names_the_resume(
    random_model,  # noqa: F811
    tmp_path,
    monkeypatch,
    updaters,
    one_thread,  # noqa: F811
):
    """The reward of iteration 2 fails with no checkpoint due (checkpoint_every 1000): iteration 1's weights,
    optimizer steps and prompt cursor are saved, so the resume loses nothing learned."""
    real_build, calls = trainer.build_rewards, []

    class Failing:  # the run's reward (score_trajectory calls it), failing on its third batch
        def __init__(self, reward):
            self.reward, self.terms, self.fail = reward, reward.terms, failing_in(2, calls)

        def __call__(self, images, metadata):
            return self.fail(self.reward, images, metadata)

    monkeypatch.setattr(trainer, "build_rewards", lambda *args, **kwargs: Failing(real_build(*args, **kwargs)))
    config = tiny_config(random_model, tmp_path, train={"num_iterations": 4})
    with pytest.raises(RunFailed) as failed:
        trainer.train_local(config, tmp_path, show_progress=False)
    message = str(failed.value)
    assert message.startswith("the run failed in iteration 2: reward server answered HTTP 500")
    assert "(iteration 1, the last learned, is checkpointed); resume from iter_000001 with `" in message
    assert "ServerDown: reward server answered HTTP 500" in failed.value.error_log.read_text()
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == "iter_000001"
    module = updaters[0].module  # its weights are those learned through iteration 1: iteration 2 never updated
    saved = copy.deepcopy(module)
    torch.nn.init.zeros_(next(saved.parameters()))
    state = load_checkpoint_weights(checkpoint, saved)
    assert (state["iteration"], state["prompt_cursor"], state["num_updates"]) == (1, 4, 4)  # 2 iterations x K = 2
    current, kept = module.state_dict(), saved.state_dict()
    assert all(torch.equal(current[key], kept[key]) for key in current)


def test_a_run_stopped_by_nan_rewards_checkpoints_its_last_learned_iteration(
    random_model,  # noqa: F811
    tmp_path,
    monkeypatch,
    one_thread,  # noqa: F811
):
    """Every group's reward NaN (a reward term gone wrong) skips every optimizer step, so the weights stay finite:
    the stop keeps the iterations learned since the last checkpoint, where a diverged loss keeps none."""
    import math

    real_build = trainer.build_rewards

    class NanFromIteration1:
        def __init__(self, reward):
            self.reward, self.terms, self.calls = reward, reward.terms, 0

        def __call__(self, images, metadata):  # (total, parts), as WeightedReward returns them
            self.calls += 1
            total, parts = self.reward(images, metadata)
            if self.calls > 1:
                total, parts = (
                    torch.full_like(total, math.nan),
                    {k: torch.full_like(v, math.nan) for k, v in parts.items()},
                )
            return total, parts

    monkeypatch.setattr(
        trainer, "build_rewards", lambda *args, **kwargs: NanFromIteration1(real_build(*args, **kwargs))
    )
    train = {"num_iterations": 4, "max_nonfinite_iterations": 1}
    config = tiny_config(random_model, tmp_path, train=train)
    with pytest.raises(RunFailed) as failed:
        trainer.train_local(config, tmp_path, show_progress=False)
    message = str(failed.value)
    assert message.startswith("every group's reward was NaN in iteration 1: nothing was learned")
    assert message.endswith("(iteration 1, the last learned, is checkpointed)")
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == "iter_000001"


@pytest.mark.parametrize("inside", ["second step", "first AdamW step"])
def test_a_failure_inside_an_update_after_an_optimizer_step_began_saves_nothing_of_it(
    random_model,  # noqa: F811
    tmp_path,
    monkeypatch,
    one_thread,  # noqa: F811
    inside,
):
    """An update may fail part-way, leaving weights (or AdamW moments) that no iteration produced: here iteration 1's
    second optimizer step raises after its first was applied, or its first AdamW step raises inside. No checkpoint
    is written, not even of iteration 0, which was learned whole (its state is gone)."""
    calls: list[int] = []
    if inside == "second step":  # K = 2 steps an iteration: call 3 is iteration 1's second
        fail, owner, name = failing_in(3, calls), PolicyUpdater, "_optimizer_step"
    else:  # call 2 is iteration 1's first
        fail, owner, name = failing_in(2, calls), torch.optim.AdamW, "step"
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda self, *a, **k: fail(real, self, *a, **k))
    config = tiny_config(random_model, tmp_path, train={"num_iterations": 3})
    with pytest.raises(RunFailed) as failed:
        trainer.train_local(config, tmp_path, show_progress=False)
    message = str(failed.value)
    assert calls == list(range(4 if inside == "second step" else 3))
    assert message.startswith("the run failed in iteration 1: reward server answered HTTP 500; ")
    assert "is checkpointed" not in message and "no checkpoint was written yet" in message
    assert latest_checkpoint(tmp_path) is None


def test_a_failure_in_an_update_before_its_first_optimizer_step_checkpoints_the_last_learned_iteration(
    random_model,  # noqa: F811
    tmp_path,
    monkeypatch,
    updaters,
    one_thread,  # noqa: F811
):
    """A failure as iteration 1's update starts (in its old or reference forwards, say) has moved nothing: the
    weights, optimizer and schedule are still iteration 0's, so iteration 0 is checkpointed and nothing is lost."""
    calls: list[int] = []
    fail = failing_in(1, calls)
    real_update = PolicyUpdater.update
    monkeypatch.setattr(PolicyUpdater, "update", lambda self, *a, **k: fail(real_update, self, *a, **k))
    config = tiny_config(random_model, tmp_path, train={"num_iterations": 3})
    with pytest.raises(RunFailed) as failed:
        trainer.train_local(config, tmp_path, show_progress=False)
    assert "(iteration 0, the last learned, is checkpointed); resume from iter_000000 with `" in str(failed.value)
    checkpoint = latest_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.name == "iter_000000"
    module = updaters[0].module
    saved = copy.deepcopy(module)
    torch.nn.init.zeros_(next(saved.parameters()))
    state = load_checkpoint_weights(checkpoint, saved)
    assert (state["iteration"], state["prompt_cursor"], state["num_updates"]) == (0, 2, 2)
    current, kept = module.state_dict(), saved.state_dict()
    assert all(torch.equal(current[key], kept[key]) for key in current)


def test_a_stop_after_the_last_iteration_says_only_the_final_model_is_left(tmp_path):
    message = trainer.stopped_message(tmp_path, "SIGTERM", 4, 5)
    assert message.startswith("stopped on SIGTERM after iteration 4 (5 of 5 done); the training is complete")
    assert "the final model and evaluation are not written; no checkpoint was written yet" in message
    assert "complete" not in trainer.stopped_message(tmp_path, "SIGINT", 3, 5)


def test_a_resume_redoes_a_lost_iteration_exactly(
    random_model,  # noqa: F811
    tmp_path,
    updaters,
    one_thread,  # noqa: F811
    monkeypatch,
):
    """The resume from iter_000001 redoes iteration 2 with the checkpoint's weights, Adam state and place in the
    learning-rate schedule: its record (timings aside) and the final weights equal the unbroken run's. A resume
    that dropped the optimizer state or restarted the schedule differs in `optim/lr` and the weights."""
    import json
    import shutil

    from maskfocus.run_io import RecentReward

    bars: list[list[float]] = []  # the rewards each run's progress bar starts from

    class Seen(RecentReward):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(list(self.values))

    monkeypatch.setattr(trainer, "RecentReward", Seen)
    config = tiny_config(random_model, tmp_path, train={"num_iterations": 3, "checkpoint_every": 1})
    trainer.train_local(config, tmp_path, show_progress=False)
    unbroken = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[2])
    unbroken_weights = {key: value.clone() for key, value in updaters[0].module.state_dict().items()}
    shutil.rmtree(tmp_path / "checkpoints" / "iter_000002")
    trainer.train_local(config, tmp_path, resume=True, show_progress=False)
    redone = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[2])
    assert (
        redone["iteration"] == 2
        and redone["optim/lr"] < json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[1])["optim/lr"]
    )
    untimed = [key for key in unbroken if not key.startswith("perf/") and not key.endswith("seconds")]
    assert len(untimed) > 20 and {key: redone[key] for key in untimed} == {key: unbroken[key] for key in untimed}
    resumed_weights = updaters[1].module.state_dict()
    assert all(torch.equal(unbroken_weights[key], resumed_weights[key]) for key in unbroken_weights)
    kept = [json.loads(line)["reward/mean"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()[:2]]
    assert bars == [[], kept]  # the resumed bar goes on from the kept iterations 0-1
