"""Tests for maskfocus.rewards.colors: GenEval's CLIP zero-shot colour classification of box crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from maskfocus.rewards.clip_score import ClipScorer
from maskfocus.rewards.colors import TEMPLATES, ColorClassifier, crop_box
from maskfocus.rewards.geneval import COLORS

RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255, 255, 255)}


class PaletteScorer:
    """A stand-in CLIP: an image embeds as the one-hot of its nearest RGB colour, a text as the one-hot of the
    colour word it names; so the classifier must crop the right box to find the right colour."""

    def __init__(self):
        self.text_calls: list[list[str]] = []

    def image_embeddings(self, crops):
        means = torch.stack([crop.mean(dim=(1, 2)) for crop in crops]) * 255
        palette = torch.tensor([RGB.get(c, (128, 128, 128)) for c in COLORS], dtype=torch.float32)
        return F.one_hot(torch.cdist(means, palette).argmin(-1), len(COLORS)).float()

    def text_embeddings(self, prompts):
        self.text_calls.append(list(prompts))
        words = [f" {p.replace('-colored', ' ')} " for p in prompts]
        index = [next(i for i, c in enumerate(COLORS) if f" {c} " in w) for w in words]
        return F.one_hot(torch.tensor(index), len(COLORS)).float()


def _two_colour_image() -> np.ndarray:
    image = np.zeros((20, 40, 3), dtype=np.uint8)
    image[:, :20] = RGB["red"]
    image[:, 20:] = RGB["blue"]
    return image


def test_each_box_gets_the_colour_of_its_crop():
    classifier = ColorClassifier(PaletteScorer())
    boxes = [(0, 0, 20, 20), (22.5, 3.2, 39.9, 18.0), (5, 5, 6, 6)]
    assert classifier.classify(_two_colour_image(), boxes, "car") == ["red", "blue", "red"]
    assert classifier.classify(_two_colour_image(), [], "car") == []


def test_classifier_uses_the_three_templates_and_is_cached_per_class():
    scorer = PaletteScorer()
    classifier = ColorClassifier(scorer)
    classifier.classify(_two_colour_image(), [(0, 0, 5, 5)], "stop sign")
    classifier.classify(_two_colour_image(), [(0, 0, 5, 5)], "stop sign")
    assert len(scorer.text_calls) == 1
    prompts = scorer.text_calls[0]
    assert len(prompts) == len(COLORS) * len(TEMPLATES)
    assert prompts[:2] == ["a photo of a red stop sign", "a photo of a red-colored stop sign"]
    assert prompts[2] == "a photo of a red object"


def test_classifier_is_the_normalized_mean_of_template_embeddings(tiny_clip_folder):
    scorer = ClipScorer.load(str(tiny_clip_folder))
    classifier = ColorClassifier(scorer).classifier("dog")
    green = scorer.text_embeddings([t.format(color="green", classname="dog") for t in TEMPLATES])
    torch.testing.assert_close(classifier[COLORS.index("green")], F.normalize(green.mean(0), dim=0))
    names = ColorClassifier(scorer).classify(_two_colour_image(), [(0, 0, 10, 10), (30, 2, 31, 3)], "dog")
    assert len(names) == 2 and set(names) <= set(COLORS)


@pytest.mark.parametrize("box", [(2.4, 1.6, 7.2, 5.0), (10.6, 2.4, 30.6, 15.5), (0.5, 0.5, 2.5, 1.5), (3, 4, 40, 20)])
def test_crop_box_rounds_as_genevals_pil_crop(box):
    """GenEval crops with PIL's Image.crop, which rounds each coordinate: (10.6, .., 30.6, ..) is 20 pixels wide
    (floor and ceil made it 21)."""
    from PIL import Image

    image = _two_colour_image()
    expected = torch.from_numpy(np.array(Image.fromarray(image).crop(box))).permute(2, 0, 1).float() / 255.0
    torch.testing.assert_close(crop_box(image, box), expected, rtol=0, atol=0)


@pytest.mark.parametrize(("box", "shape"), [((-5, -5, 100, 100), (3, 20, 40)), ((39.5, 19.5, 39.5, 19.5), (3, 1, 1))])
def test_crop_box_clips_to_the_image_and_keeps_a_pixel(box, shape):
    crop = crop_box(_two_colour_image(), box)
    assert tuple(crop.shape) == shape and crop.min() >= 0.0 and crop.max() <= 1.0
