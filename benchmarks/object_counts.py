"""How many objects does a model draw? Mean shapes-detector components per image, per shapes-geneval tag.

A diagnostic for reward hacking: GenEval's single-object and colour rules ask for *at least* one matching
object, so a policy can raise its score by scattering more objects. Samples every `--every`-th row of
shapes-geneval (standard sampler, config's settings) with each model folder given and prints, per tag,
the mean number of detected components and the share of images with more objects than the prompt names.

Usage: python benchmarks/object_counts.py builtin:shapes-tiny runs/NAME/model [--every 4] [--images 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from maskfocus.cli import DEFAULT_CONFIG
from maskfocus.config import load_config
from maskfocus.evaluation import expand_jobs, generate_batches, load_rows
from maskfocus.models import load_generator
from maskfocus.shapes.detector import ShapesDetector


def named_objects(row: dict) -> int:
    """Objects the prompt asks for (GenEval metadata: `include` clauses with counts)."""
    return sum(clause.get("count", 1) for clause in row["include"])


def count_objects(model_path: str, rows: list[dict], images_per_row: int) -> dict[str, tuple[float, float]]:
    """Per tag: (mean components per image, fraction of images with more components than named)."""
    config = load_config(DEFAULT_CONFIG, {"model.path": model_path})
    model = load_generator(config.model)
    detector = ShapesDetector()
    counts: dict[str, list[int]] = defaultdict(list)
    extra: dict[str, list[bool]] = defaultdict(list)
    jobs = expand_jobs(rows, images_per_row)
    for chunk, images in generate_batches(model, jobs, config.sampler, config.eval.seed):
        for job, image in zip(chunk, images, strict=True):
            row = rows[job.row_index]
            found = len(detector.fit(image))
            counts[row["tag"]].append(found)
            extra[row["tag"]].append(found > named_objects(row))
    return {tag: (statistics.mean(counts[tag]), statistics.mean(extra[tag])) for tag in counts}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders (or builtin:shapes-tiny)")
    parser.add_argument("--every", type=int, default=4, help="use every n-th row of shapes-geneval")
    parser.add_argument("--images", type=int, default=2, help="images per row")
    args = parser.parse_args()
    rows = load_rows("shapes-geneval")[:: args.every]
    results = {model: count_objects(model, rows, args.images) for model in args.models}
    tags = list(next(iter(results.values())))
    print("| model | " + " | ".join(tags) + " |")
    print("|---|" + "---|" * len(tags))
    for model, by_tag in results.items():
        cells = [f"{by_tag[tag][0]:.2f} ({by_tag[tag][1]:.0%} extra)" for tag in tags]
        print(f"| {Path(model).name if ':' not in model else model} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
