"""Tests for maskfocus.shapes.detector: every shape at every size, degraded renders, hard cases, bad shapes."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from maskfocus.rewards.geneval import evaluate
from maskfocus.shapes.detector import ShapesDetector, classify_pixels, detection_score
from maskfocus.shapes.render import add_noise, blur, down_up, inside, render, render_batch
from maskfocus.shapes.scene import Scene, ShapeObject, random_scene
from maskfocus.shapes.world import BACKGROUND, COLORS, IMAGE_SIZE, SHAPES

DETECTOR = ShapesDetector()
DEGRADATIONS = {
    "clean": lambda image: image,
    "blur": blur,
    "noise": lambda image: add_noise(image, np.random.default_rng(0), 4.0),
    "down_up": down_up,
}


def found(image: np.ndarray, cutoff: float = 0.3) -> list[tuple[str, str]]:
    """Sorted (shape, colour) of the detections above ``cutoff``."""
    return sorted((shape, d.color) for shape, dets in DETECTOR.detect(image).items() for d in dets if d.score > cutoff)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union


@pytest.mark.parametrize("degradation", list(DEGRADATIONS))
def test_every_shape_at_every_size_scores_above_point_nine(degradation: str) -> None:
    rng = np.random.default_rng(1)
    colors = list(COLORS)
    for shape, size in itertools.product(SHAPES, np.arange(10.0, 20.5, 1.0)):
        obj = ShapeObject(shape, colors[rng.integers(6)], *rng.uniform(22, 42, 2), float(size))
        detections = DETECTOR.detect(DEGRADATIONS[degradation](render(Scene((obj,)))))
        assert sum(len(d) for d in detections.values()) == 1, (degradation, obj)
        (best,) = detections[shape]
        assert best.score > 0.9 and best.color == obj.color, (degradation, obj, best)
        assert box_iou(best.box, obj.box) > 0.8


def test_blank_image_gives_no_detections() -> None:
    blank = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    blank[:] = BACKGROUND
    for image in (blank, add_noise(blank, np.random.default_rng(0), 6.0)):
        detections = DETECTOR.detect(image)
        assert set(detections) == set(SHAPES) and not any(detections.values())


@pytest.mark.parametrize(("dtype", "shape"), [(np.float32, (32, 32, 3)), (np.uint8, (32, 32)), (np.uint8, (32, 32, 4))])
def test_an_image_not_uint8_hw3_is_refused_naming_what_it_got(dtype, shape) -> None:
    """A float image in [0, 1] was read as almost black: no shape found, every reward 0, no error."""
    with pytest.raises(ValueError, match=r"takes uint8 \(H, W, 3\) images; got .*" + re.escape(str(shape))):
        DETECTOR.detect(np.zeros(shape, dtype=dtype))


def test_pixels_are_labelled_by_palette_colour_background_or_unknown() -> None:
    image = np.zeros((2, 4, 3), dtype=np.uint8)
    image[0] = [COLORS["red"], COLORS["orange"], COLORS["yellow"], BACKGROUND]
    image[1] = [COLORS["blue"], COLORS["purple"], (0, 0, 0), COLORS["green"]]
    labels, tints = classify_pixels(image)
    assert labels.tolist() == [[0, 1, 2, -1], [4, 5, 6, 3]]
    half_red = np.rint(np.array(COLORS["red"]) * 0.3 + np.array(BACKGROUND) * 0.7).astype(np.uint8)
    labels, tints = classify_pixels(half_red[None, None])
    assert labels[0, 0] == -1 and tints[0, 0] == 0


def test_near_colours_are_told_apart() -> None:
    for names in (("red", "orange", "yellow"), ("blue", "purple", "red")):
        objects = tuple(
            ShapeObject(s, c, 12 + 20 * i, 32, 14) for i, (s, c) in enumerate(zip(SHAPES, names, strict=False))
        )
        for degrade in DEGRADATIONS.values():
            assert found(degrade(render(Scene(objects)))) == sorted((o.shape, o.color) for o in objects)


def test_touching_objects_of_different_colours_are_both_found() -> None:
    rng = np.random.default_rng(0)
    for a, b in itertools.product(SHAPES, SHAPES):
        for ca, cb in (("red", "yellow"), ("blue", "purple"), ("orange", "red")):
            s1, s2 = rng.uniform(10, 20, 2)
            x1 = 20 + rng.uniform(0, 1)
            scene = Scene((ShapeObject(a, ca, x1, 32, s1), ShapeObject(b, cb, x1 + (s1 + s2) / 2, 32, s2)))
            assert found(render(scene), cutoff=0.9) == sorted([(a, ca), (b, cb)]), scene


def test_top_object_of_an_overlapping_pair_is_classified_right() -> None:
    rng = np.random.default_rng(0)
    for a, b in itertools.product(SHAPES, SHAPES):
        ca, cb = rng.choice(list(COLORS), 2, replace=False)
        s1, s2 = rng.uniform(12, 20), rng.uniform(10, 20)
        angle, dist = rng.uniform(0, 2 * np.pi), (s1 + s2) / 2 * rng.uniform(0.4, 0.8)
        top = ShapeObject(b, str(cb), 32 + dist * np.cos(angle), 32 + dist * np.sin(angle), s2)
        detections = DETECTOR.detect(render(Scene((ShapeObject(a, str(ca), 32, 32, s1), top))))
        assert any(d.color == cb and d.score > 0.9 for d in detections[b]), (a, b)
        assert not any(d.color == cb and d.score > 0.3 for s in SHAPES if s != b for d in detections[s])


def test_four_small_objects_are_counted() -> None:
    for shape in SHAPES:
        objects = tuple(
            ShapeObject(shape, c, x, y, 10.0)
            for (x, y), c in zip(itertools.product((18, 46), repeat=2), COLORS, strict=False)
        )
        meta4 = {
            "tag": "counting",
            "include": [{"class": shape, "count": 4}],
            "exclude": [{"class": shape, "count": 5}],
        }
        meta3 = {
            "tag": "counting",
            "include": [{"class": shape, "count": 3}],
            "exclude": [{"class": shape, "count": 4}],
        }
        for degrade in DEGRADATIONS.values():
            detections = DETECTOR.detect(degrade(render(Scene(objects))))
            assert evaluate(detections, meta4).correct, shape
            assert not evaluate(detections, meta3).correct


def stretched(shape: str, factor: float, axis: int) -> np.ndarray:
    """A shape stretched by ``factor`` along one axis: not a shape of this world."""
    ys, xs = np.mgrid[:512, :512] / 8 + 1 / 16
    xs, ys = ((xs - 32) / factor + 32, ys) if axis == 0 else (xs, (ys - 32) / factor + 32)
    alpha = inside(shape, xs, ys, 32, 32, 14).reshape(64, 8, 64, 8).mean(axis=(1, 3))[..., None]
    return np.rint(np.array(BACKGROUND) * (1 - alpha) + np.array(COLORS["green"]) * alpha).astype(np.uint8)


def test_bars_stretched_shapes_and_blobs_score_low() -> None:
    for shape, axis in itertools.product(SHAPES, (0, 1)):
        assert all(score < 0.3 for score in scores(stretched(shape, 1.6, axis))), (shape, axis)
    bar = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), BACKGROUND, dtype=np.uint8)
    bar[20:23, 10:40] = COLORS["red"]
    assert max(scores(bar)) < 0.1
    rng = np.random.default_rng(0)
    blob_scores = []
    for _ in range(30):
        yy, xx = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE] + 0.5
        field = sum(
            np.exp(-((xx - 32 - rng.normal(0, 5)) ** 2 + (yy - 32 - rng.normal(0, 5)) ** 2) / 18) for _ in range(3)
        )
        alpha = (field > 0.5 * field.max())[..., None]
        image = np.where(alpha, np.array(COLORS["blue"]), np.array(BACKGROUND)).astype(np.uint8)
        blob_scores.extend(scores(image))
    assert np.median(blob_scores) < 0.3


def scores(image: np.ndarray) -> list[float]:
    return [d.score for dets in DETECTOR.detect(image).values() for d in dets]


def test_score_rises_with_fit_and_with_margin_to_runner_up() -> None:
    assert detection_score(0.002, 0.2) > 0.99
    assert detection_score(0.002, 0.2) > detection_score(0.05, 0.2) > detection_score(0.12, 0.2)
    assert (
        detection_score(0.01, 0.2)
        > detection_score(0.01, 0.012)
        > detection_score(0.01, 0.01)
        == pytest.approx(0.5, abs=1e-3)
    )


def test_detect_batch_matches_detect_and_sorts_best_first() -> None:
    scenes = [random_scene(np.random.default_rng(s), 4) for s in range(6)]
    images = render_batch(scenes)
    batch = DETECTOR.detect_batch(images)
    assert batch == [DETECTOR.detect(image) for image in images]
    for detections in batch:
        for dets in detections.values():
            assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
