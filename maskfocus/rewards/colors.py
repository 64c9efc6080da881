"""GenEval's colour classification: CLIP zero-shot over the ten colour names on each detected object's crop.

As the reference evaluator (`evaluate_images.py`, `color_classification`): the image is cropped to the box (a
detector with masks would first paste the object on a #999 grey background; OWLv2 gives boxes only), then CLIP
(ViT-L-14, OpenAI weights, in the reference) picks among COLORS with a classifier per object class built from
three prompt templates, each colour's embedding being the normalized mean of its unit-norm template embeddings.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from maskfocus.rewards.clip_score import ClipScorer
from maskfocus.rewards.geneval import COLORS

TEMPLATES = (
    "a photo of a {color} {classname}",
    "a photo of a {color}-colored {classname}",
    "a photo of a {color} object",
)
"""GenEval's colour prompts."""


def crop_box(image_HW3: np.ndarray, box: Sequence[float]) -> torch.Tensor:
    """The pixels of a uint8 (H, W, 3) image inside box (x0, y0, x1, y1), as float (3, h, w) in [0, 1].

    The box is rounded to whole pixels as GenEval's PIL `Image.crop` rounds it, and clipped to the image (PIL pads
    with black instead; a judge's boxes lie inside the image); it keeps at least one pixel.
    """
    height, width, _ = image_HW3.shape
    x0 = min(max(round(box[0]), 0), width - 1)
    y0 = min(max(round(box[1]), 0), height - 1)
    x1 = max(min(round(box[2]), width), x0 + 1)
    y1 = max(min(round(box[3]), height), y0 + 1)
    crop = np.ascontiguousarray(image_HW3[y0:y1, x0:x1])
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0


class ColorClassifier:
    """Zero-shot colour of object crops with one CLIP model; class-specific text classifiers are cached."""

    def __init__(self, scorer: ClipScorer, colors: Sequence[str] = COLORS):
        self.scorer = scorer
        self.colors = tuple(colors)
        self._classifiers: dict[str, torch.Tensor] = {}

    def classifier(self, classname: str) -> torch.Tensor:
        """Colour embeddings for one object class, (num_colors, D), unit norm."""
        if classname not in self._classifiers:
            prompts = [t.format(color=c, classname=classname) for c in self.colors for t in TEMPLATES]
            text = self.scorer.text_embeddings(prompts).view(len(self.colors), len(TEMPLATES), -1)
            self._classifiers[classname] = F.normalize(text.mean(1), dim=-1)
        return self._classifiers[classname]

    def classify(self, image_HW3: np.ndarray, boxes: Sequence[Sequence[float]], classname: str) -> list[str]:
        """The colour name of each box's crop of a uint8 (H, W, 3) image."""
        if not boxes:
            return []
        crops = [crop_box(image_HW3, box) for box in boxes]
        logits = self.scorer.image_embeddings(crops) @ self.classifier(classname).T
        return [self.colors[index] for index in logits.argmax(-1).tolist()]
