"""`maskfocus pretrain`'s measurement of a pretrained shapes-world folder: the base model's shapes-geneval score,
the detector on ground-truth renders and their VQ round trips, the CLIP's zero-shot accuracy and the sizes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def measure(out: Path, images_per_prompt: int, num_rows: int | None = None) -> dict[str, Any]:
    """Base-model GenEval score, VQ round-trip and ground-truth detector scores, CLIP zero-shot accuracy.

    The base model is sampled as `maskfocus eval` samples it: with the sampler of configs/shapes_tiny.yaml, eagerly
    for fewer than COMPILE_PAYS_OFF_IMAGES images."""
    from maskfocus.compiled import COMPILE_PAYS_OFF_IMAGES
    from maskfocus.config import EvalConfig, GenEvalDetectorConfig, default_run_config
    from maskfocus.evaluation import run_evaluation
    from maskfocus.models.amused import AmusedGenerator
    from maskfocus.rewards.clip_score import ClipScorer
    from maskfocus.rewards.judges import build_judge
    from maskfocus.shapes.detector import score_ground_truth
    from maskfocus.shapes.evalset import load_eval_set
    from maskfocus.shapes.pretrain_clip import zero_shot_accuracy

    rows = load_eval_set()[:num_rows]
    model = AmusedGenerator.from_folder(out / "shapes-tiny")
    clip = ClipScorer.from_folder(out / "shapes-clip")

    def vq_round_trip(images: np.ndarray) -> np.ndarray:
        from maskfocus.images import to_tensor, to_uint8

        return to_uint8(model.decode(model.encode_images(to_tensor(images))))

    sampler = default_run_config().sampler
    if len(rows) * images_per_prompt < COMPILE_PAYS_OFF_IMAGES:
        sampler = sampler.model_copy(update={"compile": False})
    start = time.perf_counter()
    _, summary, _ = run_evaluation(
        model,
        rows,
        EvalConfig(num_images_per_prompt=images_per_prompt),
        sampler,
        judge=build_judge(GenEvalDetectorConfig()),  # the shapes judge `maskfocus eval` uses by default
        clip_score=clip.score,
    )
    eval_seconds = time.perf_counter() - start
    return {
        "base_model": summary,
        "base_model_eval_seconds": round(eval_seconds, 1),
        "sampler": sampler.model_dump(mode="json"),
        "ground_truth_renders": score_ground_truth(rows),
        "vq_round_trip": score_ground_truth(rows, degrade=vq_round_trip),
        "clip_zero_shot": zero_shot_accuracy(clip),
        "parameters": {
            "vqvae": _count(model.vqvae),
            "text_encoder": _count(model.text_encoder),
            "transformer": _count(model.transformer),
            "clip": _count(clip.model),
        },
        "folder_megabytes": round(sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20, 2),
    }


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def measured_evaluation(report: dict[str, Any]) -> dict[str, Any] | None:
    """The `evaluated` of the base model's measurement in a pretraining report, rebuilt from the report's settings
    where the measurement predates summaries that record it (the shipped report); None when they are missing."""
    from maskfocus.config import EvalConfig, GenEvalDetectorConfig, SamplerConfig
    from maskfocus.evaluation import evaluated_block
    from maskfocus.rewards.judges import build_judge
    from maskfocus.shapes.evalset import load_eval_set

    measurements = report.get("measurements", {})
    settings = report.get("measured_config", report.get("config", {}))
    if "sampler" not in measurements or not settings.get("eval_images_per_prompt"):
        return None
    rows = load_eval_set()[: settings.get("measure_rows")]
    eval_config = EvalConfig(num_images_per_prompt=settings["eval_images_per_prompt"])
    judge = build_judge(GenEvalDetectorConfig())
    return evaluated_block(rows, eval_config, SamplerConfig(**measurements["sampler"]), judge, "float32")
