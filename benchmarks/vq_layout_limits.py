"""How cleanly does a shapes-world model's VQ decode layouts its training scenes never had?

The VQ and its patch table are trained on scenes with at least MIN_GAP between objects and MARGIN to the border
(maskfocus/shapes/world.py). This renders layouts outside that (two 16 px shapes touching; one shape against each
edge) and the same layouts inside it (a MIN_GAP gap; a MARGIN away from the left edge), turns each render into its
exact patch codes (the nearest table entry where a patch is not in the table), decodes them with the model's VQ,
and counts the images the exact detector reads right: exactly the scene's (shape, colour) pairs above the cutoff
(GenEval's counting threshold 0.9 by default). The clean renders are counted too, as the check of the detector.

With `--generated TAG ...` it also samples that tag's shapes-geneval rows (the shipped config's sampler) and counts
the images whose detected objects (any score above 0.3) lie closer than MIN_GAP to each other or than MARGIN to the
border, the layouts the VQ never saw, with GenEval's verdict on those images and on the rest. Objects that touch
may be detected as one, so this counts such layouts from below.

Usage: python benchmarks/vq_layout_limits.py [--model builtin:shapes-tiny] [--cutoff 0.9]
       [--generated counting two_object position] [--images 4] [--seed 0]

Results: benchmarks/RESULTS.md, "Forty-eighth session: the VQ on layouts its training scenes never had".
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from maskfocus.script_args import nonnegative_int, positive_int, probability, run_script
from maskfocus.shapes.prompts import TAGS
from maskfocus.shapes.scene import Scene, ShapeObject
from maskfocus.shapes.world import COLORS, MARGIN, MIN_GAP, SHAPES

SIZE = 16.0
COLOR_PAIRS = (("red", "orange"), ("red", "purple"), ("orange", "yellow"), ("blue", "purple"), ("green", "blue"))
"""Pairs of neighbouring hues, where a garbled boundary could pass for the other colour."""
EDGES = {"left": (0.0, 24.0), "right": (48.0, 24.0), "top": (24.0, 0.0), "bottom": (24.0, 48.0)}
"""Top-left corner of a 16 px shape against each edge of the 64 px image."""


def pairs_at_gap(gap: float) -> list[Scene]:
    """Two 16 px shapes side by side, `gap` px apart, for every ordered shape pair and COLOR_PAIRS."""
    left_x = 20.0
    return [
        Scene((ShapeObject(a, ca, left_x, 32.0, SIZE), ShapeObject(b, cb, left_x + SIZE + gap, 32.0, SIZE)))
        for a, b in itertools.product(SHAPES, SHAPES)
        for ca, cb in COLOR_PAIRS
    ]


def singles_at(corner: tuple[float, float], colors: tuple[str, ...]) -> list[Scene]:
    """One 16 px shape of every shape and colour, its top-left corner at `corner`."""
    x, y = corner
    return [Scene((ShapeObject(s, c, x + SIZE / 2, y + SIZE / 2, SIZE),)) for s in SHAPES for c in colors]


def read_right(fits, scene: Scene, cutoff: float) -> bool:
    """Whether the detections above `cutoff` are exactly the scene's objects (shape and colour)."""
    found = sorted((fit.shape, fit.color) for fit in fits if fit.score > cutoff)
    return found == sorted((obj.shape, obj.color) for obj in scene.objects)


def count_read_right(model, table: np.ndarray, scenes: list[Scene], cutoff: float) -> tuple[int, int]:
    """(clean renders read right, decoded exact codes read right) of `scenes`."""
    from maskfocus.images import to_uint8
    from maskfocus.shapes.detector import ShapesDetector
    from maskfocus.shapes.patches import patch_ids
    from maskfocus.shapes.render import render_batch

    detector = ShapesDetector()
    renders = render_batch(scenes)
    codes = torch.from_numpy(patch_ids(renders, table)).view(len(scenes), -1)
    with torch.no_grad():
        decoded = to_uint8(model.decode(codes))
    clean = sum(read_right(detector.fit(image), scene, cutoff) for image, scene in zip(renders, scenes, strict=True))
    coded = sum(read_right(detector.fit(image), scene, cutoff) for image, scene in zip(decoded, scenes, strict=True))
    return clean, coded


def layouts() -> dict[str, list[Scene]]:
    """The measured layouts by name: inside the training scenes' rules first, then outside them."""
    colors = tuple(COLORS)
    named = {
        f"pair, {MIN_GAP:.0f} px gap (as trained)": pairs_at_gap(MIN_GAP),
        "pair, touching": pairs_at_gap(0.0),
        f"single, {MARGIN:.0f} px from the left edge (as trained)": singles_at((MARGIN, 24.0), colors),
    }
    named.update({f"single, against the {edge} edge": singles_at(corner, colors) for edge, corner in EDGES.items()})
    return named


FIT_TOLERANCE = 0.5
"""Pixels a fitted box may stray from the drawn one (the fits of true renders: within 0.01 px)."""


def outside_trained_layouts(detections: dict, keep_above: float = 0.3) -> bool:
    """Whether any two detected boxes are less than MIN_GAP apart, or any box is less than MARGIN from the border
    (beyond FIT_TOLERANCE)."""
    from maskfocus.shapes.world import IMAGE_SIZE

    boxes = [d.box for found in detections.values() for d in found if d.score > keep_above]
    edge = min((min(x0, y0, IMAGE_SIZE - x1, IMAGE_SIZE - y1) for x0, y0, x1, y1 in boxes), default=IMAGE_SIZE)
    gap = min((box_gap(a, b) for a, b in itertools.combinations(boxes, 2)), default=IMAGE_SIZE)
    return edge < MARGIN - FIT_TOLERANCE or gap < MIN_GAP - FIT_TOLERANCE


def box_gap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """The gap between two boxes (x0, y0, x1, y1): the larger of the horizontal and vertical gaps, 0 where they
    overlap (as the scene sampler measures MIN_GAP between bounding boxes)."""
    horizontal = max(b[0] - a[2], a[0] - b[2], 0.0)
    vertical = max(b[1] - a[3], a[1] - b[3], 0.0)
    return max(horizontal, vertical)


def generated_table(model_path: str, tags: list[str], images: int, seed: int) -> list[str]:
    """Markdown rows: per tag, images outside the trained layouts and the success rate with and without them."""
    from maskfocus.cli import DEFAULT_CONFIG
    from maskfocus.config import load_config
    from maskfocus.evaluation import detect_tag_rows
    from maskfocus.rewards.geneval import evaluate

    config = load_config(DEFAULT_CONFIG, {"model.path": model_path})
    lines = [
        "| tag | images | outside the trained layouts | success there | success elsewhere |",
        "|---|---|---|---|---|",
    ]
    for tag in tags:
        detections, rows = detect_tag_rows(config, tag, images, seed)
        outside = [outside_trained_layouts(found) for found in detections]
        correct = [evaluate(found, row).correct for found, row in zip(detections, rows, strict=True)]
        there = [ok for ok, out in zip(correct, outside, strict=True) if out]
        elsewhere = [ok for ok, out in zip(correct, outside, strict=True) if not out]
        lines.append(f"| {tag} | {len(rows)} | {len(there)} | {success_rate(there)} | {success_rate(elsewhere)} |")
    return lines


def success_rate(verdicts: list[bool]) -> str:
    return f"{sum(verdicts) / len(verdicts):.3f}" if verdicts else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:shapes-tiny", help="a shapes-world model folder")
    parser.add_argument("--cutoff", type=probability, default=0.9, help="detection score cutoff (GenEval counting)")
    parser.add_argument("--generated", nargs="+", choices=TAGS, default=[], help="also sample these tags' rows")
    parser.add_argument("--images", type=positive_int, default=4, help="images per row with --generated")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="sampling seed with --generated")
    args = parser.parse_args()
    from maskfocus.models.amused import AmusedGenerator
    from maskfocus.shapes.patches import patch_table

    model, table = AmusedGenerator.from_folder(args.model), patch_table()
    print(f"| layout | scenes | clean renders read right | decoded exact codes read right (cutoff {args.cutoff}) |")
    print("|---|---|---|---|")
    for name, scenes in layouts().items():
        clean, coded = count_read_right(model, table, scenes, args.cutoff)
        print(f"| {name} | {len(scenes)} | {clean} | {coded} |")
    if args.generated:
        print(f"\nsampled with {args.model}, {args.images} images per row, seed {args.seed}:")
        print("\n".join(generated_table(args.model, args.generated, args.images, args.seed)))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
