"""Shapes-world ablation of MaskFocus: critical-K vs random-K vs all-T steps, router on/off, remask modes.

Each variant runs `maskfocus train --executor local` from configs/shapes_tiny.yaml with the same number of
rollouts for several seeds, then reads each run's final evaluation and learner time per iteration, and
writes a markdown table (mean and spread over seeds) to benchmarks/results/ablation.md.

Usage: python benchmarks/ablation.py [--seeds 0 1 2] [--iterations N] [--variants critical random ...]
       python benchmarks/ablation.py --table-only    # rebuild the table from existing runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "ablation"
VARIANTS: dict[str, list[str]] = {
    "critical": [],
    "random": ["selection.strategy=random"],
    "all": ["selection.strategy=all"],
    "critical_no_router": ["router.enabled=false"],
    "critical_remask_trajectory": ["grpo.remask=trajectory"],
}


def run_variant(name: str, seed: int, iterations: int | None) -> Path:
    run_dir = RUNS / f"{name}_seed{seed}"
    if (run_dir / "eval" / "summary.json").is_file():
        return run_dir
    command = [
        sys.executable,
        "-m",
        "maskfocus.cli",
        "train",
        "--executor",
        "local",
        "--name",
        run_dir.name,
        "--set",
        f"train.out_dir={RUNS}",
        "--set",
        f"seed={seed}",
    ]
    for item in VARIANTS[name]:
        command += ["--set", item]
    if iterations is not None:
        command += ["--iterations", str(iterations)]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return run_dir


def read_run(run_dir: Path) -> dict[str, float] | None:
    summary_path = run_dir / "eval" / "summary.json"
    if not summary_path.is_file():
        return None
    summary = json.loads(summary_path.read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    learner = [r["perf/learner_seconds"] for r in records if r.get("perf/learner_seconds") is not None]
    iteration = [r["perf/iteration_seconds"] for r in records if r.get("perf/iteration_seconds") is not None]
    return {
        "overall": summary["overall"],
        **{f"tag/{k}": v for k, v in summary["tags"].items()},
        "learner_s": statistics.median(learner),
        "iteration_s": statistics.median(iteration),
    }


def _fmt(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def write_table(seeds: list[int], base_overall: float | None) -> str:
    lines = [
        "| variant | seeds | final overall | gain over base | learner s/iter | iteration s/iter |",
        "|---|---|---|---|---|---|",
    ]
    learner_by_variant = {}
    for name in VARIANTS:
        results = [r for seed in seeds if (r := read_run(RUNS / f"{name}_seed{seed}"))]
        overall = [r["overall"] for r in results]
        learner = [r["learner_s"] for r in results]
        learner_by_variant[name] = statistics.mean(learner) if learner else None
        gain = [o - base_overall for o in overall] if base_overall is not None else []
        lines.append(
            f"| {name} | {len(results)} | {_fmt(overall)} | {_fmt(gain)} | {_fmt(learner)} | "
            f"{_fmt([r['iteration_s'] for r in results])} |"
        )
    if learner_by_variant.get("all") and learner_by_variant.get("critical"):
        ratio = learner_by_variant["all"] / learner_by_variant["critical"]
        lines.append("")
        lines.append(f"Learner time all-T / critical-K: {ratio:.2f} (T/K from the config: see RESULTS.md)")
    table = "\n".join(lines) + "\n"
    out = ROOT / "benchmarks" / "results" / "ablation.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, help="override train.num_iterations for every run")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--base-overall", type=float, help="base model's overall score (model card)")
    parser.add_argument("--table-only", action="store_true")
    args = parser.parse_args()
    if not args.table_only:
        for seed in args.seeds:
            for name in args.variants:
                run_variant(name, seed, args.iterations)
    print(write_table(args.seeds, args.base_overall))
    return 0


if __name__ == "__main__":
    sys.exit(main())
