"""GenEval-style evaluation: generate images for a prompt set, detect objects, score with the GenEval rules.

Images are a pure function of (eval seed, batch index) and the prompt order, so two runs of the same
model and config give the same score.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from tqdm import tqdm

from maskfocus.config import ConfigError, EvalConfig, GenEvalDetectorConfig, RunConfig, SamplerConfig
from maskfocus.config_rewards import DETECTOR_OPTION_KINDS, DETECTOR_OPTIONS
from maskfocus.evaluation_output import RecordWriter
from maskfocus.images import to_uint8
from maskfocus.models.base import MaskedGenerator
from maskfocus.models.vq_text import module_dtype
from maskfocus.rewards.geneval import load_metadata, summarize
from maskfocus.rewards.judges import DetectBatch, DetectorJudge, Judge, build_judge
from maskfocus.sampling import check_negative_prompt, sample_with_config, seeded_generator

Detect = DetectBatch
ClipScore = Callable[[torch.Tensor, list[str]], torch.Tensor]


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


def first_of_each_tag(rows: Sequence[dict[str, Any]], per_tag: int) -> list[int]:
    """Indices of the first `per_tag` rows of each tag, in file order (the first rows of shapes-geneval are all
    single_object, so taking the first rows of the file scores one tag)."""
    taken: dict[str, int] = {}
    chosen = []
    for index, row in enumerate(rows):
        tag = row.get("tag", "")
        if taken.get(tag, 0) < per_tag:
            taken[tag] = taken.get(tag, 0) + 1
            chosen.append(index)
    return chosen


def spread_over_each_tag(rows: Sequence[dict[str, Any]], per_tag: int) -> list[int]:
    """Indices of `per_tag` rows of each tag, evenly spaced through its rows (all of them where it has fewer), in file
    order: a quick estimate over every tag. The first rows of a tag are a skewed slice (shapes-geneval lists each
    tag's prompts in prompt-space order: its first 8 position rows have no "above" or "below")."""
    by_tag: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        by_tag.setdefault(row.get("tag", ""), []).append(index)
    chosen = []
    for indices in by_tag.values():
        taken = min(per_tag, len(indices))
        chosen += [indices[i * len(indices) // taken] for i in range(taken)]
    return sorted(chosen)


def grid_rows(rows: Sequence[dict[str, Any]], per_tag: int = 2) -> list[int]:
    """The rows an evaluation's picture shows: the first `per_tag` of each tag, in the order the tags come."""
    return first_of_each_tag(rows, per_tag)


def chosen_rows(tags: list[str], every: int, benchmark: str = "shapes-geneval") -> list[dict[str, Any]]:
    """Every `every`-th row (option --every) of the benchmark's rows of `tags`, in file order; a tag left without
    rows is an error (its column of a per-tag table would be empty)."""
    rows = [row for row in load_rows(benchmark) if row["tag"] in tags][::every]
    empty = [tag for tag in tags if not any(row["tag"] == tag for row in rows)]
    if empty:
        raise ConfigError(f"--every {every} leaves no rows of {', '.join(empty)}; give a smaller --every")
    return rows


def check_classes(
    rows: Sequence[dict[str, Any]],
    known: Sequence[str],
    detector_name: str,
    known_colors: Sequence[str] | None = None,
    kind_setting: str = "--detector",
) -> None:
    """Fail early when the prompt set names classes (or colours) the detector cannot see: their rows would score 0
    without a word. `kind_setting` names where the user picks the detector kind."""
    names = {clause["class"] for row in rows for clause in row.get("include", []) + row.get("exclude", [])}
    unknown = sorted(names - set(known))
    if unknown:
        hint = f" (real-image classes need `{kind_setting} owlv2` or `{kind_setting} http`)"
        hint = hint if detector_name == "shapes" else ""
        raise BenchmarkError(
            f"the {detector_name} detector cannot detect {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}; it knows: {', '.join(known)}{hint}"
        )
    colors = {clause["color"] for row in rows for clause in row.get("include", []) if clause.get("color")}
    if known_colors is not None and (unknown := sorted(colors - set(known_colors))):
        raise BenchmarkError(
            f"the {detector_name} detector cannot tell the colour(s) {', '.join(unknown)}; it knows: "
            f"{', '.join(known_colors)}"
        )


def eval_detector_config(
    config: RunConfig, overrides: dict[str, Any] | None = None
) -> tuple[GenEvalDetectorConfig, str]:
    """The detector of the run's first `geneval` reward term (the shapes detector when there is none), with
    `overrides` (e.g. {"kind": "owlv2", "path": ...} from the command line) applied; also its config field name."""
    for index, spec in enumerate(config.rewards):
        if spec.name == "geneval":
            detector, field = spec.detector, f"rewards[{index}].detector"
            break
    else:
        detector, field = GenEvalDetectorConfig(), "detector"
    if not overrides:
        return detector, field
    kind = overrides.get("kind", detector.kind)
    unused = [key for key in overrides if kind not in DETECTOR_OPTION_KINDS.get(key, (kind,))]
    if unused:  # given, it would be ignored without a word
        uses = "; ".join(
            f"{DETECTOR_OPTIONS[key]} is for --detector {' or '.join(DETECTOR_OPTION_KINDS[key])}" for key in unused
        )
        raise ConfigError(f"{uses}, not the {kind} detector this evaluation uses")
    try:
        # The config's own settings, unless the command line switches the detector kind: settings chosen for another
        # kind (or GenEval's defaults, written out in a run's config.yaml) must not pass as chosen for owlv2.
        base = detector.model_dump(exclude_unset=True) if kind == detector.kind else {}
        resolved = GenEvalDetectorConfig.model_validate({**base, **overrides})
    except ValidationError as error:
        messages = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or field}: {e['msg'].removeprefix('Value error, ')}" for e in error.errors()
        )
        fields = {str(e["loc"][-1]) for e in error.errors() if e["loc"]}
        named = [key for key in DETECTOR_OPTIONS if key in fields or f"`{key}`" in messages]
        options = ", ".join(f"{DETECTOR_OPTIONS[key]} sets {key}" for key in named or DETECTOR_OPTIONS)
        raise ConfigError(
            f"evaluation detector ({field} with the command line's options): {messages} ({options})"
        ) from None
    return resolved, field


def build_eval_judge(config: RunConfig, overrides: dict[str, Any] | None = None) -> Judge:
    """The GenEval judge of `maskfocus eval`: shapes, OWLv2 + CLIP colours, or the HTTP reward server."""
    detector, field = eval_detector_config(config, overrides)
    return build_judge(detector, device=config.model.device, field=field)


def check_server_answers(judge: Judge) -> None:
    """An http judge's reward server accepts connections: checked before the model loads and samples."""
    if judge.name != "http":
        return
    from maskfocus.rewards.geneval_client import server_problem

    if (problem := server_problem(judge.url, "the GenEval server (--server-url, or the detector's url)")) is not None:
        raise ConfigError(problem)


def build_eval_clip_score(config: RunConfig, judge_name: str) -> ClipScore | None:
    """The CLIP score of the table: the run's `clip` reward model if it has one, else the built-in shapes CLIP
    for the shapes world, else none (the shapes CLIP means nothing on real images)."""
    from maskfocus.rewards.clip_score import TINY_CLIP, ClipScorer

    device = config.model.device
    for index, spec in enumerate(config.rewards):
        if spec.name == "clip":
            field = f"rewards[{index}]"
            return ClipScorer.load(
                spec.model, spec.checkpoint, device, field=f"{field}.model", checkpoint_field=f"{field}.checkpoint"
            ).score
    if judge_name != "shapes":
        return None
    field = "the evaluation's CLIP score; --no-clip skips it"
    return ClipScorer.from_folder(TINY_CLIP, device=device, field=field).score


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


def load_evaluated_generator(config: RunConfig):
    """The generator as `maskfocus eval` samples it: in eval.dtype (float32 as shipped), not the rollouts'
    model.dtype, so that a diagnostic looks at the images the evaluation scores."""
    from maskfocus.models import load_generator

    return load_generator(config.model, dtype=config.eval.weights_dtype(config.model))


def detect_tag_rows(config: RunConfig, tag: str, images_per_row: int, seed: int) -> tuple[list, list[dict[str, Any]]]:
    """Sample the shapes-geneval rows of one tag with `config`'s model and sampler, and run the shapes detector on
    each image; (detections per image, the row it answers). For diagnostics that look past the pass/fail verdict:
    the images are the evaluation's (its dtype, sampler and seed)."""
    from maskfocus.shapes.detector import ShapesDetector

    rows = [row for row in load_rows("shapes-geneval") if row["tag"] == tag]
    detector = ShapesDetector()
    detections, image_rows = [], []
    jobs = expand_jobs(rows, images_per_row)
    for chunk, images in generate_batches(load_evaluated_generator(config), jobs, config.sampler, seed):
        detections += detector.detect_batch(images)
        image_rows += [rows[job.row_index] for job in chunk]
    return detections, image_rows


def score_images(
    rows: Sequence[dict[str, Any]], jobs: Sequence[EvalJob], images: np.ndarray, judge: Judge
) -> list[dict[str, Any]]:
    """One record per image: tag, prompt, correct, score, reasons, metadata. An image the judge could not score (the
    reward server's NaN) has correct and score None: the summary leaves it out rather than counting it wrong."""
    records = []
    results = judge.judge(images, [rows[job.row_index] for job in jobs])
    for job, result in zip(jobs, results, strict=True):
        row = rows[job.row_index]
        scored = not math.isnan(result.score)
        records.append(
            {
                "row": job.row_index,
                "image": job.image_index,
                "tag": row["tag"],
                "prompt": row["prompt"],
                "correct": result.correct if scored else None,
                "score": result.score if scored else None,
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
    detect_batch: Detect | None = None,
    clip_score: ClipScore | None = None,
    keep_rows: Sequence[int] = (),
    show_progress: bool = True,
    judge: Judge | None = None,
    records_out: Path | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any], np.ndarray | None]:
    """Generate, judge and score every image; returns records, the summary and the images of the rows `keep_rows`
    (in row order, each row's images together; None without any).

    Images are judged by `judge`, or by the GenEval rules on the detections of `detect_batch` (give one).
    `records_out` gets each batch's records as it is judged (in `<records_out>.partial` until all are), so a failure
    late in a long evaluation (the reward server gone) keeps what was judged.
    """
    assert (detect_batch is None) != (judge is None), "give run_evaluation either detect_batch or judge"
    judge = judge if judge is not None else DetectorJudge("detector", detect_batch)
    model.check_prompts(sorted({row["prompt"] for row in rows}))
    check_negative_prompt(model, sampler)
    jobs = expand_jobs(rows, eval_config.num_images_per_prompt)
    records: list[dict[str, Any]] = []
    clip_values: list[float] = []
    kept: dict[tuple[int, int], np.ndarray] = {}
    wanted = set(keep_rows)
    start = time.perf_counter()
    with (
        tqdm(total=len(jobs), desc="eval", unit="img", disable=not show_progress) as bar,
        RecordWriter(records_out) as writer,
    ):
        for chunk, images in generate_batches(model, jobs, sampler, eval_config.seed):
            records.extend(writer.write(score_images(rows, chunk, images, judge)))
            if clip_score is not None:
                pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
                clip_values.extend(clip_score(pixels, [job.prompt for job in chunk]).tolist())
            for job, image in zip(chunk, images, strict=True):
                if job.row_index in wanted:
                    kept[job.row_index, job.image_index] = image
            bar.update(len(chunk))
        check_some_scored(records, judge.name, writer.partial)  # inside: a failure leaves an earlier file as it was
    summary = summarize((record["tag"], record["correct"]) for record in records)
    summary["clip_score"] = float(np.mean(clip_values)) if clip_values else None
    summary["seconds"] = round(time.perf_counter() - start, 1)
    dtype = str(module_dtype(model.trainable_module())).removeprefix("torch.")
    summary["evaluated"] = evaluated_block(rows, eval_config, sampler, judge, dtype)
    kept_images = np.stack([kept[key] for key in sorted(kept)]) if kept else None
    return records, summary, kept_images


def check_some_scored(records: Sequence[dict[str, Any]], judge_name: str, kept_in: Path | None) -> None:
    """Raise BenchmarkError when the judge scored none of the images (all NaN): no score to read."""
    if records and all(record["correct"] is None for record in records):
        kept_note = f"; the records are in {kept_in}" if kept_in is not None else ""
        raise BenchmarkError(
            f"the {judge_name} judge could not score any of the {len(records)} images (all NaN){kept_note}: check "
            "the judge (a reward server's log) before reading a score"
        )


def evaluated_block(
    rows: Sequence[dict[str, Any]], eval_config: EvalConfig, sampler: SamplerConfig, judge: Judge, dtype: str
) -> dict[str, Any]:
    """What a summary's `evaluated` records, for `maskfocus compare` to check runs and base against: the prompt rows
    (their number and a fingerprint), images per prompt, seed, judge and its thresholds, sampler and weights dtype."""
    thresholds = getattr(judge, "thresholds", None)  # the http judge's live on its server
    return {
        "prompts": len(rows),
        "rows": rows_fingerprint(rows),
        "images_per_prompt": eval_config.num_images_per_prompt,
        "seed": eval_config.seed,
        "judge": judge.name,
        "thresholds": dataclasses.asdict(thresholds) if thresholds is not None else None,
        "sampler": sampler.model_dump(mode="json", exclude={"compile"}),  # compiled or not: the same images
        "dtype": dtype,
    }


def rows_fingerprint(rows: Sequence[dict[str, Any]]) -> str:
    """16 hex digits of a hash of the prompt rows, in order: equal for one prompt set (a benchmark, a --limit or
    --per-tag of it, a metadata file), different for another of the same size."""
    return hashlib.sha256(json.dumps(list(rows), sort_keys=True).encode()).hexdigest()[:16]
