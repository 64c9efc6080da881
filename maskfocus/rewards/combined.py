"""Task rewards and their weighted sum r = sum_k w_k r_k (ALGORITHM.md section 5)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from maskfocus.config import RewardSpec
from maskfocus.images import to_tensor
from maskfocus.rewards.geneval import evaluate


class Reward(Protocol):
    name: str

    def __call__(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> torch.Tensor:
        """One float per image, (B,)."""


class GenEvalReward:
    """GenEval correctness (binary) or clause fraction (partial) with the exact shapes-world detector."""

    def __init__(self, mode: str = "binary"):
        from maskfocus.shapes.detector import ShapesDetector

        self.name = f"geneval_{mode}"
        self.mode = mode
        self.detector = ShapesDetector()

    def __call__(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> torch.Tensor:
        results = [evaluate(d, m) for d, m in zip(self.detector.detect_batch(images_BHWC), metadata_B, strict=True)]
        values = [float(r.correct) if self.mode == "binary" else r.score for r in results]
        return torch.tensor(values, dtype=torch.float32)


class ClipReward:
    """CLIP score cosine(image, prompt)."""

    def __init__(self, model: str, device: str = "cpu"):
        from maskfocus.rewards.clip_score import ClipScorer

        self.name = "clip"
        self.scorer = ClipScorer.from_folder(model, device=device)

    def __call__(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> torch.Tensor:
        return self.scorer.score(to_tensor(images_BHWC), [m["prompt"] for m in metadata_B]).float().cpu()


class WeightedReward:
    """Sum of weighted reward terms; also returns each term for metrics."""

    def __init__(self, terms: Sequence[tuple[float, Reward]]):
        self.terms = list(terms)

    def __call__(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]):
        parts = {reward.name: reward(images_BHWC, metadata_B) for _, reward in self.terms}
        total = sum(weight * parts[reward.name] for weight, reward in self.terms)
        return total, parts


def build_rewards(specs: Sequence[RewardSpec], device: str = "cpu") -> WeightedReward:
    terms: list[tuple[float, Reward]] = []
    for spec in specs:
        reward = GenEvalReward(spec.mode) if spec.name == "geneval" else ClipReward(spec.model, device)
        terms.append((spec.weight, reward))
    return WeightedReward(terms)
