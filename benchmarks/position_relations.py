"""Does a model follow the relation word of a position prompt, or only draw both objects?

GenEval's position rule takes the best detection of each named class and checks the asked relation between their
boxes. For every image of the position rows of shapes-geneval this records whether both objects were found and,
if so, whether the asked relation holds and whether its opposite holds ("left of" for "right of"). A model that
ignores the relation word places the pair the same way whichever word it is given, so the asked and the opposite
relation hold about equally often; one that follows it makes the asked relation much the likelier. The pairs are
split by the distance between the two box centres, in VQ tokens (4 px): the tiny model has no position embedding
and its convolutions reach 4 tokens on each side of the middle layer, so only near pairs can be placed by one
another.

Usage: python benchmarks/position_relations.py MODEL [--images 4] [--seed 0] [--near 6] [--trust-checkpoint-code]

Results: benchmarks/RESULTS.md, "Probes of the ninth session".
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from maskfocus.cli import DEFAULT_CONFIG
from maskfocus.config import load_config
from maskfocus.evaluation import detect_tag_rows
from maskfocus.rewards.geneval import Detection, Thresholds, filter_detections, relative_position
from maskfocus.script_args import (
    nonnegative_float,
    nonnegative_int,
    positive_int,
    run_script,
    script_model_overrides,
)
from maskfocus.shapes.world import OPPOSITE_RELATION

AXIS = {"left of": "horizontal", "right of": "horizontal", "above": "vertical", "below": "vertical"}
TOKEN_PIXELS = 4
RULE_THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class PairOutcome:
    """One position image: both objects found? and, if so, which relations hold and how far apart they are."""

    both_found: bool
    asked_holds: bool = False
    opposite_holds: bool = False
    distance_tokens: float = math.nan
    axis: str = ""
    """"horizontal" for left of / right of, "vertical" for above / below."""


def box_centre(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def pair_outcome(
    detections: Mapping[str, Sequence[Detection]], row: Mapping[str, Any], thresholds: Thresholds = RULE_THRESHOLDS
) -> PairOutcome:
    """Outcome of one image of a position row (include[0] = the reference, include[1] = the positioned subject)."""
    reference_class, subject_clause = row["include"][0]["class"], row["include"][1]
    relation = subject_clause["position"][0]
    kept = filter_detections(detections, row["tag"], thresholds)
    references, subjects = kept.get(reference_class, []), kept.get(subject_clause["class"], [])
    if not references or not subjects:
        return PairOutcome(both_found=False)
    subject_box, reference_box = subjects[0].box, references[0].box
    holding = relative_position(subject_box, reference_box, thresholds.position_margin)
    (sx, sy), (rx, ry) = box_centre(subject_box), box_centre(reference_box)
    return PairOutcome(
        both_found=True,
        asked_holds=relation in holding,
        opposite_holds=OPPOSITE_RELATION[relation] in holding,
        distance_tokens=math.hypot(sx - rx, sy - ry) / TOKEN_PIXELS,
        axis=AXIS[relation],
    )


def summarize(outcomes: Sequence[PairOutcome], near_tokens: float) -> dict[str, dict[str, float]]:
    """Per group (all, near, far pairs, left/right and above/below prompts): images, share of all images, asked /
    opposite relation rate within it."""
    found = [o for o in outcomes if o.both_found]
    groups = {
        "both found": found,
        f"near (<= {near_tokens:g} tokens)": [o for o in found if o.distance_tokens <= near_tokens],
        f"far (> {near_tokens:g} tokens)": [o for o in found if o.distance_tokens > near_tokens],
        "left of / right of": [o for o in found if o.axis == "horizontal"],
        "above / below": [o for o in found if o.axis == "vertical"],
    }
    table = {}
    for name, members in groups.items():
        count = len(members)
        table[name] = {
            "images": count,
            "share": count / len(outcomes) if outcomes else math.nan,
            "asked": sum(o.asked_holds for o in members) / count if count else math.nan,
            "opposite": sum(o.opposite_holds for o in members) / count if count else math.nan,
        }
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder (or builtin:shapes-tiny)")
    parser.add_argument("--images", type=positive_int, default=4, help="images per position row (the evaluation's 4)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed (the evaluation's 0)")
    parser.add_argument(
        "--near", type=nonnegative_float, default=6.0, help="centre distance (tokens) up to which a pair is near"
    )
    parser.add_argument(
        "--trust-checkpoint-code",
        action="store_true",
        help="a Meissonic-format folder (its own transformer/transformer.py, e.g. benchmarks/positional_base.py's)",
    )
    args = parser.parse_args()
    config = load_config(DEFAULT_CONFIG, script_model_overrides(args.model, args.trust_checkpoint_code))
    detections, rows = detect_tag_rows(config, "position", args.images, args.seed)
    outcomes = [pair_outcome(d, row) for d, row in zip(detections, rows, strict=True)]
    correct = sum(o.asked_holds for o in outcomes) / len(outcomes)
    print(f"images: {len(outcomes)}; position success rate {correct:.3f}")
    print("| pairs | images | share of all images | asked relation holds | opposite relation holds |")
    print("|---|---|---|---|---|")
    for name, cells in summarize(outcomes, args.near).items():
        print(f"| {name} | {cells['images']} | {cells['share']:.3f} | {cells['asked']:.3f} | {cells['opposite']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
