"""Ray executor against the in-process trainer at equal work: time per iteration and its breakdown.

Runs the same config for the same iterations three ways: `--executor local`, `--executor ray` with
`ray.max_staleness: 0` (strictly on-policy: rollout, reward and learning take turns) and with
`ray.max_staleness: 1` (the next rollout is sampled while the learner updates). No final evaluation, no
preview grids. Prints and writes (runs folder / ray_overhead.md) the median seconds per iteration after
warm-up, the ratio Ray / local, and the median of each part (rollout, reward, queue wait, learner, weight
sync), so that overlap shows as an iteration shorter than the sum of its parts. With `--repeats N` the modes
run in N interleaved rounds (local, ray, ..., local, ray, ...); the table then shows the median over rounds and a
second table each round's time per iteration and its ratio to that round's local run, because two runs of the same
setting on a 2-core machine differ by up to ~10%.

Usage: python benchmarks/ray_overhead.py [--iterations 24] [--warmup 4] [--num-cpus 2] [--runs-dir runs/overhead]
                                        [--ray-set ray.torch_threads=2]   # config for the Ray runs only
                                        [--repeats 3] [--modes local ray-stale0 ray-stale1]
(`--modes` also takes the tables' labels, "ray, max_staleness 0", as earlier commands in RESULTS.md give them.)

Results: benchmarks/RESULTS.md, "Ray executor (issue: distributed system)".
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from maskfocus.config import load_config
from maskfocus.config_base import ConfigError
from maskfocus.config_yaml import parse_set
from maskfocus.outputs import check_output_folder
from maskfocus.script_args import positive_int, run_script

ROOT = Path(__file__).resolve().parents[1]
PARTS = (
    "perf/rollout_seconds",
    "perf/reward_seconds",
    "perf/queue_wait_seconds",
    "perf/learner_seconds",
    "perf/weight_sync_seconds",
)
MODES: dict[str, list[str]] = {
    "local": ["--executor", "local"],
    "ray-stale0": ["--executor", "ray", "--set", "ray.max_staleness=0"],
    "ray-stale1": ["--executor", "ray", "--set", "ray.max_staleness=1"],
}
LABELS = {"local": "local", "ray-stale0": "ray, max_staleness 0", "ray-stale1": "ray, max_staleness 1"}


def mode_name(text: str) -> str:
    """A --modes value: a key of MODES, or its table label (as the commands recorded in RESULTS.md give it)."""
    by_label = {label: name for name, label in LABELS.items()}
    return by_label.get(text, text)


def run_name(name: str, args: argparse.Namespace, round_index: int) -> str:
    return name + (f"_r{round_index}" if args.repeats > 1 else "")


def run_mode(name: str, args: argparse.Namespace, round_index: int = 0) -> tuple[Path, float]:
    """One training run of `args.iterations`; returns its folder and wall seconds (Ray start included)."""
    folder_name = run_name(name, args, round_index)
    command = [sys.executable, "-m", "maskfocus.cli", "train", "--config", str(args.config), *MODES[name]]
    command += ["--name", folder_name, "--iterations", str(args.iterations)]
    settings = {
        "train.out_dir": str(args.runs_dir.resolve()),
        "train.final_eval": "false",
        "train.image_every": "100000",
        "train.checkpoint_every": "100000",
        "ray.num_cpus": str(args.num_cpus),
        "ray.object_store_memory": str(512 * 1024**2),
    }
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    if name != "local":
        for item in args.ray_set:
            command += ["--set", item]
    print(" ".join(command), flush=True)
    start = time.perf_counter()
    status = subprocess.run(command, cwd=ROOT).returncode
    if status != 0:  # its own message is above; no traceback of this script under it
        raise ConfigError(f"the {LABELS[name]} run {args.runs_dir / folder_name} failed (exit {status}); see above")
    return args.runs_dir / folder_name, time.perf_counter() - start


def medians(run_dir: Path, warmup: int) -> dict[str, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    records = [r for r in records if r.get("iteration", 0) >= warmup]
    for record in records:  # the in-process trainer logs the sampling time under the rollout's own key
        record.setdefault("perf/rollout_seconds", record.get("rollout/seconds", 0.0))
    keys = ("perf/iteration_seconds", *PARTS)
    return {key: statistics.median(r.get(key, 0.0) for r in records) for key in keys}


def table(results: dict[str, dict[str, float]], walls: dict[str, float]) -> str:
    local = results["local"]["perf/iteration_seconds"]
    lines = [
        "| executor | s/iteration | x local | rollout | reward | queue wait | learner | weight sync | sum | wall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, values in results.items():
        parts = [values[key] for key in PARTS]
        cells = [f"{values['perf/iteration_seconds']:.2f}", f"{values['perf/iteration_seconds'] / local:.2f}"]
        cells += [f"{part:.2f}" for part in parts] + [f"{sum(parts):.2f}", f"{walls[name]:.0f} s"]
        lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rounds_table(rounds: list[dict[str, dict[str, float]]]) -> str:
    """Each round's s/iteration per mode, and its ratio to the same round's local run."""
    names = list(rounds[0])
    lines = ["| round | " + " | ".join(LABELS[name] for name in names) + " |", "|---" * (len(names) + 1) + "|"]
    for index, result in enumerate(rounds):
        local = result["local"]["perf/iteration_seconds"]
        cells = [
            f"{result[name]['perf/iteration_seconds']:.2f} ({result[name]['perf/iteration_seconds'] / local:.2f}x)"
            for name in names
        ]
        lines.append(f"| {index} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", type=Path, default=ROOT / "configs" / "shapes_tiny.yaml", help="run YAML (default %(default)s)"
    )
    parser.add_argument("--iterations", type=positive_int, default=24)
    parser.add_argument("--warmup", type=int, default=4, help="first iterations left out of the medians")
    parser.add_argument("--num-cpus", type=positive_int, default=2, help="CPUs of the local Ray")
    parser.add_argument(
        "--runs-dir", type=Path, default=ROOT / "runs" / "overhead", help="where the runs go (default %(default)s)"
    )
    parser.add_argument(
        "--modes", nargs="+", type=mode_name, default=list(MODES), choices=list(MODES), help="local is required"
    )
    parser.add_argument("--repeats", type=positive_int, default=1, help="interleaved rounds of all modes")
    parser.add_argument("--ray-set", action="append", default=[], metavar="KEY=VALUE", help="config for Ray runs")
    args = parser.parse_args(argv)
    if "local" not in args.modes:
        parser.error("--modes must include local (the reference)")
    if not 0 <= args.warmup < args.iterations:
        parser.error(f"--warmup must be >= 0 and < --iterations ({args.iterations}), got {args.warmup}")
    return args


def check_configs(args: argparse.Namespace) -> None:
    """The config and --ray-set load and the runs folder can be made, before the first run rather than in its
    traceback after minutes of the runs before it."""
    check_output_folder("--runs-dir", args.runs_dir)
    taken = [
        str(args.runs_dir / run_name(name, args, index))
        for index in range(args.repeats)
        for name in args.modes
        if (args.runs_dir / run_name(name, args, index)).exists()
    ]
    if taken:  # `maskfocus train` would refuse each, after the runs before it
        raise ConfigError(f"--runs-dir {args.runs_dir}: {', '.join(taken)} already exist(s); give another --runs-dir")
    load_config(args.config)
    ray_settings = parse_set(args.ray_set, option="--ray-set")
    load_config(args.config, ray_settings, {key: f"--ray-set {key}" for key in ray_settings})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_configs(args)
    rounds: list[dict[str, dict[str, float]]] = []
    walls: dict[str, list[float]] = {name: [] for name in args.modes}
    for round_index in range(args.repeats):
        rounds.append({})
        for name in args.modes:
            run_dir, wall = run_mode(name, args, round_index)
            walls[name].append(wall)
            rounds[-1][name] = medians(run_dir, args.warmup)
    results = {
        name: {key: statistics.median(r[name][key] for r in rounds) for key in rounds[0][name]} for name in args.modes
    }
    text = table(results, {name: statistics.median(values) for name, values in walls.items()})
    if args.repeats > 1:
        text += "\n" + rounds_table(rounds)
    (args.runs_dir / "ray_overhead.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
