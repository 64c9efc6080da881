"""Task rewards and their weighted sum r = sum_k w_k r_k (ALGORITHM.md section 5)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from maskfocus.config import ConfigError, GenEvalDetectorConfig, RewardSpec
from maskfocus.config_rewards import GENEVAL_MODES, geneval_term_name, repeated_metric_names
from maskfocus.images import to_tensor
from maskfocus.rewards.geneval import GenEvalResult, strict_metadata
from maskfocus.rewards.judges import Judge, build_judge


class Reward(Protocol):
    name: str

    def __call__(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> torch.Tensor:
        """One float per image, (B,)."""


class GenEvalReward:
    """GenEval correctness (binary), clause fraction (partial) or graded clause credit (graded: a missed count
    earns how close it came) from a judge (shapes detector by default).
    `strict`: judged against `strict_metadata`, so extra objects cost reward (needs a judge with known classes)."""

    def __init__(self, mode: str = "binary", judge: Judge | None = None, strict: bool = False):
        if mode not in GENEVAL_MODES:
            raise ConfigError(f"rewards: unknown GenEval mode {mode!r}; one of {', '.join(GENEVAL_MODES)}")
        self.name = geneval_term_name(mode, strict)
        self.mode = mode
        self.judge = judge if judge is not None else build_judge(GenEvalDetectorConfig())
        if mode == "graded" and self.judge.name == "http":
            raise ConfigError(
                "rewards: mode graded needs the per-clause counts of a local detector; the http "
                "reward server returns only binary and partial scores (use mode binary or partial)"
            )
        if strict and self.judge.name == "http" and mode == "partial":
            raise ConfigError(
                "rewards: strict with the http reward server works in mode binary only; its partial score is "
                "Flow-GRPO's count-distance credit, which ignores the exclude clauses strict adds"
            )
        if strict and not self.judge.known_classes:
            raise ConfigError(f"rewards: strict needs a detector with a fixed class list; {self.judge.name} has none")
        self.strict_classes = list(self.judge.known_classes) if strict else None

    @property
    def judging_key(self) -> tuple[int, bool]:
        """Terms with equal keys judge a batch identically (same judge, same rules): one judging serves them all."""
        return id(self.judge), self.strict_classes is not None

    def results(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> list[GenEvalResult]:
        if self.strict_classes is not None:
            metadata_B = [strict_metadata(metadata, self.strict_classes) for metadata in metadata_B]
        return self.judge.judge(images_BHWC, metadata_B)

    def values(self, results: Sequence[GenEvalResult]) -> torch.Tensor:
        return torch.tensor([self._value(r) for r in results], dtype=torch.float32)

    def _value(self, result: GenEvalResult) -> float:
        if math.isnan(result.score):  # the judge could not score this image: its group is skipped
            return math.nan
        if self.mode == "binary":
            return float(result.correct)
        if self.mode == "partial":
            return result.score
        if result.graded is None:
            raise ValueError(f"rewards: mode graded, but judge {self.judge.name} returned no graded credit")
        return result.graded

    def __call__(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> torch.Tensor:
        return self.values(self.results(images_BHWC, metadata_B))


class ClipReward:
    """An image-prompt score of a CLIP-like scorer: the CLIP score, or HPS v2.1 (name "hps")."""

    def __init__(self, scorer, name: str = "clip"):
        self.name = name
        self.scorer = scorer

    def __call__(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> torch.Tensor:
        return self.scorer.score(to_tensor(images_BHWC), [m["prompt"] for m in metadata_B]).float().cpu()


class WeightedReward:
    """Sum of weighted reward terms; also returns each term for metrics. GenEval terms that share a judge and its
    rules (e.g. binary and partial from one detector) judge each batch once."""

    def __init__(self, terms: Sequence[tuple[float, Reward]]):
        self.terms = list(terms)

    def __call__(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]):
        judged: dict[tuple[int, bool], list[GenEvalResult]] = {}
        parts = {}
        for _, reward in self.terms:
            if isinstance(reward, GenEvalReward):
                if reward.judging_key not in judged:
                    judged[reward.judging_key] = reward.results(images_BHWC, metadata_B)
                parts[reward.name] = reward.values(judged[reward.judging_key])
            else:
                parts[reward.name] = reward(images_BHWC, metadata_B)
        total = torch.zeros(len(metadata_B))
        for weight, reward in self.terms:
            if weight != 0:  # a weight-0 term is only logged: its NaN (unscored image) must not skip the group
                total = total + weight * parts[reward.name]
        return total, parts


def build_reward(
    spec: RewardSpec, device: str = "cpu", field: str = "rewards[]", judges: dict[str, Judge] | None = None
) -> Reward:
    """One reward term from its spec; missing local files raise ModelLoadError naming `field.<key>` and the path.
    `judges` (detector config as JSON -> judge) lets GenEval terms with the same detector share one judge."""
    if spec.name == "geneval":
        judges = {} if judges is None else judges
        key = spec.detector.model_dump_json()
        if key not in judges:
            judges[key] = build_judge(spec.detector, device, f"{field}.detector")
        return GenEvalReward(spec.mode, judges[key], spec.strict)
    if spec.name == "hps":
        from maskfocus.rewards.hps import load_hps_scorer

        assert spec.checkpoint is not None  # RewardSpec's validator guarantees it
        scorer = load_hps_scorer(spec.checkpoint, spec.model, device, f"{field}.model", f"{field}.checkpoint")
        return ClipReward(scorer, name="hps")
    from maskfocus.rewards.clip_score import ClipScorer

    scorer = ClipScorer.load(
        spec.model, spec.checkpoint, device, field=f"{field}.model", checkpoint_field=f"{field}.checkpoint"
    )
    return ClipReward(scorer, name="clip")


def build_rewards(specs: Sequence[RewardSpec], device: str = "cpu") -> WeightedReward:
    """The weighted sum of the configured terms (`rewards:` in the run YAML)."""
    if repeated := repeated_metric_names(specs):
        raise ConfigError(f"rewards: each term must have its own metric name; repeated: {', '.join(repeated)}")
    judges: dict[str, Judge] = {}
    return WeightedReward(
        [(spec.weight, build_reward(spec, device, f"rewards[{i}]", judges)) for i, spec in enumerate(specs)]
    )
