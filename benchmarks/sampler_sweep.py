"""Score a model on part of shapes-geneval under a grid of sampler settings (T, CFG scale, Gumbel temperature).

For choosing the sampler of a config: every `--every`-th prompt row, `--images` images per row, the exact shapes
detector and the GenEval rules, one line per combination of the `--grid` values (a markdown table).

Usage: python benchmarks/sampler_sweep.py --grid sampler.gumbel_temperature=2,4,8 sampler.num_steps=12,24
       [--model builtin:shapes-tiny] [--every 4] [--images 1] [--tags single_object ...]

Results: benchmarks/RESULTS.md, "Probes of 2026-11-30" (under "Base model").
"""

from __future__ import annotations

import argparse
import itertools
import sys

import yaml

from maskfocus.config import ConfigError, EvalConfig, SamplerConfig, default_run_config
from maskfocus.evaluation import chosen_rows, load_evaluated_generator, run_evaluation
from maskfocus.rewards.geneval import TAGS
from maskfocus.script_args import SAMPLING_ONLY, positive_int, run_script
from maskfocus.shapes.detector import ShapesDetector


def parse_grid(items: list[str]) -> dict[str, list]:
    """`key=v1,v2` -> {key: [v1, v2]}, each value read as YAML (numbers stay numbers)."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.startswith("sampler.") or not values.strip():
            raise ConfigError(f"--grid {item!r}: expected sampler.FIELD=V1,V2,...")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one: {key}=V1,V2,...")
        try:
            grid[key] = [yaml.safe_load(value) for value in values.split(",")]
        except yaml.YAMLError:
            raise ConfigError(f"--grid {item!r}: a value is not valid YAML") from None
    return grid


def grid_samplers(grid: dict[str, list]) -> list[tuple[tuple, SamplerConfig]]:
    """Every combination of the grid's values with its validated sampler, all checked before any is scored (a bad
    value last in the grid failed after the others had run); errors name the `--grid` key."""
    options = {key: f"--grid {key}" for key in grid}
    combinations = []
    for values in itertools.product(*grid.values()):
        overrides = {**SAMPLING_ONLY, **dict(zip(grid, values, strict=True))}
        combinations.append((values, default_run_config(overrides, options).sampler))
    return combinations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--grid", nargs="+", action="extend", required=True, help="sampler.FIELD=V1,V2,... (one per field; repeatable)"
    )
    parser.add_argument("--model", default=None, help="model folder (default: the config's, builtin:shapes-tiny)")
    parser.add_argument("--every", type=positive_int, default=4, help="use every n-th row of shapes-geneval")
    parser.add_argument("--images", type=positive_int, default=1, help="images per row")
    parser.add_argument("--tags", nargs="+", choices=TAGS, default=list(TAGS), help="only the rows of these tags")
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    combinations = grid_samplers(grid)
    rows = chosen_rows(args.tags, args.every)
    model = load_evaluated_generator(default_run_config({"model.path": args.model} if args.model else None))
    detector = ShapesDetector()
    print("| " + " | ".join(grid) + " | " + " | ".join(args.tags) + " | overall | seconds |")
    print("|---" * (len(grid) + len(args.tags) + 2) + "|")
    for values, sampler in combinations:
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
    if any(sampler.compile for _, sampler in combinations):
        print(COMPILE_NOTE)
    return 0


COMPILE_NOTE = (
    "\nseconds: the first row's include torch.compile's one-off compile of the sampler (sampler.compile: true), "
    "not its pace; give --grid sampler.compile=false to time every row eagerly"
)


if __name__ == "__main__":
    sys.exit(run_script(main))
