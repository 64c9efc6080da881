"""The Meissonic adapter on a tiny folder whose transformer/transformer.py is the test's own module with the
released call signature: trust gate, the inputs the reference pipeline builds, CFG with a negative prompt."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from model_folders import CODEBOOK, TEXT_LENGTH, VOCAB
from torch import nn

from maskfocus.compiled import PaddedCompiled, per_sample_inputs
from maskfocus.config import ModelConfig
from maskfocus.models import load_generator
from maskfocus.models.base import ModelLoadError
from maskfocus.models.image_codec import MEISSONIC_RESOLUTION, native_resolution
from maskfocus.models.meissonic import (
    MeissonicGenerator,
    add_missing_head_dim,
    image_position_ids,
)
from maskfocus.sampling import sample_prompts, seeded_generator

RESOLUTION = 32  # VQ downscale 2 -> a 16 x 16 token grid, 8 x 8 inside the downsampling transformer


@pytest.fixture(scope="module")
def model(meissonic_folder):
    return MeissonicGenerator.from_folder(meissonic_folder, resolution=RESOLUTION, trust_checkpoint_code=True)


def test_refuses_checkpoint_code_without_trust_and_never_imports_it(meissonic_copy):
    with pytest.raises(ModelLoadError, match=r"transformer/transformer\.py.*model\.trust_checkpoint_code: true"):
        load_generator(ModelConfig(path=str(meissonic_copy), kind="meissonic"))
    assert not (meissonic_copy / "transformer" / "IMPORTED").exists()


def test_an_amused_folder_loaded_as_meissonic_says_to_set_kind_amused(amused_folder):
    """It used to ask to trust the folder's code, then, once trusted, to copy a transformer.py into it."""
    for trusted in (False, True):
        config = ModelConfig(path=str(amused_folder), kind="meissonic", trust_checkpoint_code=trusted)
        with pytest.raises(
            ModelLoadError, match=r"is an aMUSEd folder \(its transformer is a UVit2DModel\); set model.kind: amused"
        ):
            load_generator(config)


def test_trusted_folder_loads_the_class_from_its_own_file(model, meissonic_folder):
    assert type(model.transformer).__module__.startswith("maskfocus_checkpoint_code_")
    assert (meissonic_folder / "transformer" / "IMPORTED").exists()
    assert model.mask_token_id == VOCAB - 1 and model.codebook_size == CODEBOOK
    assert model.grid_size == (16, 16) and model.image_size == RESOLUTION
    assert model.blocks() == [*model.transformer.transformer_blocks, *model.transformer.single_transformer_blocks]


def test_missing_code_file_is_explained(meissonic_copy):
    (meissonic_copy / "transformer" / "transformer.py").unlink()
    with pytest.raises(ModelLoadError, match=r"no transformer/transformer\.py: copy the Transformer2DModel source"):
        MeissonicGenerator.from_folder(meissonic_copy, trust_checkpoint_code=True)


def test_mismatched_codebook_size_fails_before_running_code(meissonic_copy):
    path = meissonic_copy / "transformer" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "codebook_size": 64}))
    with pytest.raises(ModelLoadError, match="codebook sizes disagree.*codebook_size=64"):
        MeissonicGenerator.from_folder(meissonic_copy, trust_checkpoint_code=True)
    assert not (meissonic_copy / "transformer" / "IMPORTED").exists()


def test_missing_part_is_named(meissonic_copy):
    import shutil

    shutil.rmtree(meissonic_copy / "vqvae")
    with pytest.raises(ModelLoadError, match=r"missing part\(s\) vqvae \(a Meissonic folder needs"):
        MeissonicGenerator.from_folder(meissonic_copy, trust_checkpoint_code=True)


def test_transformer_gets_the_reference_pipeline_inputs(model):
    """Micro-conds at the resolution, pooled projection + penultimate states, zero txt_ids, (0, row, col) img_ids
    over the downsampled grid, and the scheduler's count-down step index as timestep."""
    condition = model.encode_prompts(["a red cat", "a cat"])
    tokens = torch.full((2, 256), model.mask_token_id)
    with torch.no_grad():
        logits = model.logits(tokens, condition, step=torch.tensor([0, 5]), num_steps=8)
        output = model.text_encoder(
            model.tokenizer(["a red cat"], padding="max_length", max_length=TEXT_LENGTH, return_tensors="pt").input_ids,
            output_hidden_states=True,
        )
    seen = model.transformer.last_inputs
    assert logits.shape == (2, 256, CODEBOOK) and logits.dtype == torch.float32
    assert seen["hidden_states"].shape == (2, 16, 16)
    assert seen["timestep"].tolist() == [7, 2]
    assert seen["micro_conds"].tolist() == [[32.0, 32.0, 0.0, 0.0, 6.0]] * 2
    assert torch.equal(seen["txt_ids"], torch.zeros(TEXT_LENGTH, 3))
    assert seen["img_ids"].shape == (64, 3) and seen["img_ids"][9].tolist() == [0.0, 1.0, 1.0]
    torch.testing.assert_close(seen["pooled_projections"][0], output.text_embeds[0])
    torch.testing.assert_close(seen["encoder_hidden_states"][0], output.hidden_states[-2][0])


def test_timestep_changes_the_logits(model):
    condition = model.encode_prompts(["a cat"])
    tokens = torch.full((1, 256), model.mask_token_id)
    with torch.no_grad():
        first, last = (model.logits(tokens, condition, step=s, num_steps=8) for s in (0, 7))
    assert not torch.allclose(first, last)


def test_image_position_ids_without_downsampling_cover_the_token_grid():
    ids = image_position_ids((4, 6), downsample=False, device=torch.device("cpu"))
    assert ids.shape == (24, 3) and ids[-1].tolist() == [0.0, 3.0, 5.0] and ids[:, 0].abs().sum() == 0


def test_cfg_runs_the_negative_prompt_as_the_unconditional_branch(model):
    result = sample_prompts(
        model,
        ["a red cat", "a cat"],
        num_steps=4,
        cfg_scale=5.0,
        gumbel_temperature_initial=2.0,
        generator=seeded_generator(0),
        negative_prompt="blurry",
    )
    seen = model.transformer.last_inputs
    negative = model.encode_prompts(["blurry"])
    assert seen["hidden_states"].shape[0] == 4  # conditional and negative halves in one forward
    torch.testing.assert_close(seen["encoder_hidden_states"][2:], negative.hidden_BSD.expand(2, -1, -1))
    torch.testing.assert_close(seen["pooled_projections"][2:], negative.pooled_BD.expand(2, -1))
    assert seen["timestep"].tolist() == [0] * 4  # the last of 4 steps
    assert result.tokens_BL.shape == (2, 256) and int(result.tokens_BL.max()) < CODEBOOK
    images = model.decode(result.tokens_BL)
    assert images.shape == (2, 3, RESOLUTION, RESOLUTION) and images.min() >= 0 and images.max() <= 1


def test_bfloat16_weights(meissonic_folder, model):
    config = ModelConfig(
        path=str(meissonic_folder), kind="meissonic", trust_checkpoint_code=True, dtype="bfloat16", resolution=32
    )
    half = load_generator(config)
    assert next(half.transformer.parameters()).dtype == torch.bfloat16
    tokens = torch.full((1, 256), model.mask_token_id)
    with torch.no_grad():
        logits = half.logits(tokens, half.encode_prompts(["a cat"]), step=1, num_steps=4)
        reference = model.logits(tokens, model.encode_prompts(["a cat"]), step=1, num_steps=4)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference, atol=0.15, rtol=0.05)


def test_native_resolution_is_1024_unless_the_transformer_states_a_sample_size():
    vq = SimpleNamespace(block_out_channels=(16, 32, 64))  # downscale 4
    assert native_resolution("meissonic", SimpleNamespace(), vq) == MEISSONIC_RESOLUTION == 1024
    assert native_resolution("meissonic", SimpleNamespace(sample_size=16), vq) == 64


def released_attentions(dim: int = 32, heads: int = 2) -> tuple[nn.Module, nn.Module]:
    """(dual-stream, single-stream) attention built as the released transformer.py builds them."""
    from diffusers.models.attention_processor import Attention, FluxAttnProcessor2_0

    common = {"cross_attention_dim": None, "dim_head": dim // heads, "heads": heads, "out_dim": dim, "bias": True}
    rms = {"qk_norm": "rms_norm", "eps": 1e-6}
    dual = Attention(
        dim, added_kv_proj_dim=dim, context_pre_only=False, processor=FluxAttnProcessor2_0(), **common, **rms
    )
    single = Attention(dim, processor=FluxAttnProcessor2_0(), pre_only=True, **common, **rms)
    return dual, single


def reference_self_attention(attention: nn.Module, x_BSD: torch.Tensor) -> torch.Tensor:
    """Per-head RMS-normed q and k, softmax(q k^T / sqrt(d)) v, heads concatenated: what the released
    FluxAttnProcessor2_0 computed for a single-stream block."""
    projections = (attention.to_q, attention.to_k, attention.to_v)
    q, k, v = (proj(x_BSD).unflatten(-1, (attention.heads, -1)).transpose(1, 2) for proj in projections)
    q, k = attention.norm_q(q), attention.norm_k(k)
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).flatten(2)


def test_released_attention_gets_its_head_dim_and_then_computes_attention():
    dual, single = released_attentions()
    x, context = torch.randn(2, 5, 32), torch.randn(2, 3, 32)
    with pytest.raises(AttributeError, match="head_dim"):  # what the installed diffusers does with the release
        single(hidden_states=x)
    assert add_missing_head_dim(nn.ModuleList([dual, single])) == 2
    assert dual.head_dim == single.head_dim == 16
    assert add_missing_head_dim(nn.ModuleList([dual, single])) == 0
    with torch.no_grad():
        image, text = dual(hidden_states=x, encoder_hidden_states=context)
        out = single(hidden_states=x)
        expected = reference_self_attention(single, x)
    assert image.shape == (2, 5, 32) and text.shape == (2, 3, 32)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_checkpoint_attention_runs_with_the_installed_diffusers(model):
    from diffusers.models.attention_processor import Attention

    attentions = [m for m in model.transformer.modules() if isinstance(m, Attention)]
    assert len(attentions) == 2 and all(a.head_dim == 16 for a in attentions)
    with torch.no_grad():
        logits = model.logits(torch.full((1, 256), model.mask_token_id), model.encode_prompts(["a cat"]), 0, 4)
    assert logits.shape == (1, 256, CODEBOOK) and torch.isfinite(logits).all()


def test_a_failing_test_forward_is_a_load_error_naming_the_folder(meissonic_copy):
    code = meissonic_copy / "transformer" / "transformer.py"
    broken = (
        "\n\ndef _broken(self, **inputs):\n    raise RuntimeError('boom')\n\n\nTransformer2DModel.forward = _broken\n"
    )
    code.write_text(code.read_text() + broken)
    with pytest.raises(ModelLoadError, match=rf"{meissonic_copy}: a test forward .*RuntimeError: boom"):
        MeissonicGenerator.from_folder(meissonic_copy, resolution=RESOLUTION, trust_checkpoint_code=True)


def test_padding_a_batch_that_equals_the_text_length_leaves_txt_ids_alone(model):
    """Compiled at batch 17, called with TEXT_LENGTH = 16 samples: txt_ids (16, 3) is not per-sample and must not
    grow a row (the eager transformer stands in for the compiled one)."""
    assert per_sample_inputs(model.transformer) == set(MeissonicGenerator.PER_SAMPLE_INPUTS)
    padded = PaddedCompiled(model.transformer)
    padded.compiled = model.transformer
    prompts = ["a cat", "a red cat"] * 9
    with torch.no_grad():
        model.logits(torch.full((17, 256), model.mask_token_id), model.encode_prompts(prompts[:17]), module=padded)
        tokens = torch.randint(0, CODEBOOK, (TEXT_LENGTH, 256), generator=torch.Generator().manual_seed(0))
        condition = model.encode_prompts(prompts[:TEXT_LENGTH])
        logits = model.logits(tokens, condition, step=1, num_steps=4, module=padded)
        seen = dict(model.transformer.last_inputs)
        eager = model.logits(tokens, condition, step=1, num_steps=4)
    assert padded.batch_sizes == [17] and seen["hidden_states"].shape[0] == 17
    assert seen["txt_ids"].shape == (TEXT_LENGTH, 3) and seen["img_ids"].shape == (64, 3)
    torch.testing.assert_close(logits, eager, rtol=1e-5, atol=1e-5)


def test_a_float32_copy_conditions_on_the_timesteps_its_bfloat16_rollouts_compute(meissonic_folder):
    """The release scales the timestep in the module's dtype: bfloat16 turns 63 * 1000 into 62976. The float32
    learner must score the rollouts under the conditioning they were sampled with, so it is fed the timestep that
    reproduces the rollouts' rounding; with float32 rollouts it gets the plain step index."""
    folder = {"path": str(meissonic_folder), "kind": "meissonic", "trust_checkpoint_code": True, "resolution": 32}
    rollouts = load_generator(ModelConfig(**folder, dtype="bfloat16"))
    learner = load_generator(ModelConfig(**folder, dtype="bfloat16"), dtype="float32")
    plain = load_generator(ModelConfig(**folder, dtype="float32"))
    steps = torch.arange(64)

    def scaled_timesteps(model):
        """timestep * 1000 as the transformer computes it, in its own dtype, for every step of a 64-step run."""
        condition = model.encode_prompts(["a cat"] * 64)
        with torch.no_grad():
            model.logits(torch.full((64, 256), model.mask_token_id), condition, step=steps, num_steps=64)
        timestep = model.transformer.last_inputs["timestep"]
        return (timestep.to(next(model.transformer.parameters()).dtype) * 1000).float()

    in_bfloat16 = scaled_timesteps(rollouts)
    assert (in_bfloat16 != (63 - steps) * 1000.0).sum() > 40  # bfloat16 rounds most of them
    torch.testing.assert_close(scaled_timesteps(learner), in_bfloat16, rtol=0, atol=0.01)
    assert torch.equal(scaled_timesteps(plain), (63 - steps) * 1000.0)


def test_train_names_an_untrusted_meissonic_folder_before_the_run_starts(meissonic_folder, tmp_path, capsys):
    """The trust gate and the code file are cheap checks: `train --check` and `train` name them, and nothing is
    written, instead of rollout workers failing at start."""
    from support import cli_error

    runs = tmp_path / "runs"
    settings = ["--set", f"model.path={meissonic_folder}", "--set", "model.kind=meissonic"]
    settings += ["--set", f"train.out_dir={runs}", "--executor", "local"]
    for check in (["--check"], []):
        error = cli_error(capsys, "train", *settings, *check)
        assert "is a Meissonic folder: its transformer is Python code shipped with the checkpoint" in error
    assert not runs.exists()


@pytest.mark.parametrize(
    ("transformer_config", "named"),
    [
        ({"joint_attention_dim": 48, "pooled_projection_dim": 16}, "joint_attention_dim=48"),
        ({"encoder_hidden_size": 32, "cond_embed_dim": 24}, "cond_embed_dim=24"),  # a UVit2D-style class's names
    ],
)
def test_a_text_encoder_of_other_widths_is_refused_under_either_classs_names(transformer_config, named):
    """A UVit2D-style class in this format (shapes/positional_uvit.py) names its text widths as aMUSEd does: the
    check read only Meissonic's names, so it checked nothing for such a folder."""
    from maskfocus.models.meissonic import _check_conditioning

    text = SimpleNamespace(hidden_size=32, projection_dim=16)
    with pytest.raises(ModelLoadError, match=rf"^folder: transformer {named} but the text encoder's .* is \d+;"):
        _check_conditioning("folder", SimpleNamespace(**transformer_config), text)
    _check_conditioning("folder", SimpleNamespace(joint_attention_dim=32, pooled_projection_dim=16), text)
    _check_conditioning("folder", SimpleNamespace(encoder_hidden_size=32, cond_embed_dim=16), text)
