"""Renderer of the shapes world: exact anti-aliased rasterisation by supersampling, plus test degradations.

Every pixel's coverage by a shape is the fraction of SUPERSAMPLE x SUPERSAMPLE sub-pixel centres inside it (a box
filter over an 8x grid); objects are alpha-composited over the background in drawing order (later on top).
Pure numpy, so bit-for-bit deterministic. Image arrays: `H`, `W` pixels, `N` images, uint8 RGB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from maskfocus.shapes.scene import Scene, ShapeObject
from maskfocus.shapes.world import BACKGROUND, COLORS, IMAGE_SIZE

SUPERSAMPLE = 8
"""Sub-pixel samples per pixel side."""


def inside(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, size: float) -> np.ndarray:
    """Boolean mask of the points (x, y) that lie inside a shape of bounding box side ``size`` centred at (cx, cy)."""
    r = size / 2
    dx, dy = np.abs(x - cx), np.abs(y - cy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (dx <= r) & (dy <= r)
    if shape == "diamond":
        return dx + dy <= r
    if shape == "triangle":
        # Apex at (cx, cy - r), base from (cx - r, cy + r) to (cx + r, cy + r): half-width grows by 1/2 per row.
        return (y <= cy + r) & (dx <= (y - (cy - r)) / 2)
    raise ValueError(f"unknown shape {shape!r}")


def coverage(
    shape: str, cx: float, cy: float, size: float, x0: int, y0: int, w: int, h: int, supersample: int = SUPERSAMPLE
) -> np.ndarray:
    """Fraction in [0, 1] of each pixel of the window [x0, x0 + w) x [y0, y0 + h) covered by the shape, (h, w)."""
    sub = (np.arange(supersample) + 0.5) / supersample
    xs = (x0 + np.arange(w)[:, None] + sub[None, :]).reshape(-1)
    ys = (y0 + np.arange(h)[:, None] + sub[None, :]).reshape(-1)
    hits = inside(shape, xs[None, :], ys[:, None], cx, cy, size)
    return hits.reshape(h, supersample, w, supersample).mean(axis=(1, 3))


def object_window(obj: ShapeObject, image_size: int = IMAGE_SIZE) -> tuple[int, int, int, int]:
    """Pixel window (x0, y0, w, h) that contains the object's box, clipped to the image."""
    x0, y0, x1, y1 = obj.box
    ix0, iy0 = max(math.floor(x0), 0), max(math.floor(y0), 0)
    ix1, iy1 = min(math.ceil(x1), image_size), min(math.ceil(y1), image_size)
    return ix0, iy0, max(ix1 - ix0, 0), max(iy1 - iy0, 0)


def render(scene: Scene, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Render a scene to a uint8 RGB image (H, W, 3) with H = W = ``image_size``."""
    canvas_HW3 = np.empty((image_size, image_size, 3), dtype=np.float64)
    canvas_HW3[:] = BACKGROUND
    for obj in scene.objects:
        x0, y0, w, h = object_window(obj, image_size)
        if w == 0 or h == 0:
            continue
        alpha = coverage(obj.shape, obj.cx, obj.cy, obj.size, x0, y0, w, h)[..., None]
        window = canvas_HW3[y0 : y0 + h, x0 : x0 + w]
        window[:] = window * (1 - alpha) + np.asarray(COLORS[obj.color], dtype=np.float64) * alpha
    return np.rint(canvas_HW3).astype(np.uint8)


def render_batch(scenes: Sequence[Scene], image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Render scenes to a uint8 batch (N, H, W, 3)."""
    out_NHW3 = np.empty((len(scenes), image_size, image_size, 3), dtype=np.uint8)
    for n, scene in enumerate(scenes):
        out_NHW3[n] = render(scene, image_size)
    return out_NHW3


# Degradations: how a generator's output may differ from a clean render; used to check the detector's robustness.


def down_up(images: np.ndarray, factor: int = 4) -> np.ndarray:
    """Average ``factor`` x ``factor`` blocks, then upsample back bilinearly (pixel-centre aligned).

    Imitates the round trip through a VQ autoencoder with ``factor`` x ``factor`` patches. uint8 (..., H, W, 3),
    one image or a batch.
    """
    *lead, h, w, c = images.shape
    blocks = images.astype(np.float64).reshape(*lead, h // factor, factor, w // factor, factor, c)
    small = blocks.mean(axis=(-4, -2))
    zoom = (1,) * len(lead) + (factor, factor, 1)
    big = ndimage.zoom(small, zoom, order=1, mode="nearest", grid_mode=True)
    return np.clip(np.rint(big), 0, 255).astype(np.uint8)


def blur(images: np.ndarray, sigma: float = 0.7) -> np.ndarray:
    """Gaussian blur of each channel, uint8 (..., H, W, 3), one image or a batch."""
    sigmas = (0,) * (images.ndim - 3) + (sigma, sigma, 0)
    out = ndimage.gaussian_filter(images.astype(np.float64), sigma=sigmas, mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def add_noise(images: np.ndarray, rng: np.random.Generator, std: float = 6.0) -> np.ndarray:
    """Add i.i.d. Gaussian pixel noise of standard deviation ``std`` (in 0..255 units), uint8 (..., H, W, 3)."""
    out = images.astype(np.float64) + rng.normal(0.0, std, size=images.shape)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
