"""Tests for maskfocus.rewards.hps: HPS v2.1 = an open_clip architecture + the HPS checkpoint, scored as the
reference does (diagonal of image_features @ text_features.T on unit-norm features, padded square input)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskfocus.rewards.hps import HPS_ARCHITECTURE, load_hps_scorer


def test_hps_architecture_is_vit_h_14():
    import open_clip

    assert HPS_ARCHITECTURE == "ViT-H-14" and HPS_ARCHITECTURE in open_clip.list_models()


def test_hps_score_matches_the_reference_formula(tiny_arch, hps_checkpoint):
    import open_clip

    scorer = load_hps_scorer(str(hps_checkpoint), model=tiny_arch)
    reference = open_clip.create_model(tiny_arch, pretrained=None)
    reference.load_state_dict(torch.load(hps_checkpoint, weights_only=True)["state_dict"])
    reference.eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    prompts = ["a photo of a giraffe", "a stop sign"]
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    pixels = F.interpolate(images, size=32, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    with torch.no_grad():
        image_features, text_features, _ = reference((pixels - mean) / std, open_clip.get_tokenizer(tiny_arch)(prompts))
    expected = torch.diagonal(image_features @ text_features.T)
    torch.testing.assert_close(scorer.score(images, prompts), expected, atol=1e-5, rtol=1e-4)


def test_hps_pads_non_square_images_instead_of_cropping(tiny_arch, hps_checkpoint):
    scorer = load_hps_scorer(str(hps_checkpoint), model=tiny_arch)
    assert scorer.fit == "pad"
    wide = torch.rand(1, 3, 16, 32)
    padded = torch.zeros(1, 3, 32, 32)
    padded[:, :, 8:24] = wide
    torch.testing.assert_close(scorer.score(wide, ["a dog"]), scorer.score(padded, ["a dog"]))
