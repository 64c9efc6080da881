"""The VQ image tokenizer loaded alone (the reward role's model): the same images and embeddings as the generator's,
without reading the transformer's weights or running a Meissonic folder's code."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from maskfocus.config import ModelConfig
from maskfocus.models import load_generator
from maskfocus.models.base import ModelLoadError
from maskfocus.models.image_codec import VQImageCodec, load_image_codec, native_resolution

AMUSED_DEFAULT_SAMPLE_SIZE = 64
"""diffusers UVit2DModel's `sample_size` default, used where a config.json states none."""


def _configs(amused_folder, meissonic_folder) -> dict[str, ModelConfig]:
    return {
        "built-in": ModelConfig(),
        "amused": ModelConfig(path=str(amused_folder)),
        "meissonic": ModelConfig(
            path=str(meissonic_folder), kind="meissonic", trust_checkpoint_code=True, resolution=32
        ),
    }


@pytest.mark.parametrize("name", ["built-in", "amused", "meissonic"])
def test_the_codec_alone_decodes_and_embeds_as_the_generator_does(name, amused_folder, meissonic_folder):
    config = _configs(amused_folder, meissonic_folder)[name]
    codec, generator = load_image_codec(config), load_generator(config)
    assert isinstance(codec, VQImageCodec)
    assert (codec.grid_size, codec.image_size) == (generator.grid_size, generator.image_size)
    tokens_BL = torch.randint(0, generator.codebook_size, (3, generator.grid_size[0] * generator.grid_size[1]))
    images_B3HW = codec.decode(tokens_BL)
    assert images_B3HW.shape == (3, 3, codec.image_size, codec.image_size)
    assert torch.equal(images_B3HW, generator.decode(tokens_BL))
    assert torch.equal(codec.codebook_vectors(tokens_BL), generator.codebook_vectors(tokens_BL))
    assert torch.equal(codec.encode_images(images_B3HW), generator.encode_images(images_B3HW))


def test_the_codec_reads_no_transformer_weights(amused_copy):
    for weights in (amused_copy / "transformer").glob("*.safetensors"):
        weights.unlink()
    config = ModelConfig(path=str(amused_copy))
    with pytest.raises(ModelLoadError, match="transformer"):
        load_generator(config)
    assert load_image_codec(config).grid_size == (8, 8)


def test_the_codec_of_an_untrusted_meissonic_folder_runs_none_of_its_code(meissonic_copy):
    codec = load_image_codec(ModelConfig(path=str(meissonic_copy), kind="meissonic", resolution=32))
    assert codec.grid_size == (16, 16)  # the tiny Meissonic's VQ downscales by 2
    assert not (meissonic_copy / "transformer" / "IMPORTED").exists()  # written when transformer.py is imported


def test_the_codec_checks_the_folder_as_the_generator_does(amused_folder, tmp_path):
    with pytest.raises(ModelLoadError, match="model folder not found"):
        load_image_codec(ModelConfig(path=str(tmp_path / "nowhere")))
    with pytest.raises(ModelLoadError, match="set model.kind: amused"):
        load_image_codec(ModelConfig(path=str(amused_folder), kind="meissonic", trust_checkpoint_code=True))
    with pytest.raises(ModelLoadError, match=r"resolution 17 is not a multiple of the VQ's downscale 2: use 16 or 18"):
        load_image_codec(ModelConfig(path=str(amused_folder), resolution=17))


def test_native_resolution_of_an_amused_config_without_sample_size_is_the_class_default():
    vq = SimpleNamespace(block_out_channels=(16, 32))  # downscale 2
    assert native_resolution("amused", SimpleNamespace(), vq) == AMUSED_DEFAULT_SAMPLE_SIZE * 2
    assert native_resolution("amused", SimpleNamespace(sample_size=8), vq) == 16


def test_tokens_of_another_grid_are_refused_by_name():
    """A codec at another resolution than the generator that sampled the tokens failed inside the VQ decoder."""
    codec = load_image_codec(ModelConfig())
    side = codec.grid_size[0]
    with pytest.raises(ValueError, match=rf"{(side + 1) ** 2} tokens per image, but this VQ decodes a {side}x{side}"):
        codec.decode(torch.zeros(1, (side + 1) ** 2, dtype=torch.long))
