"""The aMUSEd-format adapter on the shipped tiny model, and its errors on broken folders."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch

from maskfocus.models.amused import AmusedGenerator, builtin_folder
from maskfocus.models.base import ModelLoadError
from maskfocus.models.tokenizer import UnknownWordError
from maskfocus.shapes.tiny_model import CODEBOOK_SIZE


def test_shipped_model_loads_with_expected_geometry(tiny_model):
    assert tiny_model.grid_size == (16, 16)
    assert tiny_model.image_size == 64
    assert tiny_model.mask_token_id == tiny_model.codebook_size == CODEBOOK_SIZE


def test_logits_decode_and_encode_shapes(tiny_model):
    condition = tiny_model.encode_prompts(["a photo of a red circle", ""])
    tokens = torch.full((2, 256), tiny_model.mask_token_id)
    with torch.no_grad():
        logits = tiny_model.logits(tokens, condition)
    assert logits.shape == (2, 256, CODEBOOK_SIZE) and torch.isfinite(logits).all()
    images = tiny_model.decode(logits.argmax(-1))
    assert images.shape == (2, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    assert tiny_model.encode_images(images).shape == (2, 256)
    assert tiny_model.codebook_vectors(logits.argmax(-1)).shape[:2] == (2, 256)


def test_case_and_punctuation_do_not_change_what_the_model_reads(tiny_model):
    """ "A Red Circle." was four <unk> tokens (pooled-embedding cosine 0.46 to "a red circle")."""
    written = tiny_model.encode_prompts(["A Red Circle.", "a red circle, a blue square"])
    plain = tiny_model.encode_prompts(["a red circle", "a red circle a blue square"])
    assert torch.equal(written.hidden_BSD, plain.hidden_BSD) and torch.equal(written.pooled_BD, plain.pooled_BD)


def test_vq_round_trip_is_close_on_a_render(tiny_model):
    import numpy as np

    from maskfocus.images import to_tensor
    from maskfocus.shapes.render import render
    from maskfocus.shapes.scene import random_scene

    image = to_tensor(render(random_scene(np.random.default_rng(3)))[None])
    restored = tiny_model.decode(tiny_model.encode_images(image))
    assert (restored - image).abs().mean() < 0.03


def test_diffusers_amused_pipeline_loads_the_folder_and_generates():
    from diffusers import AmusedPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline = AmusedPipeline.from_pretrained(str(builtin_folder()), local_files_only=True)
        pipeline.set_progress_bar_config(disable=True)
        output = pipeline(
            "a photo of a red circle",
            num_inference_steps=4,
            output_type="np",
            generator=torch.Generator().manual_seed(0),
        )
    assert output.images.shape == (1, 64, 64, 3)


def test_unknown_word_lists_known_words(tiny_model):
    with pytest.raises(UnknownWordError, match="Known words: .*circle"):
        tiny_model.check_prompts(["a photo of a giraffe"])


def _copy_model(tmp_path):
    target = tmp_path / "model"
    shutil.copytree(builtin_folder(), target)
    return target


def test_missing_part_is_named(tmp_path):
    folder = _copy_model(tmp_path)
    shutil.rmtree(folder / "transformer")
    with pytest.raises(ModelLoadError, match="missing part.*transformer"):
        AmusedGenerator.from_folder(folder)


def test_corrupt_weight_file_is_reported_with_its_part(tmp_path):
    folder = _copy_model(tmp_path)
    weights = next((folder / "vqvae").glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="cannot load vqvae"):
        AmusedGenerator.from_folder(folder)


def test_missing_builtin_weights_tell_how_to_rebuild(monkeypatch, tmp_path):
    import maskfocus.models.loading as loading

    monkeypatch.setattr(loading, "builtin_folder", lambda name="shapes-tiny": tmp_path / "absent")
    with pytest.raises(ModelLoadError, match="maskfocus pretrain"):
        AmusedGenerator.from_folder("builtin:shapes-tiny")


def test_mismatched_codebook_size_fails_clearly(tmp_path):
    folder = _copy_model(tmp_path)
    config_path = folder / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["codebook_size"] = 64
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="codebook"):
        AmusedGenerator.from_folder(folder)


def test_vq_pixel_range_comes_from_the_folder_marker(tmp_path):
    from maskfocus.models.loading import VQ_RANGE_FILE, vq_pixel_range

    assert vq_pixel_range(builtin_folder()) == (-1.0, 1.0)  # the shipped tiny VQ was trained on [-1, 1]
    assert vq_pixel_range(tmp_path) == (0.0, 1.0)  # aMUSEd / Meissonic convention without the marker
    (tmp_path / VQ_RANGE_FILE).write_text('{"pixel_range": [1, 0]}')
    with pytest.raises(ModelLoadError, match="low < high"):
        vq_pixel_range(tmp_path)
    (tmp_path / VQ_RANGE_FILE).write_text('{"range": [0, 1]}')
    with pytest.raises(ModelLoadError, match="pixel_range"):
        vq_pixel_range(tmp_path)


def test_shipped_vq_gives_every_patch_its_own_code(tiny_model):
    """The tokenizer is exact: code k is patch k of the pretraining patch table, whatever the neighbours."""
    import numpy as np

    from maskfocus.images import to_tensor
    from maskfocus.shapes.patches import patch_ids, patch_table
    from maskfocus.shapes.pretrain_vq import VQPretrainConfig
    from maskfocus.shapes.render import render_batch
    from maskfocus.shapes.scene import random_scene

    config = VQPretrainConfig()
    table = patch_table(config.table_scenes, seed=0)
    renders = render_batch([random_scene(np.random.default_rng(11)) for _ in range(32)])
    codes = tiny_model.encode_images(to_tensor(renders)).view(32, 16, 16)
    assert np.array_equal(codes.numpy(), patch_ids(renders, table))


def test_logits_with_other_than_the_codebooks_number_of_channels_are_refused():
    """A reshape to (B, -1, V) split 64 x 64 x 8256 channels by 8192 without a word."""
    from types import SimpleNamespace

    import torch

    from maskfocus.models.vq_text import VQTextGenerator

    model = SimpleNamespace(codebook_size=8)
    logits = torch.arange(2 * 8 * 3 * 4, dtype=torch.float32).view(2, 8, 3, 4)
    tokens = VQTextGenerator._to_logits(model, logits)
    assert tokens.shape == (2, 12, 8) and torch.equal(tokens[1, 5], logits[1, :, 1, 1])  # row-major positions
    with pytest.raises(ValueError, match="gave 9 logits per token for a codebook of 8"):
        VQTextGenerator._to_logits(model, torch.zeros(1, 9, 4, 4))
