"""The aMUSEd adapter on a tiny random folder in the real amused-256/512 format (CLIP BPE tokenizer, mask id
above the codebook), checked against what diffusers' AmusedPipeline feeds its transformer."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from model_folders import CODEBOOK, TEXT_LENGTH, VOCAB

from maskfocus.config import ModelConfig
from maskfocus.models import load_generator
from maskfocus.models.amused import AmusedGenerator
from maskfocus.models.base import ModelLoadError


@pytest.fixture(scope="module")
def model(amused_folder):
    return AmusedGenerator.from_folder(amused_folder)


def test_loads_clip_tokenizer_mask_id_and_geometry(model):
    from transformers import CLIPTokenizer

    assert isinstance(model.tokenizer, CLIPTokenizer)
    assert model.mask_token_id == VOCAB - 1 != model.codebook_size == CODEBOOK
    assert model.grid_size == (8, 8) and model.image_size == 16
    assert model.codec.pixel_range == (0.0, 1.0)
    assert model.text_max_length == TEXT_LENGTH


def _capture(module: torch.nn.Module) -> dict:
    seen: dict = {}

    def hook(_, args, kwargs):
        names = ("input_ids", "encoder_hidden_states", "pooled_text_emb", "micro_conds")
        seen.update(zip(names, args, strict=False))
        seen.update(kwargs)

    module.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_transformer_inputs_match_amused_pipeline(amused_folder):
    """One pipeline step (no CFG) and one adapter forward on the same prompt get identical transformer inputs."""
    from diffusers import AmusedPipeline

    prompt = "a red cat"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline = AmusedPipeline.from_pretrained(str(amused_folder), local_files_only=True)
    pipeline.set_progress_bar_config(disable=True)
    expected = _capture(pipeline.transformer)
    pipeline(prompt, num_inference_steps=1, guidance_scale=1.0, output_type="latent")

    model = AmusedGenerator.from_folder(amused_folder)
    got = _capture(model.transformer)
    with torch.no_grad():
        model.logits(torch.full((1, 64), model.mask_token_id), model.encode_prompts([prompt]), step=0, num_steps=1)
    assert torch.equal(got["input_ids"], expected["input_ids"])
    for name in ("encoder_hidden_states", "pooled_text_emb", "micro_conds"):
        torch.testing.assert_close(got[name], expected[name])
    assert expected["micro_conds"][0].tolist() == [16.0, 16.0, 0.0, 0.0, 6.0]


def test_step_does_not_change_logits(model):
    """UVit2DModel takes no timestep: the same input at any step gives the same logits."""
    condition = model.encode_prompts(["a cat", ""])
    tokens = torch.randint(0, CODEBOOK, (2, 64))
    tokens[:, ::3] = model.mask_token_id
    with torch.no_grad():
        first = model.logits(tokens, condition, step=0, num_steps=8)
        last = model.logits(tokens, condition, step=torch.tensor([7, 3]), num_steps=8)
    assert first.shape == (2, 64, CODEBOOK) and first.dtype == torch.float32
    torch.testing.assert_close(first, last)


def test_decode_and_encode_use_zero_one_pixels(model):
    tokens = torch.randint(0, CODEBOOK, (2, 64))
    images = model.decode(tokens)
    assert images.shape == (2, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    assert model.encode_images(images).shape == (2, 64)
    assert model.codebook_vectors(tokens).shape == (2, 64, 8)


def test_resolution_sets_grid_and_micro_conditions(amused_folder):
    model = AmusedGenerator.from_folder(amused_folder, resolution=32)
    seen = _capture(model.transformer)
    with torch.no_grad():
        logits = model.logits(torch.full((1, 256), model.mask_token_id), model.encode_prompts(["a cat"]))
    assert model.grid_size == (16, 16) and logits.shape == (1, 256, CODEBOOK)
    assert seen["micro_conds"][0].tolist() == [32.0, 32.0, 0.0, 0.0, 6.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_give_float32_logits_close_to_float32(amused_folder, model, dtype):
    name = str(dtype).removeprefix("torch.")
    half = load_generator(ModelConfig(path=str(amused_folder), dtype=name))
    assert next(half.transformer.parameters()).dtype == dtype
    assert next(half.text_encoder.parameters()).dtype == dtype
    assert next(half.vqvae.parameters()).dtype == torch.float32
    tokens = torch.full((2, 64), model.mask_token_id)
    with torch.no_grad():
        reference = model.logits(tokens, model.encode_prompts(["a cat", "red"]))
        logits = half.logits(tokens, half.encode_prompts(["a cat", "red"]))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference, atol=0.1, rtol=0.05)


def test_missing_part_is_named(amused_copy):
    shutil.rmtree(amused_copy / "tokenizer")
    with pytest.raises(ModelLoadError, match=r"missing part\(s\) tokenizer .*needs vqvae, transformer"):
        AmusedGenerator.from_folder(amused_copy)


def test_mismatched_codebook_size_is_reported_before_loading(amused_copy):
    config_path = amused_copy / "vqvae" / "config.json"
    config = json.loads(config_path.read_text())
    config["num_vq_embeddings"] = 2 * CODEBOOK
    config_path.write_text(json.dumps(config))
    message = f"codebook sizes disagree: vqvae/config.json has num_vq_embeddings={2 * CODEBOOK}, .*codebook_size=32"
    with pytest.raises(ModelLoadError, match=message):
        AmusedGenerator.from_folder(amused_copy)


def test_mask_id_inside_the_codebook_is_rejected(amused_copy):
    path = amused_copy / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "mask_token_id": 3}))
    with pytest.raises(ModelLoadError, match="mask_token_id 3 must lie outside the codebook"):
        AmusedGenerator.from_folder(amused_copy)


def test_text_encoder_of_another_width_is_rejected(amused_copy, tmp_path):
    from model_folders import build_clip_tokenizer, build_text_encoder

    other = tmp_path / "other_text_encoder"
    build_text_encoder(build_clip_tokenizer(), width=16).save_pretrained(str(other))
    with pytest.raises(ModelLoadError, match="encoder_hidden_size=32 but the text encoder's hidden_size is 16"):
        AmusedGenerator.from_folder(amused_copy, text_encoder=str(other))


def test_a_whole_clipmodel_folder_serves_as_the_text_encoder_with_its_own_projection(amused_copy, tmp_path):
    """README names a whole CLIPModel (laion/CLIP-ViT-H-14) for model.text_encoder: transformers built the text
    tower from `text_config` alone, whose projection_dim (the library's 512 here) is not the model's, and refused
    the checkpoint's text_projection as a size mismatch."""
    from model_folders import TEXT_WIDTH, build_clip_tokenizer, build_text_encoder
    from transformers import CLIPConfig, CLIPModel

    text = build_text_encoder(build_clip_tokenizer()).config.to_dict()
    text.pop("projection_dim")
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1}
    vision.update(image_size=32, patch_size=16)
    whole = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=TEXT_WIDTH))
    whole.save_pretrained(str(tmp_path / "clip"))
    assert json.loads((tmp_path / "clip" / "config.json").read_text())["text_config"]["projection_dim"] != TEXT_WIDTH
    model = AmusedGenerator.from_folder(amused_copy, text_encoder=str(tmp_path / "clip"))
    assert torch.equal(model.text_encoder.text_projection.weight, whole.text_projection.weight)
    assert torch.equal(
        model.text_encoder.text_model.embeddings.token_embedding.weight,
        whole.text_model.embeddings.token_embedding.weight,
    )


def test_a_text_encoder_override_that_is_not_a_folder_is_named(amused_copy, tmp_path):
    with pytest.raises(ModelLoadError, match=r"^model.text_encoder .*missing: no such folder"):
        AmusedGenerator.from_folder(amused_copy, text_encoder=str(tmp_path / "missing"))
