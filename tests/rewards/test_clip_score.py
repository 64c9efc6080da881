"""Tests for maskfocus.rewards.clip_score: loading open_clip from a local folder or an architecture name plus a
checkpoint file, safe checkpoint reading, preprocessing, and the cosine score."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F

from maskfocus.models.base import ModelLoadError
from maskfocus.rewards.clip_score import ClipScorer, fit_square, read_state_dict


def _reference_cosine(model, pixels_B3SS, tokens) -> torch.Tensor:
    with torch.no_grad():
        image = F.normalize(model.encode_image(pixels_B3SS), dim=-1)
        text = F.normalize(model.encode_text(tokens), dim=-1)
    return torch.diagonal(image @ text.T)


def test_folder_model_scores_cosine_of_its_own_embeddings(tiny_clip_folder):
    import open_clip

    scorer = ClipScorer.load(str(tiny_clip_folder))
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = ["a photo of a dog", "a photo of a red car", "two cats"]
    mean, std = scorer.mean.cpu(), scorer.std.cpu()
    expected = _reference_cosine(scorer.model, (images - mean) / std, open_clip.get_tokenizer("ViT-H-14")(prompts))
    torch.testing.assert_close(scorer.score(images, prompts), expected)
    assert scorer.image_size == 32 and scorer.mean.flatten().tolist() == pytest.approx([0.48, 0.46, 0.41])


def test_architecture_name_with_checkpoint_loads_those_weights(tiny_arch, hps_checkpoint):
    scorer = ClipScorer.load(tiny_arch, str(hps_checkpoint))
    saved = torch.load(hps_checkpoint, weights_only=True)["state_dict"]
    for key, value in scorer.model.state_dict().items():
        torch.testing.assert_close(value, saved[key])


def test_checkpoint_replaces_the_weights_of_a_folder_model(tiny_clip_folder, hps_checkpoint):
    plain = ClipScorer.load(str(tiny_clip_folder))
    replaced = ClipScorer.load(str(tiny_clip_folder), str(hps_checkpoint))
    images, prompts = torch.rand(2, 3, 32, 32), ["a dog", "a cat"]
    assert not torch.allclose(plain.score(images, prompts), replaced.score(images, prompts))


def test_module_prefix_and_safetensors_are_accepted(tmp_path, hps_checkpoint):
    from safetensors.torch import save_file

    state = torch.load(hps_checkpoint, weights_only=True)["state_dict"]
    path = tmp_path / "weights.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in state.items()}, str(path))
    assert set(read_state_dict(path, "checkpoint")) == set(state)


def test_checkpoint_with_pickled_objects_is_refused(tmp_path, hps_checkpoint):
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "payload": pickle.PickleError("not a tensor")}, evil)
    with pytest.raises(ModelLoadError, match=r"rewards\[0\]\.checkpoint: cannot read checkpoint .*evil\.pt"):
        read_state_dict(evil, "rewards[0].checkpoint")


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"extra.weight": torch.zeros(1)}, r"missing keys .*1 unexpected keys \['extra\.weight'\]"),
        ({"visual.proj": torch.zeros(2, 2)}, r"size mismatch for visual\.proj"),
    ],
)
def test_mismatched_checkpoint_says_what_does_not_fit(tmp_path, tiny_arch, state, message):
    path = tmp_path / "other.pt"
    torch.save(state, path)
    with pytest.raises(ModelLoadError, match=rf"ck: .*other\.pt does not fit the model architecture: .*{message}"):
        ClipScorer.load(tiny_arch, str(path), checkpoint_field="ck")


@pytest.mark.parametrize(
    ("model", "checkpoint", "message"),
    [
        ("/nowhere/clip-folder", None, r"rewards\[1\]\.model: CLIP model folder not found: /nowhere/clip-folder"),
        ("NoSuchArch-99", None, r"rewards\[1\]\.model: 'NoSuchArch-99' is neither a local folder"),
        ("ViT-H-14", None, r"rewards\[1\]\.checkpoint: the architecture 'ViT-H-14' needs a weights file"),
        ("ViT-H-14", "/nowhere/hps.pt", r"rewards\[1\]\.checkpoint: checkpoint file not found: /nowhere/hps\.pt"),
    ],
)
def test_missing_local_files_name_field_and_path(model, checkpoint, message):
    with pytest.raises(ModelLoadError, match=message):
        ClipScorer.load(model, checkpoint, field="rewards[1].model", checkpoint_field="rewards[1].checkpoint")


def test_fit_square_crops_or_pads_non_square_images():
    image = torch.zeros(3, 10, 20)
    image[:, :, 5:15] = 1.0  # a white centre band as wide as the crop
    cropped = fit_square(image, 10, "crop")
    assert cropped.shape == (3, 10, 10) and torch.allclose(cropped, torch.ones(3, 10, 10))
    padded = fit_square(torch.ones(3, 10, 20), 20, "pad")
    assert padded.shape == (3, 20, 20)
    assert padded[:, :5].abs().max() == 0 and padded[:, 15:].abs().max() == 0 and padded[:, 5:15].min() == 1
    assert fit_square(torch.rand(3, 1, 1), 32).shape == (3, 32, 32)
