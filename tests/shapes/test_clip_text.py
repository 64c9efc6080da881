"""maskfocus.shapes.clip_text: the built-in tiny CLIP's text tower, converted to transformers' format, gives the
same text embeddings as open_clip itself, and unconvertible towers are refused by name."""

from __future__ import annotations

import pytest
import torch

from maskfocus.models.loading import builtin_folder, load_tokenizer
from maskfocus.rewards.clip_score import load_open_clip
from maskfocus.shapes.clip_text import text_encoder_from_open_clip

PROMPTS = [
    "a photo of a red circle and a blue square",
    "a photo of two squares",
    "a photo of a circle left of a square",
]


@pytest.fixture(scope="module")
def loaded():
    return load_open_clip("builtin:shapes-clip")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(builtin_folder(), hint="")


def test_converted_tower_gives_open_clips_text_embeddings(loaded, tokenizer):
    clip = loaded.model.eval()
    encoder = text_encoder_from_open_clip(clip, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    ids = loaded.tokenize(PROMPTS)
    ours = tokenizer(PROMPTS, padding="max_length", max_length=ids.shape[1], return_tensors="pt").input_ids
    assert torch.equal(ours, ids)  # the generator's tokenizer is the CLIP's
    with torch.no_grad():
        expected = clip.encode_text(ids)
        converted = encoder(ids).text_embeds
    torch.testing.assert_close(converted, expected, rtol=1e-5, atol=1e-5)


def test_unsupported_pooling_is_refused(loaded):
    clip = loaded.model
    original = clip.text_pool_type
    try:
        clip.text_pool_type = "first"
        with pytest.raises(ValueError, match="eos pooling"):
            text_encoder_from_open_clip(clip, 0, 1, 3)
        # argmax pools at the highest id: the first eos only where eos is that id (here it is 3 of 30)
        clip.text_pool_type = "argmax"
        highest = clip.token_embedding.num_embeddings - 1
        with pytest.raises(ValueError, match=rf"argmax only with eos the highest id, {highest}; eos is 3"):
            text_encoder_from_open_clip(clip, 0, 1, 3)
        assert text_encoder_from_open_clip(clip, 0, 1, highest).config.eos_token_id == highest
    finally:
        clip.text_pool_type = original


def test_an_eos_id_of_2_is_refused_unless_it_is_the_highest_id(loaded):
    """transformers' CLIP with eos_token_id 2 pools at the highest token id (its legacy rule), not at eos: the
    converted tower's embeddings then differ from open_clip's by about 1 (a review's reproduction)."""
    clip = loaded.model
    with pytest.raises(ValueError, match="eos id 2 converts to transformers' CLIP only as the highest id"):
        text_encoder_from_open_clip(clip, 0, 1, 2)
