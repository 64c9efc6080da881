"""Shapes-world ablation of MaskFocus: critical-K vs random-K vs all-T steps, router on/off, remask modes, and
the strict GenEval reward (rewards[0].strict: extra objects cost reward), the check on reward hacking.

Each variant runs `maskfocus train --executor local` from configs/shapes_tiny.yaml with the same number of
rollouts for several seeds, then reads each run's final evaluation and learner time per iteration, and
writes a markdown table (mean and spread over seeds) to ablation.md in the runs folder, and beside it compare.png
(every run's reward curve and each variant's final per-tag scores, as `maskfocus compare` draws them).

Usage: python benchmarks/ablation.py [--config configs/shapes_tiny.yaml] [--seeds 0 1 2] [--iterations N]
                                    [--variants critical random ...] [--parallel 2] [--runs-dir runs/ablation]
       python benchmarks/ablation.py --jobs random:2 critical_no_router:1 ...   # just these (variant, seed) runs
       python benchmarks/ablation.py --table-only    # rebuild the table from existing runs
       python benchmarks/ablation.py --variants critical random --seeds 0 --iterations 2 \
           --set eval.num_images_per_prompt=1 --runs-dir /tmp/ablation_try   # a quick try: minutes, no result
       maskfocus compare runs/ablation               # the same runs by config, per tag, with reward curves

A run whose final evaluation exists is not run again. An unfinished one (metrics but no evaluation: a stopped
ablation) stops the script with `maskfocus train`'s message: finish it with `maskfocus train --resume RUN`, or move
it aside, then run the script again.

On 2 cores, `--parallel 2` runs two trainings at once with one torch thread each (about 1.4x the throughput of
one run on two threads); seconds per iteration are then those of a half machine, the same for every variant.

Results: benchmarks/RESULTS.md, "The ablation on the shipped config, 3 seeds each", "Ablation rows with bfloat16
rollouts".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from maskfocus.cli_train import check_before_writing
from maskfocus.compare import base_summary, builtin_base_summary, group_runs, mean_spread
from maskfocus.compare_folders import find_run_folders, load_readable_runs
from maskfocus.compare_plot import plot_comparison
from maskfocus.compare_run import CompareError, RunRecord, load_run
from maskfocus.config import load_config
from maskfocus.config_base import ConfigError
from maskfocus.config_yaml import parse_set
from maskfocus.outputs import check_output_folder
from maskfocus.script_args import nonnegative_int, positive_int, probability, run_script

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = ROOT / "configs" / "shapes_tiny.yaml"
VARIANTS: dict[str, list[str]] = {
    "critical": [],
    "random": ["selection.strategy=random"],
    "all": ["selection.strategy=all"],
    "critical_no_router": ["router.enabled=false"],
    "critical_remask_trajectory": ["grpo.remask=trajectory"],
    "critical_strict_reward": ["rewards.0.strict=true"],  # not an ablation of the paper: the reward-hacking check
}


def run_variant(
    config: Path, runs: Path, name: str, seed: int, iterations: int | None, threads: int, settings: list[str] = ()
) -> Path:
    """One training run (skipped when its final evaluation exists), with `settings` (--set KEY=VALUE) for every run
    besides the variant's; its log goes to <run>.log beside it."""
    run_dir = runs / f"{name}_seed{seed}"
    if (run_dir / "eval" / "summary.json").is_file():
        return run_dir
    command = [sys.executable, "-m", "maskfocus.cli", "train", "--config", str(config), "--executor", "local"]
    command += ["--name", run_dir.name, "--set", f"train.out_dir={runs}", "--set", f"seed={seed}"]
    for item in [*settings, *VARIANTS[name]]:
        command += ["--set", item]
    if iterations is not None:
        command += ["--iterations", str(iterations)]
    print(" ".join(command), flush=True)
    runs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log_path = runs / f"{run_dir.name}.log"
    with open(log_path, "w") as log:
        finished = subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    if finished.returncode != 0:
        lines = log_path.read_text().strip().splitlines() or ["(empty)"]
        raise VariantFailed(
            f"run {run_dir.name} failed (exit {finished.returncode}); its log {log_path} ends: {lines[-1]}"
        )
    return run_dir


class VariantFailed(RuntimeError):
    """A variant's `maskfocus train` exited with an error; the message names its log and quotes its last line."""


def read_run(run_dir: Path) -> RunRecord | None:
    """A finished run (its final evaluation written), else None; a damaged one (a summary.json cut by a killed
    process, say) is left out with its reason on stderr, not the end of the table."""
    if not (run_dir / "config.yaml").is_file():
        return None
    try:
        run = load_run(run_dir)
    except CompareError as error:
        print(f"left out of the table: {error}", file=sys.stderr)
        return None
    return run if run.final else None


def steps_ratio(config: Path, settings: dict | None = None) -> float:
    """T / K of the config with the --set `settings` (T of its rollouts): the learner-time ratio all-T /
    critical-K that linear cost predicts."""
    run_config = load_config(config, settings)
    return run_config.rollout_sampler().num_steps / run_config.selection.num_steps


SCRIPT_KEYS = {"seed": "--seeds", "train.out_dir": "--runs-dir", "train.num_iterations": "--iterations"}
"""Settings the script gives each run itself, after which a --set would win: `--set seed=5` made every seed's run
seed 5, and another train.out_dir put the runs where the table never looks."""


def check_variant_configs(config: Path, names: list[str], settings: list[str] = ()) -> None:
    """Each variant's config loads and its model and reward files are there: a bad --config, a missing model folder,
    a bad --set, or a setting a variant cannot take with it, is one error before any run, not a failed run whose
    reason is only in its log. A --set of a key a variant sets is refused: the variant would not be itself."""
    common = parse_set(settings)
    for key, option in SCRIPT_KEYS.items():
        if key in common:
            raise ConfigError(f"--set {key}: the script sets it for each run; give {option}")
    check_before_writing(load_config(config, common, {key: f"--set {key}" for key in common}), None)
    for name in dict.fromkeys(names):
        taken = sorted(set(common) & set(parse_set(VARIANTS[name])))
        if taken:
            raise ConfigError(f"--set {', '.join(taken)}: the variant {name} sets it; leave it to the variant")
        try:
            load_config(config, {**common, **parse_set(VARIANTS[name])})
        except ConfigError as error:
            settings = " ".join(VARIANTS[name])
            raise ConfigError(f"variant {name} ({settings}) does not apply to --config {config}: {error}") from None


def base_overall_from_card() -> float | None:
    """The shipped model's overall shapes-geneval score, as `maskfocus pretrain` measured it."""
    return (builtin_base_summary() or {}).get("overall")


def write_table(runs: Path, seeds: list[int], base_overall: float | None, t_over_k: float) -> str:
    lines = [
        "| variant | seeds | final overall | gain over base | learner s/iter | iteration s/iter |",
        "|---|---|---|---|---|---|",
    ]
    learner_by_variant = {}
    for name in VARIANTS:
        results = [r for seed in seeds if (r := read_run(runs / f"{name}_seed{seed}"))]
        overall = [r.final["overall"] for r in results]
        learner = [r.learner_seconds for r in results if r.learner_seconds is not None]
        iteration = [r.iteration_seconds for r in results if r.iteration_seconds is not None]
        learner_by_variant[name] = statistics.mean(learner) if learner else None
        gain = [o - base_overall for o in overall] if base_overall is not None else []
        lines.append(
            f"| {name} | {len(results)} | {mean_spread(overall)} | {mean_spread(gain)} | {mean_spread(learner)} | "
            f"{mean_spread(iteration)} |"
        )
    if learner_by_variant.get("all") and learner_by_variant.get("critical"):
        ratio = learner_by_variant["all"] / learner_by_variant["critical"]
        lines.append("")
        lines.append(
            f"Learner time all-T / critical-K: {ratio:.2f}; T/K = {t_over_k:.2f}; "
            f"off by {abs(ratio / t_over_k - 1):.0%} (the target is within 25%)"
        )
    if base_overall is not None:
        lines += ["", f"Base model overall: {base_overall:.4f}; runs in {runs}."]
    table = "\n".join(lines) + "\n"
    (runs / "ablation.md").write_text(table)
    return table


def draw_comparison(runs: Path) -> Path | None:
    """compare.png beside ablation.md: every run's reward curve and each variant's final per-tag scores."""
    if not any(runs.glob("*/config.yaml")):
        return None
    try:
        records, problems = load_readable_runs(find_run_folders([runs]), "reward/mean")
    except CompareError as error:  # none readable
        print(f"no picture: {error}", file=sys.stderr)
        return None
    for problem in problems:
        print(f"left out of the picture: {problem}", file=sys.stderr)
    groups, _ = group_runs(records)
    return plot_comparison(groups, runs / "compare.png", base_summary(records, None))


def table_seeds(seeds: list[int], jobs: list[tuple[str, int]] | None) -> list[int]:
    """The seeds the table reads: --seeds and those of --jobs, so that runs just made with seeds outside --seeds
    are not left out of the table."""
    return sorted({*seeds, *(seed for _, seed in jobs or [])})


def check_runs_to_tabulate(runs: Path, seeds: list[int]) -> None:
    """`--table-only` needs runs named VARIANT_seedN for the seeds asked: a table of dashes over an empty or mistyped
    folder, or for seeds never run, is no result (and would replace a good ablation.md)."""
    if not any((runs / f"{name}_seed{seed}" / "config.yaml").is_file() for name in VARIANTS for seed in seeds):
        found = sorted(path.parent.name for path in runs.glob("*/config.yaml"))
        held = f"it holds {', '.join(found[:6])}{' ...' if len(found) > 6 else ''}" if found else "it holds no runs"
        raise ConfigError(
            f"--runs-dir {runs}: no run VARIANT_seedN for --seeds {' '.join(map(str, seeds))} ({held}); run without "
            "--table-only first, or give the seeds that were run"
        )
    named = [runs / f"{name}_seed{seed}" for name in VARIANTS for seed in seeds]
    if not any((folder / "eval" / "summary.json").is_file() for folder in named):
        raise ConfigError(
            f"--runs-dir {runs}: none of its runs VARIANT_seedN for --seeds {' '.join(map(str, seeds))} has a final "
            f"evaluation (eval/summary.json) yet, so the table would hold only dashes; `maskfocus compare {runs}` "
            "says where each run stands"
        )


def parse_job(text: str) -> tuple[str, int]:
    """`VARIANT:SEED` (e.g. `random:2`) as a (variant, seed) job; a clear error for anything else."""
    name, _, seed = text.partition(":")
    if name not in VARIANTS or not seed.isdigit():
        allowed = ", ".join(VARIANTS)
        raise argparse.ArgumentTypeError(
            f"expected VARIANT:SEED with VARIANT one of {allowed} and SEED a whole number >= 0, got {text!r}"
        )
    return name, int(seed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="the run YAML every variant starts from")
    parser.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "ablation", help="where runs and table go")
    parser.add_argument(
        "--parallel", type=positive_int, default=1, help="runs at once (torch threads split between them)"
    )
    parser.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2], help="default 0 1 2")
    parser.add_argument("--iterations", type=positive_int, help="override train.num_iterations for every run")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument(
        "--jobs", nargs="+", type=parse_job, metavar="VARIANT:SEED", help="run these instead of variants x seeds"
    )
    parser.add_argument(
        "--base-overall", type=probability, help="base model's overall score (default: the model card's)"
    )
    parser.add_argument("--table-only", action="store_true", help="rebuild ablation.md from the runs there")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config setting for every run (repeatable), e.g. eval.num_images_per_prompt=1 with --iterations 2 "
        "for a quick try of the script; not a key a variant sets",
    )
    args = parser.parse_args()
    runs, config = args.runs_dir.resolve(), args.config.resolve()  # the runs start in the repository's root
    check_output_folder("--runs-dir", args.runs_dir)
    t_over_k = steps_ratio(config, parse_set(args.set))
    if args.table_only:
        check_runs_to_tabulate(runs, table_seeds(args.seeds, args.jobs))
    else:
        jobs = args.jobs or [(name, seed) for seed in args.seeds for name in args.variants]
        check_variant_configs(config, [name for name, _ in jobs], args.set)
        threads = max(1, (os.cpu_count() or 1) // args.parallel)
        failed = threading.Event()

        def run_job(job: tuple[str, int]) -> Path | None:
            if failed.is_set():  # after a failure no run starts; those running finish
                return None
            try:
                return run_variant(config, runs, *job, args.iterations, threads, args.set)
            except VariantFailed:
                failed.set()
                raise

        try:
            with ThreadPoolExecutor(max_workers=args.parallel) as pool:
                for run_dir in filter(None, pool.map(run_job, jobs)):
                    print(f"finished {run_dir}", flush=True)
        except VariantFailed as error:
            print(f"ablation.py: {error}", file=sys.stderr)
            return 1
    runs.mkdir(parents=True, exist_ok=True)
    base = args.base_overall if args.base_overall is not None else base_overall_from_card()
    print(write_table(runs, table_seeds(args.seeds, args.jobs), base, t_over_k))
    print(f"table: {runs / 'ablation.md'}")
    print(f"picture: {draw_comparison(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
