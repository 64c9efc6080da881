"""Tests for maskfocus.rewards.clip_score: loading open_clip from a local folder or an architecture name plus a
checkpoint file, safe checkpoint reading, preprocessing, and the cosine score."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

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
    with pytest.raises(ValueError, match="3 images but 1 prompts: one prompt per image"):  # it broadcast
        scorer.score(images, prompts[:1])


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


def test_a_missing_folder_and_a_missing_checkpoint_are_both_named():
    """Each problem of one CLIP is named, not only the first: a missing folder no longer hides a missing checkpoint."""
    with pytest.raises(ModelLoadError) as raised:
        ClipScorer.load("/nowhere/clip", "/nowhere/hps.pt", field="m", checkpoint_field="ck")
    assert str(raised.value) == (
        "m: CLIP model folder not found: /nowhere/clip; ck: checkpoint file not found: /nowhere/hps.pt"
    )


def test_fit_square_crops_or_pads_non_square_images():
    image = torch.zeros(3, 10, 20)
    image[:, :, 5:15] = 1.0  # a white centre band as wide as the crop
    cropped = fit_square(image, 10, "crop")
    assert cropped.shape == (3, 10, 10) and torch.allclose(cropped, torch.ones(3, 10, 10))
    padded = fit_square(torch.ones(3, 10, 20), 20, "pad")
    assert padded.shape == (3, 20, 20)
    assert padded[:, :5].abs().max() == 0 and padded[:, 15:].abs().max() == 0 and padded[:, 5:15].min() == 1
    assert fit_square(torch.rand(3, 1, 1), 32).shape == (3, 32, 32)


@pytest.fixture
def no_open_clip_building(monkeypatch):
    """Building a model or a tokenizer is where open_clip would reach for the Hub: a refusal must come first."""
    import open_clip

    def refuse(*args, **kwargs):
        raise AssertionError("open_clip was asked to build a model or tokenizer")

    monkeypatch.setattr(open_clip, "create_model", refuse)
    monkeypatch.setattr(open_clip, "get_tokenizer", refuse)


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("xlm-roberta-base-ViT-B-32", "hf_model_name", "xlm-roberta-base"),
        ("nllb-clip-base", "hf_model_name", "facebook/nllb-200-distilled-600M"),
        ("ViT-B-16-SigLIP", "hf_tokenizer_name", "timm/ViT-B-16-SigLIP"),
        ("ViT-H-14-CLIPA", "hf_tokenizer_name", "bert-base-uncased"),
    ],
)
def test_architectures_with_hub_text_parts_are_refused(hps_checkpoint, no_open_clip_building, name, key, value):
    import open_clip

    assert open_clip.get_model_config(name)["text_cfg"][key] == value  # what open_clip would download
    expected = (
        rf"rewards\[0\]\.model: the open_clip architecture '{name}' takes .* Hugging Face Hub \(.*{key}='{value}'"
    )
    with pytest.raises(ModelLoadError, match=expected):
        ClipScorer.load(name, str(hps_checkpoint), field="rewards[0].model")


def test_a_hub_architecture_without_weights_is_told_only_to_use_a_folder():
    """Its error advises a local folder; asking for a weights file as well would contradict it."""
    from maskfocus.rewards.clip_score import open_clip_problems

    problems = open_clip_problems("ViT-B-16-SigLIP", None, "m", "ck")
    assert len(problems) == 1 and problems[0].startswith("m: the open_clip architecture 'ViT-B-16-SigLIP' takes")
    assert open_clip_problems("ViT-H-14", None, "m", "ck") == [
        "ck: the architecture 'ViT-H-14' needs a weights file on local disk"
    ]


def test_architectures_whose_weights_need_another_normalization_are_refused(hps_checkpoint, no_open_clip_building):
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model("MobileCLIP-S1")
    assert tags and all(open_clip.get_pretrained_cfg("MobileCLIP-S1", t)["mean"] == (0.0, 0.0, 0.0) for t in tags)
    expected = r"model: the released weights of .* 'MobileCLIP-S1' use image mean \[0\.0, 0\.0, 0\.0\] and std \[1"
    with pytest.raises(ModelLoadError, match=expected):
        ClipScorer.load("MobileCLIP-S1", str(hps_checkpoint))


def _hf_text_folder(root: Path, text_model: str, vision_cfg: dict) -> Path:
    """An open_clip local-dir folder whose text tower is a transformers model named by `text_model`."""
    folder = root / "hf-text-clip"
    folder.mkdir()
    text_cfg = {"hf_model_name": text_model, "hf_tokenizer_name": text_model, "context_length": 8}
    text_cfg |= {"hf_pooler_type": "mean_pooler", "hf_proj_type": "linear"}
    model_cfg = {"embed_dim": 16, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}))
    return folder


def _vision_cfg(clip_folder: Path) -> dict:
    return json.loads((clip_folder / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]


def test_a_folder_naming_a_hub_text_model_is_refused(tmp_path, tiny_clip_folder, no_open_clip_building):
    folder = _hf_text_folder(tmp_path, "xlm-roberta-base", _vision_cfg(tiny_clip_folder))
    expected = (
        rf"clip_model: {re.escape(str(folder))}/open_clip_config\.json names the text model 'xlm-roberta-base' "
        r"\(model_cfg\.text_cfg\.hf_model_name\), which open_clip would download"
    )
    with pytest.raises(ModelLoadError, match=expected):
        ClipScorer.load(str(folder), field="clip_model")


def test_a_folder_with_a_local_hf_text_model_loads_and_scores(tmp_path, tiny_clip_folder):
    from open_clip import CustomTextCLIP
    from safetensors.torch import save_file
    from transformers import RobertaConfig, RobertaModel

    from maskfocus.models.tokenizer import build_word_tokenizer

    tokenizer = build_word_tokenizer(["a", "photo", "of", "dog", "cat"], max_length=8)
    text_dir = tmp_path / "tiny-roberta"
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    config.intermediate_size, config.max_position_embeddings = 32, 16
    RobertaModel(config, add_pooling_layer=False).save_pretrained(str(text_dir))
    folder = _hf_text_folder(tmp_path, str(text_dir), _vision_cfg(tiny_clip_folder))
    tokenizer.save_pretrained(str(folder / "tokenizer"))
    model_cfg = json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]
    torch.manual_seed(0)
    model = CustomTextCLIP(**model_cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))

    scorer = ClipScorer.load(str(folder))
    images, prompts = (
        torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        ["a dog", "a photo of a cat"],
    )
    tokens = tokenizer(prompts, padding="max_length", max_length=8, return_tensors="pt").input_ids
    expected = _reference_cosine(model.eval(), (images - scorer.mean.cpu()) / scorer.std.cpu(), tokens)
    torch.testing.assert_close(scorer.score(images, prompts), expected)


def test_a_folder_without_the_tokenizer_files_its_config_asks_for_is_a_load_error(tmp_path, tiny_clip_folder):
    """open_clip reads an hf_tokenizer_name model's tokenizer from the folder itself, never from the Hub."""
    import shutil

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_clip_folder, folder)
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"]["hf_tokenizer_name"] = "bert-base-uncased"
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=rf"rewards\[0\]\.model: cannot load CLIP from {re.escape(str(folder))}: "):
        ClipScorer.load(str(folder), field="rewards[0].model")


def test_an_unknown_built_in_clip_is_named_with_the_known_ones():
    """`builtin:shapes-clipp` was taken for a missing packaged folder."""
    from maskfocus.rewards.clip_score import open_clip_problems

    assert open_clip_problems("builtin:shapes-clipp", None, "rewards[0].model") == [
        "rewards[0].model: builtin:shapes-clipp: no such built-in model; the built-in ones are builtin:shapes-tiny, "
        "builtin:shapes-clip"
    ]
    assert open_clip_problems("builtin:shapes-clip", None) == []


def test_a_damaged_open_clip_config_is_named_by_the_preflight_and_the_load(tmp_path, tiny_clip_folder):
    """A malformed open_clip_config.json passed `train --check` and ended in a bare JSONDecodeError."""
    import shutil

    from maskfocus.rewards.clip_score import open_clip_problems

    folder = tmp_path / "clip"
    shutil.copytree(tiny_clip_folder, folder)
    (folder / "open_clip_config.json").write_text('{"model_cfg": ')
    [problem] = open_clip_problems(str(folder), None, "rewards.1.model")
    assert problem.startswith(f"rewards.1.model: {folder / 'open_clip_config.json'} is not readable JSON: ")
    with pytest.raises(ModelLoadError, match=r"rewards\.1\.model: .* is not readable JSON"):
        ClipScorer.load(str(folder), field="rewards.1.model")
    (folder / "open_clip_config.json").write_text("[]")
    assert "has no `model_cfg` object" in open_clip_problems(str(folder), None)[0]
    assert open_clip_problems(str(tiny_clip_folder), None) == []


def test_loading_leaves_the_root_loggers_level_as_it_was(tiny_clip_folder):
    """open_clip's INFO lines are quieted while it loads; the root logger was left at WARNING for the process."""
    import logging

    root = logging.getLogger()
    before = root.level
    try:
        root.setLevel(logging.INFO)
        ClipScorer.load(str(tiny_clip_folder))
        assert root.level == logging.INFO
    finally:
        root.setLevel(before)


def test_the_built_in_clip_reads_prompts_as_lower_case_words():
    """Its word-level tokenizer read "A Red Circle." as four <unk> tokens: the reward scored images against them."""
    from maskfocus.models.loading import resolve_model_path

    scorer = ClipScorer.load(str(resolve_model_path("builtin:shapes-clip")))
    written = scorer.text_embeddings(["A Red Circle.", "two blue squares, below a circle"])
    assert torch.equal(written, scorer.text_embeddings(["a red circle", "two blue squares below a circle"]))
