"""The Meissonic adapter on a tiny folder whose transformer/transformer.py is the test's own module with the
released call signature: trust gate, the inputs the reference pipeline builds, CFG with a negative prompt."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from model_folders import CODEBOOK, TEXT_LENGTH, VOCAB

from maskfocus.config import ModelConfig
from maskfocus.models import load_generator
from maskfocus.models.base import ModelLoadError
from maskfocus.models.meissonic import NATIVE_RESOLUTION, MeissonicGenerator, image_position_ids, native_resolution
from maskfocus.sampling import sample_prompts, seeded_generator

RESOLUTION = 32  # VQ downscale 2 -> a 16 x 16 token grid, 8 x 8 inside the downsampling transformer


@pytest.fixture(scope="module")
def model(meissonic_folder):
    return MeissonicGenerator.from_folder(meissonic_folder, resolution=RESOLUTION, trust_checkpoint_code=True)


def test_refuses_checkpoint_code_without_trust_and_never_imports_it(meissonic_copy):
    with pytest.raises(ModelLoadError, match=r"transformer/transformer\.py.*model\.trust_checkpoint_code: true"):
        load_generator(ModelConfig(path=str(meissonic_copy), kind="meissonic"))
    assert not (meissonic_copy / "transformer" / "IMPORTED").exists()


def test_trusted_folder_loads_the_class_from_its_own_file(model, meissonic_folder):
    assert type(model.transformer).__module__.startswith("maskfocus_checkpoint_code_")
    assert (meissonic_folder / "transformer" / "IMPORTED").exists()
    assert model.mask_token_id == VOCAB - 1 and model.codebook_size == CODEBOOK
    assert model.grid_size == (16, 16) and model.image_size == RESOLUTION
    assert len(model.blocks()) == 2


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
    assert native_resolution(SimpleNamespace(), vq) == NATIVE_RESOLUTION == 1024
    assert native_resolution(SimpleNamespace(sample_size=16), vq) == 64
