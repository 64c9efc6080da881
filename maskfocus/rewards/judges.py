"""GenEval judges: from generated images and their prompt metadata to GenEval results (ALGORITHM.md section 5).

Three judges share one interface, so the reward and `maskfocus eval` do not care which one runs:
- the shapes-world detector (exact; colours from its palette), feeding `geneval.evaluate`;
- OWLv2 (transformers, open vocabulary) with GenEval's CLIP colour classification, feeding `geneval.evaluate`;
- a Flow-GRPO-compatible reward server running the original Mask2Former evaluator (`geneval_client`).

Why OWLv2 rather than Grounding DINO for the in-process detector: OWLv2 scores every (box, class) pair with an
independent sigmoid, so all 80 GenEval classes are queried at once from text embeddings computed a single time,
and each box gets the class of its best query.
Grounding DINO reads the classes as one caption of at most 256 tokens, which the 80 COCO names nearly fill, and
ties scores to caption tokens through a phrase-matching post-process with its own box and text thresholds; its
deformable attention is also slower on CPU and harder to build as a tiny test model. Grounding DINO has the
higher zero-shot COCO AP, so OWLv2 detections should be checked (thresholds, NMS) against the reference
evaluator, which the `http` judge runs, before comparing scores with published GenEval numbers. For the same
reason an owlv2 detector must set its thresholds: GenEval's 0.3 / 0.9 are tuned for Mask2Former's scores, and
OWLv2's sigmoid scores run much lower, so the config must set them (`GenEvalDetectorConfig`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from maskfocus.config import GenEvalDetectorConfig
from maskfocus.models.base import ModelLoadError
from maskfocus.rewards.colors import ColorClassifier
from maskfocus.rewards.geneval import (
    Detection,
    GenEvalResult,
    Thresholds,
    check_one_record_per_image,
    evaluate,
    filter_detections,
)

OBJECT_NAMES = Path(__file__).resolve().parent / "data" / "object_names.txt"
"""GenEval's 80 COCO class names (a copy of the benchmark's object_names.txt)."""

DetectBatch = Callable[[np.ndarray], list[dict[str, list[Detection]]]]


class Judge(Protocol):
    name: str
    known_classes: Sequence[str] | None
    """Classes it can find (None: any); `maskfocus eval` checks prompt sets against it."""
    known_colors: Sequence[str] | None
    """Colours it can tell apart (None: GenEval's); checked the same way."""

    def judge(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> list[GenEvalResult]:
        """One GenEval result per uint8 image and its metadata record."""


def load_object_names(path: str | Path | None = None, field: str = "object_names") -> list[str]:
    """Class names, one per line (blank lines skipped); default: GenEval's object_names.txt."""
    path = Path(path).expanduser() if path is not None else OBJECT_NAMES
    if not path.is_file():
        raise ModelLoadError(f"{field}: class name file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ModelLoadError(f"{field}: {path} is not UTF-8 text ({error.reason}); save it as UTF-8") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ModelLoadError(f"{field}: {path} lists no class names")
    if repeated := sorted({name for name in names if names.count(name) > 1}):
        raise ModelLoadError(f"{field}: {path} lists {', '.join(repeated)} more than once (one class name per line)")
    return names


class DetectorJudge:
    """Detect, classify colours where a clause asks for one (if a colour classifier is given), evaluate."""

    def __init__(
        self,
        name: str,
        detect_batch: DetectBatch,
        thresholds: Thresholds | None = None,
        colors: ColorClassifier | None = None,
        known_classes: Sequence[str] | None = None,
        known_colors: Sequence[str] | None = None,
    ):
        self.name = name
        self.detect_batch = detect_batch
        self.thresholds = thresholds or Thresholds()
        self.colors = colors
        self.known_classes = known_classes
        self.known_colors = known_colors

    def judge(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> list[GenEvalResult]:
        check_one_record_per_image(len(images_BHWC), metadata_B)
        detections_B = self.detect_batch(images_BHWC)
        results = []
        for image, detections, metadata in zip(images_BHWC, detections_B, metadata_B, strict=True):
            if self.colors is not None:
                detections = self.add_colors(image, detections, metadata)
            results.append(evaluate(detections, metadata, self.thresholds))
        return results

    def add_colors(
        self, image_HW3: np.ndarray, detections: Mapping[str, Sequence[Detection]], metadata: dict[str, Any]
    ) -> dict[str, list[Detection]]:
        """Colour the detections a colour clause will look at: per class, the first `count` that survive the
        tag's threshold (as GenEval, which classifies only those). Dropping the ones below the threshold
        leaves `evaluate` unchanged, since it filters them out itself."""
        needed: dict[str, int] = {}
        for clause in metadata["include"]:
            if "color" in clause:
                needed[clause["class"]] = max(needed.get(clause["class"], 0), clause["count"])
        coloured = dict(detections)
        for classname, count in needed.items():
            kept = filter_detections({classname: detections.get(classname, [])}, metadata["tag"], self.thresholds)
            found = kept[classname]
            names = self.colors.classify(image_HW3, [d.box for d in found[:count]], classname)
            coloured[classname] = [Detection(d.box, d.score, c) for d, c in zip(found, names, strict=False)]
            coloured[classname] += found[len(names) :]
        return coloured


def thresholds_of(config: GenEvalDetectorConfig) -> Thresholds:
    return Thresholds(score=config.score_threshold, counting_score=config.counting_score_threshold)


def detector_vocabulary(
    config: GenEvalDetectorConfig, field: str = "detector"
) -> tuple[Sequence[str], Sequence[str] | None]:
    """The classes and colours (None: GenEval's) the detector `config` names can tell, without loading a model:
    what `build_judge`'s judge will report as known_classes and known_colors."""
    if config.kind == "shapes":
        from maskfocus.shapes.world import COLORS, SHAPES

        return SHAPES, tuple(COLORS)
    if config.kind == "owlv2":
        return load_object_names(config.object_names, f"{field}.object_names"), None
    return load_object_names(), None


def build_judge(config: GenEvalDetectorConfig, device: str = "cpu", field: str = "detector") -> Judge:
    """The judge a detector config names; local model files are checked here (errors name the field and path)."""
    if config.kind == "shapes":
        from maskfocus.shapes.detector import ShapesDetector

        classes, colors = detector_vocabulary(config)
        detect = ShapesDetector().detect_batch
        return DetectorJudge("shapes", detect, thresholds_of(config), known_classes=classes, known_colors=colors)
    if config.kind == "owlv2":
        return _build_owlv2_judge(config, device, field)
    from maskfocus.rewards.geneval_client import GenEvalClient

    return GenEvalClient(
        config.url,
        timeout_s=config.timeout_s,
        num_retries=config.num_retries,
        retry_backoff_s=config.retry_backoff_s,
        batch_size=config.batch_size,
        known_classes=detector_vocabulary(config)[0],
    )


def _build_owlv2_judge(config: GenEvalDetectorConfig, device: str, field: str) -> DetectorJudge:
    from maskfocus.rewards.clip_score import ClipScorer
    from maskfocus.rewards.owlv2 import Owlv2Detector

    assert config.path is not None and config.clip_model is not None  # the config validator guarantees it
    names = list(detector_vocabulary(config, field)[0])
    thresholds = thresholds_of(config)
    detector = Owlv2Detector.from_folder(
        config.path,
        names,
        field=f"{field}.path",
        device=device,
        nms_iou=config.nms_iou,
        min_score=min(thresholds.score, thresholds.counting_score),
        batch_size=config.batch_size,
    )
    scorer = ClipScorer.load(
        config.clip_model,
        config.clip_checkpoint,
        device=device,
        fit="crop",
        field=f"{field}.clip_model",
        checkpoint_field=f"{field}.clip_checkpoint",
    )
    return DetectorJudge("owlv2", detector.detect_batch, thresholds, ColorClassifier(scorer), names)
