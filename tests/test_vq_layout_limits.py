"""benchmarks/vq_layout_limits.py: the layouts it measures, and the VQ reading right the layouts it was trained on."""

from __future__ import annotations

from support import load_benchmark

from maskfocus.shapes.world import IMAGE_SIZE, MARGIN, MIN_GAP


def test_the_measured_layouts_are_what_their_names_say():
    module = load_benchmark("vq_layout_limits")
    named = module.layouts()
    for name, scenes in named.items():
        boxes = [[obj.box for obj in scene.objects] for scene in scenes]
        if name.startswith("pair"):
            gaps = {round(right[0] - left[2], 6) for left, right in boxes}
            assert gaps == ({MIN_GAP} if "gap" in name else {0.0}), name
        else:  # the distance to the named side; the other sides are farther
            side = next(side for side in ("left", "right", "top", "bottom") if f"the {side} edge" in name)
            distances = [
                dict(zip(("left", "top", "right", "bottom"), (x0, y0, IMAGE_SIZE - x1, IMAGE_SIZE - y1), strict=True))
                for ((x0, y0, x1, y1),) in boxes
            ]
            assert {d[side] for d in distances} == ({MARGIN} if "as trained" in name else {0.0}), name
            assert all(d[side] < min(v for k, v in d.items() if k != side) for d in distances), name
    assert len(named["pair, touching"]) == 16 * len(module.COLOR_PAIRS)


def test_layouts_as_trained_decode_to_what_the_detector_reads_right(tiny_model):
    """The control rows of the table: the shipped VQ decodes the exact codes of gapped pairs and of shapes a margin
    from the edge to images read right (a garbled control would make the other rows meaningless)."""
    from maskfocus.shapes.patches import patch_table

    module = load_benchmark("vq_layout_limits")
    named = module.layouts()
    as_trained = [scenes for name, scenes in named.items() if name.endswith("(as trained)")]
    assert len(as_trained) == 2
    scenes = as_trained[0][::8] + as_trained[1][::6]
    assert module.count_read_right(tiny_model, patch_table(), scenes, 0.9) == (len(scenes), len(scenes))


def test_generated_images_are_told_apart_by_the_gaps_the_detector_finds():
    """`--generated` flags an image whose detected objects are closer than the training scenes allow: none of the
    true renders of shapes-geneval rows (drawn at MIN_GAP and MARGIN, which fitted boxes meet only to rounding),
    every touching pair and every shape at an edge."""
    import numpy as np

    from maskfocus.evaluation import load_rows
    from maskfocus.shapes.detector import ShapesDetector
    from maskfocus.shapes.render import render_batch
    from maskfocus.shapes.scene import scene_for_metadata

    module = load_benchmark("vq_layout_limits")
    detector = ShapesDetector()
    rows = [row for row in load_rows("shapes-geneval") if row["tag"] in ("counting", "position")][::4]
    rng = np.random.default_rng(0)
    true_renders = render_batch([scene_for_metadata(row, rng) for row in rows])
    assert not any(module.outside_trained_layouts(found) for found in detector.detect_batch(true_renders))
    named = module.layouts()
    outside = named["pair, touching"][::10] + named["single, against the top edge"][::6]
    assert all(module.outside_trained_layouts(found) for found in detector.detect_batch(render_batch(outside)))
    assert module.box_gap((0, 0, 10, 10), (14, 30, 20, 40)) == 20 and module.box_gap((0, 0, 10, 10), (5, 5, 8, 8)) == 0
