"""Why do a model's images fail? Per shapes-geneval tag: success rate, pass@n and the commonest failed clauses.

A diagnostic for RL headroom: GRPO can only raise a prompt's success rate if some of a group's samples succeed,
so pass@n (the share of rows with at least one correct image of n) bounds what a group of n can learn from.
The failed clauses (digits folded to N) show what goes wrong: missing objects, extra objects, wrong colours.

Usage: python benchmarks/failure_reasons.py builtin:shapes-tiny [--tags counting color_attr] [--images 8] [--top 20]

Results: benchmarks/RESULTS.md, "Probes of the seventh session", "Probes of the eighth session".
"""

from __future__ import annotations

import argparse
import re
from collections import Counter

from maskfocus.cli import DEFAULT_CONFIG
from maskfocus.config import GenEvalDetectorConfig, load_config
from maskfocus.evaluation import expand_jobs, generate_batches, load_evaluated_generator, load_rows
from maskfocus.rewards.geneval import TAGS
from maskfocus.rewards.judges import build_judge
from maskfocus.script_args import nonnegative_int, positive_int, run_script


def judge_rows(model, sampler, judge, rows: list[dict], images_per_row: int, seed: int) -> tuple[Counter, Counter]:
    """(correct images per row index, failed clauses per (tag, clause with digits as N))."""
    correct: Counter = Counter()
    reasons: Counter = Counter()
    for chunk, images in generate_batches(model, expand_jobs(rows, images_per_row), sampler, seed):
        for job, result in zip(chunk, judge.judge(images, [rows[j.row_index] for j in chunk]), strict=True):
            correct[job.row_index] += result.correct
            for reason in result.reasons:
                reasons[(rows[job.row_index]["tag"], re.sub(r"\d+", "N", reason))] += 1
    return correct, reasons


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder (or builtin:shapes-tiny)")
    parser.add_argument("--tags", nargs="+", default=list(TAGS), choices=TAGS)
    parser.add_argument(
        "--images", type=positive_int, default=8, help="images per row (n of pass@n; 8 = the group size)"
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=1, help="sampling seed (default 1; the evaluation uses 0)"
    )
    parser.add_argument("--top", type=positive_int, default=20, help="failed clauses to list")
    args = parser.parse_args()
    rows = [row for row in load_rows("shapes-geneval") if row["tag"] in args.tags]
    config = load_config(DEFAULT_CONFIG, {"model.path": args.model})
    judge = build_judge(GenEvalDetectorConfig())
    correct, reasons = judge_rows(load_evaluated_generator(config), config.sampler, judge, rows, args.images, args.seed)
    print(f"| tag | rows | success rate | pass@{args.images} |\n|---|---|---|---|")
    for tag in args.tags:
        hits = [correct[i] for i, row in enumerate(rows) if row["tag"] == tag]
        rate = sum(hits) / (len(hits) * args.images)
        print(f"| {tag} | {len(hits)} | {rate:.3f} | {sum(h > 0 for h in hits) / len(hits):.3f} |")
    print(f"\nCommonest failed clauses ({args.images} images per row):")
    for (tag, reason), count in reasons.most_common(args.top):
        print(f"{count:6d}  {tag:14s} {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
