"""Score a model on part of shapes-geneval under a grid of sampler settings (T, CFG scale, Gumbel temperature).

For choosing the sampler of a config: every `--every`-th prompt row, `--images` images per row, the exact shapes
detector and the GenEval rules, one line per combination of the `--grid` values (a markdown table).

Usage: python benchmarks/sampler_sweep.py --grid sampler.gumbel_temperature=2,4,8 sampler.num_steps=12,24
       [--model builtin:shapes-tiny] [--every 4] [--images 1] [--tags single_object ...]
"""

from __future__ import annotations

import argparse
import itertools
import sys

import yaml

from maskfocus.config import EvalConfig, default_run_config
from maskfocus.evaluation import load_rows, run_evaluation
from maskfocus.models import load_generator
from maskfocus.rewards.geneval import TAGS
from maskfocus.shapes.detector import ShapesDetector


def parse_grid(items: list[str]) -> dict[str, list]:
    """`key=v1,v2` -> {key: [v1, v2]}, each value read as YAML (numbers stay numbers)."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.startswith("sampler."):
            raise SystemExit(f"--grid {item!r}: expected sampler.FIELD=V1,V2,...")
        grid[key] = [yaml.safe_load(value) for value in values.split(",")]
    return grid


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", nargs="+", required=True, help="sampler.FIELD=V1,V2,... (one per field)")
    parser.add_argument("--model", default=None, help="model folder (default: the config's, builtin:shapes-tiny)")
    parser.add_argument("--every", type=int, default=4, help="use every n-th row of shapes-geneval")
    parser.add_argument("--images", type=int, default=1, help="images per row")
    parser.add_argument("--tags", nargs="+", choices=TAGS, default=list(TAGS), help="only the rows of these tags")
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    base = default_run_config({"model.path": args.model} if args.model else None)
    model = load_generator(base.model)
    rows = [row for row in load_rows("shapes-geneval") if row["tag"] in args.tags][:: args.every]
    detector = ShapesDetector()
    print("| " + " | ".join(grid) + " | " + " | ".join(args.tags) + " | overall | seconds |")
    print("|---" * (len(grid) + len(args.tags) + 2) + "|")
    for values in itertools.product(*grid.values()):
        overrides = dict(zip(grid, values, strict=True))
        sampler = default_run_config(overrides).sampler
        _, summary, _ = run_evaluation(
            model,
            rows,
            EvalConfig(num_images_per_prompt=args.images),
            sampler,
            detector.detect_batch,
            show_progress=False,
        )
        cells = [str(v) for v in values] + [f"{summary['tags'][tag]:.3f}" for tag in args.tags]
        print("| " + " | ".join(cells) + f" | {summary['overall']:.3f} | {summary['seconds']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
