"""How many objects does a model draw for a counting prompt? Target count against count found, per image.

GenEval's counting rule keeps detections above 0.9 confidence and needs exactly the named count. This tabulates,
for the counting rows of shapes-geneval, how many detections of the named class pass that threshold against the
count asked for, and the success rate the rule would give at lower thresholds: if the failures were faint
objects, a lower threshold would pass more images; if they were extra objects, it passes fewer.

Usage: python benchmarks/count_distribution.py MODEL [--images 4] [--seed 0] [--thresholds 0.9 0.5 0.3]

Results: benchmarks/RESULTS.md, "Probes of the eighth session", "Probes of the twenty-eighth session".
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from maskfocus.cli import DEFAULT_CONFIG
from maskfocus.config import load_config
from maskfocus.evaluation import detect_tag_rows
from maskfocus.rewards.geneval import Detection, Thresholds, evaluate, filter_detections
from maskfocus.script_args import nonnegative_int, positive_int, probability, run_script


def count_found(detections: Mapping[str, Sequence[Detection]], row: Mapping[str, Any], threshold: float) -> int:
    """Detections of the row's (first) named class that the counting rule keeps at `threshold` (strictly above)."""
    classname = row["include"][0]["class"]
    kept = filter_detections(
        {classname: detections.get(classname, [])}, "counting", Thresholds(counting_score=threshold)
    )
    return len(kept[classname])


def tabulate(
    detections_per_image: Sequence[Mapping[str, Sequence[Detection]]],
    rows: Sequence[Mapping[str, Any]],
    thresholds: Sequence[float],
) -> tuple[Counter, dict[float, float]]:
    """((target count, count found above thresholds[0]) -> images, threshold -> success rate of the counting rule)."""
    table: Counter = Counter()
    passed = Counter()
    for detections, row in zip(detections_per_image, rows, strict=True):
        table[(row["include"][0]["count"], count_found(detections, row, thresholds[0]))] += 1
        for threshold in thresholds:
            passed[threshold] += evaluate(detections, row, Thresholds(counting_score=threshold)).correct
    return table, {threshold: passed[threshold] / len(rows) for threshold in thresholds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder (or builtin:shapes-tiny)")
    parser.add_argument("--images", type=positive_int, default=4, help="images per counting row (the evaluation's 4)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed (the evaluation's 0)")
    parser.add_argument("--thresholds", type=probability, nargs="+", default=[0.9, 0.5, 0.3], help="first = the rule's")
    args = parser.parse_args()
    config = load_config(DEFAULT_CONFIG, {"model.path": args.model})
    detections, rows = detect_tag_rows(config, "counting", args.images, args.seed)
    table, success = tabulate(detections, rows, args.thresholds)
    found_values = sorted({found for _, found in table})
    targets = sorted({target for target, _ in table})
    print(f"images: {len(rows)}; rows = count asked for, columns = count found above {args.thresholds[0]}")
    print("| asked | " + " | ".join(str(f) for f in found_values) + " | mean found |")
    print("|---" * (len(found_values) + 2) + "|")
    for target in targets:
        cells = [table[(target, found)] for found in found_values]
        mean = sum(f * c for f, c in zip(found_values, cells, strict=True)) / sum(cells)
        print(f"| {target} | " + " | ".join(str(c) for c in cells) + f" | {mean:.2f} |")
    exact = sum(c for (target, found), c in table.items() if found == target) / len(rows)
    over = sum(c for (target, found), c in table.items() if found > target) / len(rows)
    print(f"\nexact {exact:.3f}, too many {over:.3f}, too few {1 - exact - over:.3f}")
    print("success rate by threshold: " + ", ".join(f"{t}: {s:.3f}" for t, s in success.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
