"""Tests for maskfocus.shapes.render: exact anti-aliased coverage, compositing order, degradations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from maskfocus.shapes.render import add_noise, blur, coverage, down_up, render, render_batch
from maskfocus.shapes.scene import Scene, ShapeObject, random_scene
from maskfocus.shapes.world import BACKGROUND, COLORS, IMAGE_SIZE, SHAPES

AREA = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}


def square_coverage_reference(cx: float, cy: float, size: float, n: int) -> np.ndarray:
    """Slow exact reference: overlap of each pixel [j, j+1) x [i, i+1) with the square, (n, n)."""
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            ox = max(0.0, min(j + 1, cx + size / 2) - max(j, cx - size / 2))
            oy = max(0.0, min(i + 1, cy + size / 2) - max(i, cy - size / 2))
            out[i, j] = ox * oy
    return out


def alpha_of(image: np.ndarray, color: str) -> np.ndarray:
    """Blend coefficient of each pixel between the background and ``color``, (H, W)."""
    d = np.array(COLORS[color], float) - BACKGROUND
    return (image.astype(float) - BACKGROUND) @ d / (d @ d)


def test_render_returns_uint8_image_and_is_deterministic() -> None:
    scene = random_scene(np.random.default_rng(3), 4)
    image = render(scene)
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, render(scene))


def test_render_batch_stacks_single_renders() -> None:
    scenes = [random_scene(np.random.default_rng(s)) for s in range(5)]
    batch = render_batch(scenes)
    assert batch.shape == (5, IMAGE_SIZE, IMAGE_SIZE, 3) and batch.dtype == np.uint8
    for image, scene in zip(batch, scenes, strict=True):
        np.testing.assert_array_equal(image, render(scene))


def test_empty_scene_and_pixels_away_from_objects_are_background() -> None:
    assert (render(Scene(())) == BACKGROUND).all()
    scene = random_scene(np.random.default_rng(5), 3)
    image = render(scene)
    far = np.ones((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        far[max(int(y0) - 1, 0) : int(y1) + 2, max(int(x0) - 1, 0) : int(x1) + 2] = False
    assert (image[far] == BACKGROUND).all()


@pytest.mark.parametrize(("cx", "cy", "size"), [(10.0, 12.0, 8.0), (10.3, 11.7, 9.45), (12.5, 9.25, 10.0)])
def test_square_coverage_matches_exact_pixel_overlap(cx: float, cy: float, size: float) -> None:
    got = coverage("square", cx, cy, size, 0, 0, 24, 24)
    np.testing.assert_allclose(got, square_coverage_reference(cx, cy, size, 24), atol=1 / 8 + 1e-9)
    assert got.sum() == pytest.approx(size * size, rel=0.02)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("size", [10.0, 14.3, 20.0])
def test_rendered_mass_and_centroid_match_the_shape(shape: str, size: float) -> None:
    cx, cy = 30.4, 33.7
    alpha = alpha_of(render(Scene((ShapeObject(shape, "blue", cx, cy, size),))), "blue")
    ys, xs = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE] + 0.5
    mass = alpha.sum()
    assert mass == pytest.approx(AREA[shape] * size * size, rel=0.02)
    # The up-pointing triangle's centroid lies two thirds of its height below the apex: size / 6 below centre.
    expected_cy = cy + (size / 6 if shape == "triangle" else 0.0)
    assert (alpha * xs).sum() / mass == pytest.approx(cx, abs=0.1)
    assert (alpha * ys).sum() / mass == pytest.approx(expected_cy, abs=0.1)


def test_edges_are_anti_aliased() -> None:
    image = render(Scene((ShapeObject("circle", "red", 31.3, 32.6, 17.0),)))
    alpha = alpha_of(image, "red")
    edge = (alpha > 0.05) & (alpha < 0.95)
    assert edge.sum() >= 20
    assert (alpha > 0.95).sum() > 150


def test_triangle_points_up_and_diamond_touches_its_box_edges() -> None:
    tri = alpha_of(render(Scene((ShapeObject("triangle", "green", 32, 32, 16),))), "green")
    assert tri[39, 25:39].min() > 0.9  # base row at the bottom, full width (corners partly covered)
    assert tri[24, 24:40].max() < 0.5  # the top row is just the apex
    dia = alpha_of(render(Scene((ShapeObject("diamond", "green", 32, 32, 16),))), "green")
    assert dia[31:33, 24].min() > 0.3 and dia[24, 31:33].min() > 0.3 and dia[24, 24] == 0


def test_later_objects_are_drawn_on_top() -> None:
    below, above = ShapeObject("square", "red", 30, 30, 16), ShapeObject("square", "blue", 36, 36, 16)
    assert tuple(render(Scene((below, above)))[34, 34]) == COLORS["blue"]
    assert tuple(render(Scene((above, below)))[34, 34]) == COLORS["red"]


def test_degradations_keep_shape_and_dtype_and_constant_images() -> None:
    flat = np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 123, dtype=np.uint8)
    rng = np.random.default_rng(0)
    for out in (down_up(flat), blur(flat), add_noise(flat, rng, 0.0)):
        assert out.dtype == np.uint8
        np.testing.assert_array_equal(out, flat)
    image = render(random_scene(np.random.default_rng(1)))
    assert down_up(image).shape == blur(image).shape == add_noise(image, rng).shape == image.shape
    small = image.astype(float).reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    again = down_up(image).astype(float).reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
    contrast = np.abs(small - small.mean(axis=(0, 1))).mean()
    assert np.abs(again - small).mean() < 0.25 * contrast  # the round trip keeps the 16 x 16 content


def test_degradations_of_a_batch_equal_those_of_each_image() -> None:
    images = render_batch([random_scene(np.random.default_rng(s)) for s in range(3)])
    for degrade in (down_up, blur):
        np.testing.assert_array_equal(degrade(images), np.stack([degrade(image) for image in images]))
