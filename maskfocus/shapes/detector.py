"""Detector of the shapes world: exact colour segmentation plus template fitting of shape geometry.

Pixels. Each pixel is explained as a blend of the background with one palette colour, p = bg + a * (c - bg): the
colour whose blend line passes closest to p wins; the pixel is that colour when a >= 0.5 and the line passes
within RESIDUAL_CUTOFF, background when a < 0.5, and "unknown" when no line fits (a blend of two objects'
colours). Anti-aliased and blurred edges split at half coverage, as an ideal shape's mask does.

Objects. 8-connected components of each colour with at least MIN_AREA pixels are objects. Each is fitted with
the ideal soft mask of every shape: size and centre from the moments of the component's soft coverage a
(mass = area factor * size^2, centroid), with pixels hidden by other objects or the border filled in from the
template (a few EM steps, so partly occluded shapes still fit), then each template is passed through a small
family of degradations (sharp, Gaussian blurs, a 4x4-patch down-and-up sampling) and compared with a by the
relative squared error  err = sum w (a - t)^2 / sum w t^2  over the visible pixels w. A binary-mask IoU is not
enough here: after a 4x down-up sampling, binary IoU classifies barely half of the 10-14 px squares and diamonds.

Score. The class is the best template; the score is  q(err_best) * sigmoid(SHARPNESS * log(err_2nd / err_best)):
q falls from 1 to 0 as the best error passes ERR_SCALE (blobs, fragments, stretched or merged shapes), the
sigmoid is the confidence that the best class beats the runner-up.

Known limits (found in a review; kept, because changing the detector changes every score
recorded in benchmarks/RESULTS.md, and none of them showed up as reward hacking there: counting never learned):
- No lower size bound. World objects are 12-20 px, but any component of MIN_AREA pixels or more is fitted, so a
  single solid 4x4 token scores as a square at 1.0 (four of them pass "four squares"), and 6 px circles,
  triangles and diamonds pass too. So do the pieces of a partly covered object: a 20 px red triangle whose middle
  a blue circle covers shows two tips of about 5 px, each a red triangle at 1.0, and passes "two triangles" (a
  review found 6 such passes in 4,752 renders of one object under another, 27 after a 4x down-and-up sampling).
  benchmarks/object_counts.py measures the share of such undersized detections in a model's images: 2-13% of the
  confident ones, before and after RL alike (RESULTS.md, "Thirty-third session").
- No upper size bound either: an image filled with one palette colour is one red square of the image's size at
  1.0, so it passes "a photo of a red square".
- "Unknown" pixels (off-palette) are treated as hidden and filled in from the template, so an off-palette blob
  inside a palette-coloured region can fit a shape (a tokenizer of world patches rarely produces one).
- EM_STEPS = 2 stops before the size estimate of a heavily hidden shape converges: a 20 px square with 6 px
  covered scores 0.05, and one clipped 4 px by the border 0.81 (below the counting cut). More steps fix those but
  split a half-red, half-blue circle into two confident circles.
- Same-colour shapes that touch (or are 2 px apart) merge into one component that fits nothing: never counted.

Boxes are the fitted shape's square box (x0, y0, x1, y1) in continuous pixel coordinates (pixel j covers
[j, j + 1), so x1, y1 are exclusive as pixel indices), the same convention as `scene.Box`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from maskfocus.rewards.geneval import Detection, evaluate
from maskfocus.shapes.render import coverage, render_batch
from maskfocus.shapes.scene import scene_for_metadata
from maskfocus.shapes.world import BACKGROUND, COLORS, SHAPES

BACKGROUND_LABEL = -1
UNKNOWN_LABEL = len(COLORS)

RESIDUAL_CUTOFF = 40.0
"""Largest distance (0..255 RGB units) of a pixel from its colour's blend line; farther pixels are unknown."""

MIN_AREA = 12
"""Components with fewer pixels are specks and are ignored."""

FAINT_ALPHA = 0.08
"""Background pixels blended this much with a colour are another object's edge: hidden from other fits."""

ERR_SCALE = 0.06
"""Relative squared error at which the fit quality q is 0.5 (clean renders: < 0.007, noisy ones: < 0.03)."""

ERR_POWER = 4.0
"""Steepness of q = 1 / (1 + (err / ERR_SCALE) ** ERR_POWER)."""

SHARPNESS = 8.0
"""Class confidence = sigmoid(SHARPNESS * log(err_runner_up / err_best))."""

PATCH = 4
"""Patch side of the down-up degradation model (a VQ autoencoder with 4x4 patches)."""

PAD = 2 * PATCH
"""Per-pixel maps are padded by this many hidden pixels (a multiple of PATCH keeps patches aligned)."""

WINDOW_MARGIN = 5
"""Pixels around a component's box that take part in its fit (room for blur tails and growth)."""

EM_STEPS = 2
"""Fill-in steps for hidden pixels (occlusion, border)."""

TEMPLATE_SUPERSAMPLE = 4
"""Sub-pixel samples per pixel side of the fitted templates."""

AREA_FACTOR = {"circle": math.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5}
"""Shape area / size^2."""

CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": 1 / 6, "diamond": 0.0}
"""(centroid y - box centre y) / size; the up-pointing triangle's centroid lies a third of its height low."""

_PALETTE_K3 = np.array(list(COLORS.values()), dtype=np.float64)
_BACKGROUND_3 = np.array(BACKGROUND, dtype=np.float64)
_DIRECTIONS_K3 = _PALETTE_K3 - _BACKGROUND_3


@dataclass(frozen=True)
class ShapeFit:
    """The fit of one component: best shape, its square box, its colour, errors of the two best shapes, score."""

    shape: str
    color: str
    box: tuple[float, float, float, float]
    error: float
    runner_up_error: float
    score: float


def blend_alpha(image: np.ndarray) -> np.ndarray:
    """Blend coefficient of each pixel along each colour's line from the background, float (H, W, K), unclipped."""
    offset_HW3 = image.astype(np.float64) - _BACKGROUND_3
    return offset_HW3 @ _DIRECTIONS_K3.T / (_DIRECTIONS_K3**2).sum(axis=1)


def classify_pixels(image: np.ndarray, residual_cutoff: float = RESIDUAL_CUTOFF) -> tuple[np.ndarray, np.ndarray]:
    """Label each pixel of a uint8 (H, W, 3) image, and find the faint edges of objects in the background.

    Returns labels (palette index, BACKGROUND_LABEL or UNKNOWN_LABEL) and tints (the palette index of background
    pixels that are a FAINT_ALPHA..0.5 blend with one colour, else -1), both int8 (H, W).
    """
    offset_HW3 = image.astype(np.float64) - _BACKGROUND_3
    alpha_HWK = np.clip(blend_alpha(image), 0.0, 1.0)
    residual_HWK = np.linalg.norm(offset_HW3[:, :, None, :] - alpha_HWK[..., None] * _DIRECTIONS_K3, axis=-1)
    best_HW = residual_HWK.argmin(axis=-1)
    best_alpha_HW = np.take_along_axis(alpha_HWK, best_HW[..., None], axis=-1)[..., 0]
    best_residual_HW = np.take_along_axis(residual_HWK, best_HW[..., None], axis=-1)[..., 0]
    labels_HW = np.where(best_alpha_HW < 0.5, BACKGROUND_LABEL, best_HW)
    labels_HW = np.where(best_residual_HW > residual_cutoff, UNKNOWN_LABEL, labels_HW)
    tints_HW = np.where((labels_HW == BACKGROUND_LABEL) & (best_alpha_HW >= FAINT_ALPHA), best_HW, -1)
    return labels_HW.astype(np.int8), tints_HW.astype(np.int8)


def degrade_templates(cov: np.ndarray) -> list[np.ndarray]:
    """The degradation family applied to a template window (patch-aligned, sides multiples of PATCH)."""
    h, w = cov.shape
    patches = cov.reshape(h // PATCH, PATCH, w // PATCH, PATCH).mean(axis=(1, 3))
    return [
        cov,
        ndimage.gaussian_filter(cov, 0.8, mode="constant"),
        ndimage.gaussian_filter(cov, 1.6, mode="constant"),
        ndimage.zoom(patches, PATCH, order=1, mode="nearest", grid_mode=True),
    ]


def fit_quality(error: float) -> float:
    """q in (0, 1]: 1 for a near-exact fit, 0.5 at ERR_SCALE, ~0 for a shape unlike every template."""
    return 1.0 / (1.0 + (error / ERR_SCALE) ** ERR_POWER)


def detection_score(error: float, runner_up_error: float) -> float:
    """Calibrated confidence from the best template's error and the runner-up's."""
    log_ratio = math.log(max(runner_up_error, 1e-9) / max(error, 1e-9))
    return fit_quality(error) / (1.0 + math.exp(-SHARPNESS * log_ratio))


def _window(sl: tuple[slice, slice], shape_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Patch-aligned window (y0, y1, x0, x1) around a component's slices, inside the padded map."""
    y0 = max(sl[0].start - WINDOW_MARGIN, 0) // PATCH * PATCH
    x0 = max(sl[1].start - WINDOW_MARGIN, 0) // PATCH * PATCH
    y1 = min(-(-(sl[0].stop + WINDOW_MARGIN) // PATCH) * PATCH, shape_hw[0])
    x1 = min(-(-(sl[1].stop + WINDOW_MARGIN) // PATCH) * PATCH, shape_hw[1])
    return y0, y1, x0, x1


def _fit_pose(
    shape: str, alpha: np.ndarray, weight: np.ndarray, origin: tuple[int, int]
) -> tuple[tuple[float, float, float], np.ndarray]:
    """Centre and size of ``shape`` from the moments of ``alpha`` over visible pixels, hidden ones filled in (EM).

    ``alpha``/``weight`` are (h, w) over a window whose top-left pixel is ``origin`` = (y0, x0). Returns
    ((cx, cy, size), sharp template coverage (h, w)).
    """
    h, w = alpha.shape
    ys = origin[0] + np.arange(h)[:, None] + 0.5
    xs = origin[1] + np.arange(w)[None, :] + 0.5
    cov = np.zeros_like(alpha)
    for _ in range(EM_STEPS + 1):
        mass_map = alpha * weight + cov * (1 - weight)
        mass = max(float(mass_map.sum()), 1e-6)
        mx, my = float((mass_map * xs).sum()) / mass, float((mass_map * ys).sum()) / mass
        size = math.sqrt(mass / AREA_FACTOR[shape])
        pose = (mx, my - CENTROID_DY[shape] * size, size)
        cov = coverage(shape, *pose, origin[1], origin[0], w, h, supersample=TEMPLATE_SUPERSAMPLE)
        if float((cov * (1 - weight)).sum()) < 0.25:
            break
    return pose, cov


def fit_component(alpha: np.ndarray, weight: np.ndarray, origin: tuple[int, int], color: str) -> ShapeFit:
    """Fit every shape to one component's soft coverage ``alpha`` (h, w) with visibility ``weight`` (h, w)."""
    poses, errors = {}, []
    for shape in SHAPES:
        poses[shape], cov = _fit_pose(shape, alpha, weight, origin)
        errors.append([_relative_error(alpha, t, weight) for t in degrade_templates(cov)])
    errors_SD = np.array(errors)
    # One degradation for all shapes of a component: the one that explains it best.
    column = errors_SD[:, errors_SD.min(axis=0).argmin()]
    order = np.argsort(column)
    best, second = float(column[order[0]]), float(column[order[1]])
    shape = SHAPES[order[0]]
    cx, cy, size = poses[shape]
    box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    return ShapeFit(shape, color, box, best, second, detection_score(best, second))


def _relative_error(alpha: np.ndarray, template: np.ndarray, weight: np.ndarray) -> float:
    visible = template * weight
    return float((((alpha - visible) * weight) ** 2).sum() / max(float((visible**2).sum()), 1e-9))


def _nearest_component(components_HW: np.ndarray) -> np.ndarray:
    """Label of the nearest component for every pixel (a Voronoi partition of the image), int (H, W)."""
    _, (iy_HW, ix_HW) = ndimage.distance_transform_edt(components_HW == 0, return_indices=True)
    return components_HW[iy_HW, ix_HW]


class ShapesDetector:
    """Finds the shapes of a shapes-world image: colour components, each fitted with the four shape templates."""

    def __init__(self, min_area: int = MIN_AREA, residual_cutoff: float = RESIDUAL_CUTOFF) -> None:
        self.min_area = min_area
        self.residual_cutoff = residual_cutoff

    def fit(self, image: np.ndarray) -> list[ShapeFit]:
        """Fits of every component of a uint8 (H, W, 3) image, in colour then label order."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            # a float image in [0, 1] found no shape at all: every reward 0, every group equal, nothing learned
            raise ValueError(f"the shapes detector takes uint8 (H, W, 3) images; got {image.dtype} {image.shape}")
        labels_HW, tints_HW = classify_pixels(image, self.residual_cutoff)
        labels_HW = np.pad(labels_HW, PAD, constant_values=UNKNOWN_LABEL)
        tints_HW = np.pad(tints_HW, PAD, constant_values=-1)
        alpha_HWK = np.pad(np.clip(blend_alpha(image), -0.5, 1.5), ((PAD, PAD), (PAD, PAD), (0, 0)))
        fits = []
        for k, color in enumerate(COLORS):
            components_HW, num_components = ndimage.label(labels_HW == k, structure=np.ones((3, 3), dtype=bool))
            if num_components == 0:
                continue
            nearest_HW = _nearest_component(components_HW)
            visible_HW = (labels_HW == BACKGROUND_LABEL) & ((tints_HW == -1) | (tints_HW == k))
            for index, sl in enumerate(ndimage.find_objects(components_HW), start=1):
                y0, y1, x0, x1 = _window(sl, labels_HW.shape)
                own = components_HW[y0:y1, x0:x1] == index
                if int(own.sum()) < self.min_area:
                    continue
                # Background pixels nearer to another component of the same colour belong to that one.
                background = visible_HW[y0:y1, x0:x1] & (nearest_HW[y0:y1, x0:x1] == index)
                weight = (own | background).astype(np.float64)
                alpha = alpha_HWK[y0:y1, x0:x1, k] * weight
                fits.append(fit_component(alpha, weight, (y0 - PAD, x0 - PAD), color))
        return fits

    def detect(self, image: np.ndarray) -> dict[str, list[Detection]]:
        """Detections of a uint8 (H, W, 3) image by class, best first; every class is a key."""
        detections: dict[str, list[Detection]] = {shape: [] for shape in SHAPES}
        for fit in self.fit(image):
            detections[fit.shape].append(Detection(box=fit.box, score=fit.score, color=fit.color))
        for found in detections.values():
            found.sort(key=lambda d: -d.score)
        return detections

    def detect_batch(self, images: np.ndarray | Sequence[np.ndarray]) -> list[dict[str, list[Detection]]]:
        """Detections of each image of a uint8 batch (N, H, W, 3)."""
        return [self.detect(image) for image in images]


def score_ground_truth(
    rows: Sequence[dict[str, Any]],
    degrade: Callable[[np.ndarray], np.ndarray] | None = None,
    seed: int = 0,
    detector: ShapesDetector | None = None,
) -> dict[str, float]:
    """Fraction of metadata rows judged correct per tag when each row's image is a true render, maybe degraded.

    Each row gets a scene from scene_for_metadata (one rng seeded with ``seed`` for all rows); the renders,
    uint8 (N, H, W, 3), pass through ``degrade`` as one batch (e.g. a VQ autoencoder round trip, or
    `render.down_up`), then are detected and evaluated with the GenEval rules.
    """
    rng = np.random.default_rng(seed)
    images_NHW3 = render_batch([scene_for_metadata(row, rng) for row in rows])
    if degrade is not None:
        images_NHW3 = degrade(images_NHW3)
    detector = detector or ShapesDetector()
    hits: dict[str, list[bool]] = defaultdict(list)
    for row, detections in zip(rows, detector.detect_batch(images_NHW3), strict=True):
        hits[row["tag"]].append(evaluate(detections, row).correct)
    return {tag: float(np.mean(found)) for tag, found in hits.items()}
