"""How cleanly does a shapes-world model's VQ decode layouts its training scenes never had?

The VQ and its patch table are trained on scenes with at least MIN_GAP between objects and MARGIN to the border
(maskfocus/shapes/world.py). This renders layouts outside that (two 16 px shapes touching; one shape against each
edge) and the same layouts inside it (a MIN_GAP gap; a MARGIN away from the left edge), turns each render into its
exact patch codes (the nearest table entry where a patch is not in the table), decodes them with the model's VQ,
and counts the images the exact detector reads right: exactly the scene's (shape, colour) pairs above the cutoff
(GenEval's counting threshold 0.9 by default). The clean renders are counted too, as the check of the detector.

Usage: python benchmarks/vq_layout_limits.py [--model builtin:shapes-tiny] [--cutoff 0.9]

Results: benchmarks/RESULTS.md, "Forty-eighth session: the VQ on layouts its training scenes never had".
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
import torch

from maskfocus.script_args import probability, run_script
from maskfocus.shapes.scene import Scene, ShapeObject
from maskfocus.shapes.world import MARGIN, MIN_GAP, SHAPES

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
    from maskfocus.shapes.world import COLORS

    colors = tuple(COLORS)
    named = {
        f"pair, {MIN_GAP:.0f} px gap (as trained)": pairs_at_gap(MIN_GAP),
        "pair, touching": pairs_at_gap(0.0),
        f"single, {MARGIN:.0f} px from the left edge (as trained)": singles_at((MARGIN, 24.0), colors),
    }
    named.update({f"single, against the {edge} edge": singles_at(corner, colors) for edge, corner in EDGES.items()})
    return named


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="builtin:shapes-tiny", help="a shapes-world model folder")
    parser.add_argument("--cutoff", type=probability, default=0.9, help="detection score cutoff (GenEval counting)")
    args = parser.parse_args()
    from maskfocus.models.amused import AmusedGenerator
    from maskfocus.shapes.patches import patch_table

    model, table = AmusedGenerator.from_folder(args.model), patch_table()
    print(f"| layout | scenes | clean renders read right | decoded exact codes read right (cutoff {args.cutoff}) |")
    print("|---|---|---|---|")
    for name, scenes in layouts().items():
        clean, coded = count_read_right(model, table, scenes, args.cutoff)
        print(f"| {name} | {len(scenes)} | {clean} | {coded} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
