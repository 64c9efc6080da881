"""How many objects does a model draw? Mean shapes-detector components per image, per shapes-geneval tag.

A diagnostic for reward hacking: GenEval's single-object and colour rules ask for *at least* one matching
object, so a policy can raise its score by scattering more objects. Samples every `--every`-th row of
shapes-geneval (standard sampler, config's settings) with each model folder given and prints, per tag,
the mean number of detected components and the share of images with more objects than the prompt names.
It also prints the share of confident detections (score above GenEval's 0.3) smaller than any object of the
world (box side below 0.75 x the smallest size, 12 px): the detector has no lower size bound, so a single solid
4x4 token passes as a square (maskfocus/shapes/detector.py, "Known limits"), and this share shows whether a
model's score leans on such specks.

Usage: python benchmarks/object_counts.py builtin:shapes-tiny runs/NAME/model [--every 4] [--images 2]

Results: benchmarks/RESULTS.md, "RL with bfloat16 rollouts", "RL (MaskFocus) on the previous base model".
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from maskfocus.cli import DEFAULT_CONFIG
from maskfocus.config import load_config
from maskfocus.evaluation import expand_jobs, generate_batches, load_evaluated_generator, load_rows
from maskfocus.models.loading import check_generator_folder
from maskfocus.script_args import positive_int, run_script
from maskfocus.shapes.detector import ShapeFit, ShapesDetector
from maskfocus.shapes.world import SIZE_MIN

CONFIDENT = 0.3
"""GenEval's detection threshold (not counting prompts)."""
UNDERSIZED_PX = 0.75 * SIZE_MIN
"""A fitted box side below this is smaller than any object the world draws."""


def named_objects(row: dict) -> int:
    """Objects the prompt asks for (GenEval metadata: `include` clauses with counts)."""
    return sum(clause.get("count", 1) for clause in row["include"])


def undersized(fits: list[ShapeFit]) -> tuple[int, int]:
    """(confident fits, how many of them are smaller than any object of the world)."""
    confident = [fit for fit in fits if fit.score > CONFIDENT]
    return len(confident), sum(fit.box[2] - fit.box[0] < UNDERSIZED_PX for fit in confident)


def count_objects(model_path: str, rows: list[dict], images_per_row: int) -> dict[str, tuple[float, float, float]]:
    """Per tag: (mean components per image, fraction of images with more components than named, fraction of
    confident detections that are undersized)."""
    config = load_config(DEFAULT_CONFIG, {"model.path": model_path})
    model = load_evaluated_generator(config)
    detector = ShapesDetector()
    counts: dict[str, list[int]] = defaultdict(list)
    extra: dict[str, list[bool]] = defaultdict(list)
    small: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    jobs = expand_jobs(rows, images_per_row)
    for chunk, images in generate_batches(model, jobs, config.sampler, config.eval.seed):
        for job, image in zip(chunk, images, strict=True):
            row = rows[job.row_index]
            fits = detector.fit(image)
            counts[row["tag"]].append(len(fits))
            extra[row["tag"]].append(len(fits) > named_objects(row))
            confident, tiny = undersized(fits)
            small[row["tag"]][0] += confident
            small[row["tag"]][1] += tiny
    return {
        tag: (statistics.mean(counts[tag]), statistics.mean(extra[tag]), small[tag][1] / max(small[tag][0], 1))
        for tag in counts
    }


def model_label(model: str) -> str:
    """A table row's name: `builtin:...` as given, a run's `model/` folder by its run (runs/NAME/model -> NAME)."""
    if ":" in model:
        return model
    path = Path(model)
    return path.parent.name if path.name == "model" else path.name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", help="model folders (or builtin:shapes-tiny)")
    parser.add_argument("--every", type=positive_int, default=4, help="use every n-th row of shapes-geneval")
    parser.add_argument("--images", type=positive_int, default=2, help="images per row")
    args = parser.parse_args()
    for model in args.models:  # every folder before the first is sampled (minutes each)
        check_generator_folder(model, "amused")
    rows = load_rows("shapes-geneval")[:: args.every]
    results = {model: count_objects(model, rows, args.images) for model in args.models}
    tags = list(next(iter(results.values())))
    print("| model | " + " | ".join(tags) + " |")
    print("|---|" + "---|" * len(tags))
    for model, by_tag in results.items():
        cells = [f"{by_tag[tag][0]:.2f} ({by_tag[tag][1]:.0%} extra, {by_tag[tag][2]:.1%} undersized)" for tag in tags]
        print(f"| {model_label(model)} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
