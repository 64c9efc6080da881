"""benchmarks/text_encoder_rl.py: the probe's updater moves the text encoder, keeps a frozen reference encoder, and
its model folder carries the trained encoder."""

from __future__ import annotations

import pytest
import torch
from support import load_benchmark

import maskfocus.trainer as trainer
from maskfocus.config import ConfigError, GRPOConfig, OptimConfig
from maskfocus.types import TrainBatch

PROMPTS = ["a photo of a circle above a square", "a photo of two circles"]


@pytest.fixture
def fresh_model():
    """A private copy of the shipped model: the probe trains its text encoder in place."""
    from maskfocus.models.amused import AmusedGenerator

    return AmusedGenerator.from_folder()


def make_batch(model, valid: list[bool]) -> TrainBatch:
    generator = torch.Generator().manual_seed(0)
    num_samples = len(valid)
    num_tokens = model.grid_size[0] * model.grid_size[1]
    return TrainBatch(
        [PROMPTS[i // 2] for i in range(num_samples)],
        torch.randint(0, model.codebook_size, (num_samples, num_tokens), generator=generator),
        torch.tensor([[1, 3]]).expand(num_samples, 2).clone(),
        torch.tensor([[250, 200]]).expand(num_samples, 2).clone(),
        None,
        None,
        torch.tensor([1.0, -1.0] * (num_samples // 2)),
        torch.tensor(valid),
        0,
        0,
    )


def make_updater(module, model):
    return module.TextAndTransformerUpdater(
        model, GRPOConfig(beta=0.1), OptimConfig(learning_rate=1e-2), num_sampling_steps=12, total_updates=4
    )


def test_learning_prompts_follow_the_rows_the_update_keeps(fresh_model):
    module = load_benchmark("text_encoder_rl")
    assert module.learning_prompts(make_batch(fresh_model, [True] * 4)) == [PROMPTS[0]] * 2 + [PROMPTS[1]] * 2
    assert module.learning_prompts(make_batch(fresh_model, [False, False, True, True])) == [PROMPTS[1]] * 2
    assert module.learning_prompts(make_batch(fresh_model, [False] * 4)) == [PROMPTS[0]]


def test_update_moves_both_modules_and_keeps_the_reference_encoder(fresh_model):
    module = load_benchmark("text_encoder_rl")
    original = {k: v.clone() for k, v in fresh_model.text_encoder.state_dict().items()}
    transformer_before = {k: v.clone() for k, v in fresh_model.transformer.state_dict().items()}
    updater = make_updater(module, fresh_model)
    metrics = updater.update(make_batch(fresh_model, [True] * 4), torch.Generator().manual_seed(1))
    assert metrics["perf/optimizer_steps"] == 2
    assert metrics["loss/ratio_mean"] != 1.0  # the second step is scored after the first moved both modules
    moved = [k for k, v in fresh_model.text_encoder.state_dict().items() if not torch.equal(v, original[k])]
    assert moved, "the text encoder did not move"
    assert any(not torch.equal(v, transformer_before[k]) for k, v in fresh_model.transformer.state_dict().items())
    for name, tensor in updater.reference_text_encoder.state_dict().items():
        assert torch.equal(tensor, original[name]), name
    optimized = {id(p) for group in updater.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimized for p in fresh_model.text_encoder.parameters())


def test_policy_log_probs_use_the_trainable_encoder(fresh_model):
    """The first step's KL is zero (policy = reference); after the encoder alone moves, it is not."""
    module = load_benchmark("text_encoder_rl")
    updater = make_updater(module, fresh_model)
    batch = make_batch(fresh_model, [True] * 4)
    steps = updater.prepare(batch, torch.Generator().manual_seed(1))
    updater._prompts = module.learning_prompts(batch)
    condition = fresh_model.encode_prompts(batch.prompts_B)
    with torch.no_grad():
        policy, _ = updater._logp(steps[0], batch.tokens_BL, condition, updater.policy_forward)
        reference, _ = updater._logp(steps[0], batch.tokens_BL, condition, updater.reference_forward)
        assert torch.allclose(policy, reference)
        for parameter in fresh_model.text_encoder.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
        moved, _ = updater._logp(steps[0], batch.tokens_BL, condition, updater.policy_forward)
    assert not torch.allclose(moved, reference)


def test_saved_folder_holds_the_trained_encoder(fresh_model, tmp_path, monkeypatch):
    module = load_benchmark("text_encoder_rl")
    for name in ("PolicyUpdater", "sync_weights", "save_model_folder"):
        monkeypatch.setattr(trainer, name, getattr(trainer, name))  # restored after the test
    module.install()
    updater = trainer.PolicyUpdater(
        fresh_model, GRPOConfig(beta=0.0), OptimConfig(learning_rate=1e-2), num_sampling_steps=12, total_updates=2
    )
    updater.update(make_batch(fresh_model, [True] * 4), torch.Generator().manual_seed(1))
    from maskfocus.config import default_run_config
    from maskfocus.models.amused import AmusedGenerator

    # through the trainer's own end of a run: the probe's stand-in for save_model_folder must take what it passes
    # (a new keyword made it fail after a whole training run, with nothing saved)
    config = default_run_config({"train.final_eval": False})
    trainer.finish_run(config, tmp_path, fresh_model, updater.module)
    reloaded = AmusedGenerator.from_folder(str(tmp_path / "model"))
    for name, tensor in fresh_model.text_encoder.state_dict().items():
        assert torch.equal(reloaded.text_encoder.state_dict()[name], tensor), name
    for name, tensor in fresh_model.transformer.state_dict().items():
        assert torch.equal(reloaded.transformer.state_dict()[name], tensor), name
    shipped = AmusedGenerator.from_folder()
    assert any(
        not torch.equal(shipped.text_encoder.state_dict()[name], tensor)
        for name, tensor in reloaded.text_encoder.state_dict().items()
    )


def test_a_resume_is_refused_since_the_checkpoints_hold_the_transformer_only(tmp_path):
    """`--resume RUN` went on with the transformer and restarted the text encoder from the base, without a word."""
    module = load_benchmark("text_encoder_rl")
    for argv in (["--resume", str(tmp_path)], ["train", f"--resume={tmp_path}", "--check"]):
        with pytest.raises(ConfigError, match=r"^--resume: this probe's checkpoints hold the transformer only"):
            module.main(argv)
