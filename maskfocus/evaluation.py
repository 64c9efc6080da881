"""GenEval-style evaluation: generate images for a prompt set, detect objects, score with the GenEval rules.

Images are a pure function of (eval seed, batch index) and the prompt order, so two runs of the same
model and config give the same score.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from maskfocus.config import EvalConfig, SamplerConfig
from maskfocus.images import to_uint8
from maskfocus.models.base import MaskedGenerator
from maskfocus.rewards.geneval import TAGS, evaluate, load_metadata, summarize
from maskfocus.sampling import sample_with_config, seeded_generator

Detect = Callable[[np.ndarray], list[dict[str, list]]]


class BenchmarkError(ValueError):
    """An unknown benchmark name or a prompt set the detector cannot score."""


def _shapes_geneval() -> list[dict[str, Any]]:
    from maskfocus.shapes.evalset import load_eval_set

    return load_eval_set()


BENCHMARKS: dict[str, Callable[[], list[dict[str, Any]]]] = {"shapes-geneval": _shapes_geneval}


def load_rows(benchmark: str | None, metadata_path: str | Path | None = None) -> list[dict[str, Any]]:
    """Prompt rows (GenEval metadata records) of a built-in benchmark, or of a GenEval JSONL file."""
    if metadata_path is not None:
        return load_metadata(metadata_path)
    if benchmark not in BENCHMARKS:
        raise BenchmarkError(
            f"unknown benchmark {benchmark!r}; built-in benchmarks: {', '.join(BENCHMARKS)} "
            f"(or pass --metadata FILE with GenEval-format JSONL)"
        )
    return BENCHMARKS[benchmark]()


def check_classes(rows: Sequence[dict[str, Any]], known: Sequence[str], detector_name: str) -> None:
    """Fail early when the prompt set names classes the detector cannot see."""
    names = {clause["class"] for row in rows for clause in row.get("include", []) + row.get("exclude", [])}
    unknown = sorted(names - set(known))
    if unknown:
        raise BenchmarkError(
            f"the {detector_name} detector cannot detect {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}; it knows: {', '.join(known)}"
        )


@dataclass(frozen=True)
class EvalJob:
    """One image to generate: its row, its index within the row, and its prompt."""

    row_index: int
    image_index: int
    prompt: str


def expand_jobs(rows: Sequence[dict[str, Any]], images_per_prompt: int) -> list[EvalJob]:
    return [EvalJob(r, k, row["prompt"]) for r, row in enumerate(rows) for k in range(images_per_prompt)]


def generate_batches(
    model: MaskedGenerator, jobs: Sequence[EvalJob], sampler: SamplerConfig, seed: int
) -> Iterator[tuple[Sequence[EvalJob], np.ndarray]]:
    """Yield (jobs, uint8 images) per batch; the standard branch only (no routing at evaluation)."""
    for batch_index, start in enumerate(range(0, len(jobs), sampler.batch_size)):
        chunk = jobs[start : start + sampler.batch_size]
        result = sample_with_config(
            model, [job.prompt for job in chunk], sampler, seeded_generator(seed, batch_index, device=model.device)
        )
        yield chunk, to_uint8(model.decode(result.tokens_BL))


def score_images(
    rows: Sequence[dict[str, Any]], jobs: Sequence[EvalJob], images: np.ndarray, detect_batch: Detect
) -> list[dict[str, Any]]:
    """One record per image: tag, prompt, correct, score, reasons, metadata."""
    records = []
    for job, detections in zip(jobs, detect_batch(images), strict=True):
        row = rows[job.row_index]
        result = evaluate(detections, row)
        records.append(
            {
                "row": job.row_index,
                "image": job.image_index,
                "tag": row["tag"],
                "prompt": row["prompt"],
                "correct": result.correct,
                "score": result.score,
                "reasons": list(result.reasons),
                "metadata": row,
            }
        )
    return records


def run_evaluation(
    model: MaskedGenerator,
    rows: Sequence[dict[str, Any]],
    eval_config: EvalConfig,
    sampler: SamplerConfig,
    detect_batch: Detect,
    clip_score: Callable[[torch.Tensor, list[str]], torch.Tensor] | None = None,
    keep_images: int = 0,
    show_progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any], np.ndarray | None]:
    """Generate, detect and score every image; returns records, the summary and the first `keep_images`."""
    model.check_prompts(sorted({row["prompt"] for row in rows}))
    jobs = expand_jobs(rows, eval_config.num_images_per_prompt)
    records: list[dict[str, Any]] = []
    clip_values: list[float] = []
    kept: list[np.ndarray] = []
    start = time.perf_counter()
    with tqdm(total=len(jobs), desc="eval", unit="img", disable=not show_progress) as bar:
        for chunk, images in generate_batches(model, jobs, sampler, eval_config.seed):
            records.extend(score_images(rows, chunk, images, detect_batch))
            if clip_score is not None:
                pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
                clip_values.extend(clip_score(pixels, [job.prompt for job in chunk]).tolist())
            if sum(len(k) for k in kept) < keep_images:
                kept.append(images)
            bar.update(len(chunk))
    summary = summarize((record["tag"], record["correct"]) for record in records)
    summary["clip_score"] = float(np.mean(clip_values)) if clip_values else None
    summary["seconds"] = round(time.perf_counter() - start, 1)
    kept_images = np.concatenate(kept)[:keep_images] if kept else None
    return records, summary, kept_images


def write_results(
    records: Sequence[dict[str, Any]], summary: dict[str, Any], out: Path | None, summary_path: Path | None
) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    if summary_path is not None:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")


def format_table(summary: dict[str, Any]) -> str:
    """Per-tag scores as a small fixed-width table."""
    lines = [f"{'tag':<14} {'score':>6}", "-" * 21]
    for tag in TAGS:
        if tag in summary["tags"]:
            lines.append(f"{tag:<14} {summary['tags'][tag]:>6.3f}")
    lines.append("-" * 21)
    lines.append(f"{'overall':<14} {summary['overall']:>6.3f}")
    if summary.get("clip_score") is not None:
        lines.append(f"{'clip_score':<14} {summary['clip_score']:>6.3f}")
    lines.append(f"{summary['num_images']} images")
    return "\n".join(lines)
