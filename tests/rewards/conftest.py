"""Tiny random reward models written by the tests in the real folder formats: an open_clip `local-dir` CLIP
(open_clip's own BPE tokenizer, as in a ViT-H-14 / ViT-L-14 folder), the same architecture registered under a
name with a bare checkpoint file (the HPS layout), and an OWLv2 transformers folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

TINY_CLIP_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_ARCH = "MaskfocusTest-Tiny-CLIP"
"""open_clip architecture name the tests register for TINY_CLIP_CFG."""


@pytest.fixture(scope="session")
def owlv2_thresholds() -> dict[str, float]:
    """The detector fields a `kind: owlv2` config must set (the real configs' uncalibrated starting points)."""
    return {"score_threshold": 0.1, "counting_score_threshold": 0.3, "nms_iou": 0.5}


def build_tiny_clip(seed: int = 0):
    from open_clip import CLIP

    torch.manual_seed(seed)
    return CLIP(**json.loads(json.dumps(TINY_CLIP_CFG))).eval()


@pytest.fixture(scope="session")
def tiny_clip_folder(tmp_path_factory) -> Path:
    """open_clip local-dir layout: open_clip_config.json + open_clip_model.safetensors."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": {"mean": [0.48, 0.46, 0.41], "std": [0.27, 0.26, 0.28]}}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    state = {k: v.contiguous() for k, v in build_tiny_clip().state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


@pytest.fixture(scope="session")
def tiny_arch(tmp_path_factory) -> str:
    """Registers TINY_CLIP_CFG as an open_clip architecture name (like ViT-H-14) and returns the name."""
    import open_clip

    path = tmp_path_factory.mktemp("arch") / f"{TINY_ARCH}.json"
    path.write_text(json.dumps(TINY_CLIP_CFG))
    open_clip.add_model_config(path)
    return TINY_ARCH


@pytest.fixture(scope="session")
def hps_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint in the HPS v2 release format: torch.save({"state_dict": ...}), other weights than seed 0."""
    path = tmp_path_factory.mktemp("hps") / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": build_tiny_clip(seed=1).state_dict()}, path)
    return path


@pytest.fixture(scope="session")
def object_names() -> list[str]:
    from maskfocus.rewards.judges import load_object_names

    return load_object_names()


@pytest.fixture(scope="session")
def tiny_owlv2_folder(tmp_path_factory, object_names) -> Path:
    """A random OWLv2 (32-px images, 8-px patches) with a word-level tokenizer covering the GenEval queries."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor

    from maskfocus.models.tokenizer import build_word_tokenizer

    folder = tmp_path_factory.mktemp("tiny-owlv2")
    words = {word for name in object_names for word in name.split()} | {"a", "photo", "of"}
    tokenizer = build_word_tokenizer(words, max_length=16)
    text = {"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1}
    text |= {"num_attention_heads": 2, "max_position_embeddings": 16}
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    vision |= {"image_size": 32, "patch_size": 8}
    config = Owlv2Config(text_config=text, vision_config=vision, projection_dim=32)
    torch.manual_seed(0)
    Owlv2ForObjectDetection(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    Owlv2ImageProcessor(size={"height": 32, "width": 32}).save_pretrained(str(folder))
    return folder
