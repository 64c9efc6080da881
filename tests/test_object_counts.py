"""benchmarks/object_counts.py: the undersized-detection share, on hand-built images."""

from __future__ import annotations

import numpy as np
import pytest
from support import load_benchmark, run_benchmark_cli

from maskfocus.shapes.detector import ShapesDetector
from maskfocus.shapes.render import render
from maskfocus.shapes.scene import Scene, ShapeObject
from maskfocus.shapes.world import COLORS


def test_a_solid_token_is_a_confident_undersized_square_and_a_world_object_is_not():
    module = load_benchmark("object_counts")
    image = render(Scene((ShapeObject("circle", "blue", 20.0, 20.0, 16.0),)))
    assert module.undersized(ShapesDetector().fit(image)) == (1, 0)
    image[44:48, 44:48] = COLORS["red"]  # one 4x4 token of solid red, far from the circle
    assert module.undersized(ShapesDetector().fit(image)) == (2, 1)
    assert module.undersized([]) == (0, 0)
    assert np.isclose(module.UNDERSIZED_PX, 9.0)


def test_rows_are_named_by_run_not_by_their_model_folder():
    module = load_benchmark("object_counts")
    assert module.model_label("runs/probe/text_seed0/model") == "text_seed0"
    assert module.model_label("builtin:shapes-tiny") == "builtin:shapes-tiny"
    assert module.model_label("/models/variant") == "variant"


def test_every_model_folder_is_checked_before_the_first_is_sampled(monkeypatch, tmp_path, capsys):
    """A wrong second folder failed only after the first model had been sampled (minutes at the defaults)."""
    module = load_benchmark("object_counts")
    monkeypatch.setattr(module, "count_objects", lambda *_: pytest.fail("a model was sampled"))
    argv = ["builtin:shapes-tiny", str(tmp_path / "missing"), "--every", "588"]
    assert run_benchmark_cli(module, argv, monkeypatch) == 2
    assert capsys.readouterr().err.startswith(f"object_counts.py: error: model folder not found: {tmp_path}/missing")
    with pytest.raises(SystemExit):  # an empty table, exit 0, before
        run_benchmark_cli(module, ["builtin:shapes-tiny", "--images", "0"], monkeypatch)
