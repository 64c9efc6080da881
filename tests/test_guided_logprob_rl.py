"""benchmarks/guided_logprob_rl.py: the probe's log-probs are those of the CFG-guided logits the sampler draws from."""

from __future__ import annotations

import pytest
import torch
from support import load_benchmark

import maskfocus.trainer as trainer
from maskfocus.config import GRPOConfig, OptimConfig
from maskfocus.sampling import guided_logits
from maskfocus.types import TrainBatch
from maskfocus.update import PolicyUpdater

PROMPTS = ["a photo of a red circle", "a photo of two squares"]


@pytest.fixture(scope="module")
def model():
    from maskfocus.models.amused import AmusedGenerator

    return AmusedGenerator.from_folder()


def make_batch(model, num_selected: int) -> TrainBatch:
    generator = torch.Generator().manual_seed(0)
    num_tokens = model.grid_size[0] * model.grid_size[1]
    return TrainBatch(
        [PROMPTS[i // 2] for i in range(4)],
        torch.randint(0, model.codebook_size, (4, num_tokens), generator=generator),
        torch.tensor([[1, 3, 8][:num_selected], [2, 5, 9][:num_selected]] * 2),
        torch.tensor([[250, 200, 60][:num_selected], [245, 150, 40][:num_selected]] * 2),
        None,
        None,
        torch.tensor([1.0, -1.0, 0.5, -0.5]),
        torch.tensor([True] * 4),
        0,
        0,
    )


def make_updater(module, model, scale: float, beta: float = 0.0):
    updater_class = type("Scaled", (module.GuidedUpdater,), {"guidance_scale": scale})
    return updater_class(model, GRPOConfig(beta=beta), OptimConfig(learning_rate=1e-3), 12, total_updates=4)


def test_log_probs_equal_a_per_row_guided_reference(model):
    module = load_benchmark("guided_logprob_rl")
    updater = make_updater(module, model, scale=3.0)
    batch = make_batch(model, num_selected=2)
    step = updater.prepare(batch, torch.Generator().manual_seed(1))[1]
    condition = model.encode_prompts(batch.prompts_B)
    uncondition = model.encode_prompts([""])
    with torch.no_grad():
        logp_BL, _ = updater._logp(step, batch.tokens_BL, condition, updater.policy_forward)
        for row in range(4):
            logits_1LV = guided_logits(
                model,
                step.inputs_BL[row : row + 1],
                condition.select(slice(row, row + 1)),
                uncondition,
                3.0,
                int(step.steps_B[row]),
                12,
            )
            expected_L = torch.log_softmax(logits_1LV[0], -1).gather(-1, batch.tokens_BL[row, :, None])[:, 0]
            torch.testing.assert_close(logp_BL[row], expected_L, atol=1e-4, rtol=1e-4)
    assert len(set(step.steps_B.tolist())) == 2, "the rows must sit at different steps"


def test_guidance_scale_one_is_the_conditional_branch(model):
    module = load_benchmark("guided_logprob_rl")
    guided = make_updater(module, model, scale=1.0)
    plain = PolicyUpdater(model, GRPOConfig(beta=0.0), OptimConfig(learning_rate=1e-3), 12, total_updates=4)
    batch = make_batch(model, num_selected=1)
    step = guided.prepare(batch, torch.Generator().manual_seed(1))[0]
    condition = model.encode_prompts(batch.prompts_B)
    with torch.no_grad():
        ours = guided._logp(step, batch.tokens_BL, condition, guided.module)[0]
        theirs = plain._logp(step, batch.tokens_BL, condition, plain.module)[0]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    scaled = make_updater(module, model, scale=3.0)
    with torch.no_grad():
        at_three = scaled._logp(step, batch.tokens_BL, condition, scaled.module)[0]
    assert (at_three - theirs).abs().max() > 0.1  # the guidance changes what is scored


def test_first_ratio_is_one_and_the_update_moves_the_policy(model):
    from maskfocus.models.amused import AmusedGenerator

    fresh = AmusedGenerator.from_folder()
    module = load_benchmark("guided_logprob_rl")
    updater = make_updater(module, fresh, scale=3.0, beta=0.1)
    before = {name: tensor.clone() for name, tensor in fresh.transformer.state_dict().items()}
    metrics = updater.update(make_batch(fresh, num_selected=1), torch.Generator().manual_seed(1))
    assert metrics["loss/ratio_mean"] == 1.0
    assert metrics["loss/kl"] == pytest.approx(0.0, abs=1e-6)  # policy = reference before the first step
    assert any(not torch.equal(t, before[name]) for name, t in fresh.transformer.state_dict().items())


def test_install_swaps_the_trainers_updater_and_takes_the_runs_guidance_scale(monkeypatch, capsys):
    """The log-probs' scale defaulted to 3.0 whatever the run's sampler.cfg_scale, which the rollouts used."""
    from maskfocus.config import default_run_config

    module = load_benchmark("guided_logprob_rl")
    monkeypatch.setattr(trainer, "PolicyUpdater", trainer.PolicyUpdater)  # restored after the test

    def plain_train_local(config, run_dir, resume=False, show_progress=True):
        return run_dir

    monkeypatch.setattr(trainer, "train_local", plain_train_local)
    monkeypatch.setattr(module.GuidedUpdater, "guidance_scale", module.GuidedUpdater.guidance_scale)
    module.install(None)
    assert trainer.PolicyUpdater is module.GuidedUpdater
    assert trainer.train_local(default_run_config({"sampler.cfg_scale": 5.0}), "run") == "run"
    assert module.GuidedUpdater.guidance_scale == 5.0 and capsys.readouterr().out == ""
    trainer.train_local = plain_train_local  # a process installs once
    module.install(2.0)  # an explicit scale wins, with a note
    trainer.train_local(default_run_config({"sampler.cfg_scale": 5.0}), "run")
    assert module.GuidedUpdater.guidance_scale == 2.0
    assert "log-probs at guidance 2, rollouts sampled at sampler.cfg_scale 5" in capsys.readouterr().out


@pytest.mark.parametrize("probe", ["guided_logprob_rl", "text_encoder_rl"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--executor", "ray"], "argument --executor: invalid choice: 'ray'"),
        (["--set", "train.executor=ray"], "--set train.executor=ray: this probe trains in-process only"),
        (["train", "--set=train.executor=ray"], "--set train.executor=ray: this probe trains in-process only"),
    ],
)
def test_the_ray_executor_is_refused_in_the_probes_words_not_replaced(probe, args, message, capsys):
    """text_encoder_rl replaced --executor ray without a word; `--set train.executor=ray` got train's complaint
    about an --executor local the user never typed."""
    module = load_benchmark(probe)
    with pytest.raises(SystemExit) as exited:
        module.main(args)
    assert exited.value.code == 2 and message in capsys.readouterr().err


def test_the_probes_help_says_what_they_are_and_where_other_arguments_go(capsys):
    module = load_benchmark("text_encoder_rl")
    with pytest.raises(SystemExit):
        module.main(["--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: ") and "updates the text encoder together with the transformer" in text
    assert "Any other argument goes to `maskfocus train`" in text
