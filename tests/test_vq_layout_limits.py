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
