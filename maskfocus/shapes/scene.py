"""Scenes of the shapes world: objects with a shape, a colour, a centre and a size; random and prompt-true scenes.

Coordinates are continuous pixel units: pixel (i, j) covers [j, j + 1) x [i, i + 1), x grows to the right and y
downwards. A box is (x0, y0, x1, y1) with x1 = x0 + width (the right edge, so "exclusive" for pixel indices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from maskfocus.rewards.geneval import is_int
from maskfocus.shapes.world import (
    COLORS,
    GRID,
    IMAGE_SIZE,
    MARGIN,
    MAX_OBJECTS,
    MIN_GAP,
    RELATIONS,
    SHAPES,
    SIZES,
)

Box = tuple[float, float, float, float]

POSITION_SHRINK = 0.1
"""GenEval's relative-position margin: each offset axis shrinks by this fraction of the two boxes' extents."""

COMFORT = 0.8
"""A prompt-true scene puts a required relation's normalised offset component beyond this (GenEval needs 0.5)."""

MAX_TRIES = 2000
"""Placement attempts before a scene is declared impossible."""


@dataclass(frozen=True)
class ShapeObject:
    """One object: shape class, colour name, centre (cx, cy) and size (bounding box side), in pixels."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    @property
    def box(self) -> Box:
        """Bounding box (x0, y0, x1, y1)."""
        half = self.size / 2
        return (self.cx - half, self.cy - half, self.cx + half, self.cy + half)


@dataclass(frozen=True)
class Scene:
    """An ordered tuple of objects; later objects are drawn on top of earlier ones."""

    objects: tuple[ShapeObject, ...]

    def box_of(self, i: int) -> Box:
        """Bounding box of object ``i``."""
        return self.objects[i].box

    def of_shape(self, shape: str) -> list[ShapeObject]:
        """Objects of one shape class, in drawing order."""
        return [obj for obj in self.objects if obj.shape == shape]


def relative_offset(box_a: Box, box_b: Box) -> tuple[float, float] | None:
    """GenEval's normalised offset (dx, dy) of A relative to B, or None when the boxes are too close to relate.

    offset = centre(A) - centre(B); each axis shrinks towards 0 by 0.1 * (extent of A + extent of B), not past 0;
    the result is divided by |offset|.
    """
    offset = ((box_a[0] + box_a[2] - box_b[0] - box_b[2]) / 2, (box_a[1] + box_a[3] - box_b[1] - box_b[3]) / 2)
    extents = (box_a[2] - box_a[0] + box_b[2] - box_b[0], box_a[3] - box_a[1] + box_b[3] - box_b[1])
    shrunk = [math.copysign(max(abs(o) - POSITION_SHRINK * e, 0.0), o) for o, e in zip(offset, extents, strict=True)]
    if all(abs(s) < 1e-3 for s in shrunk):
        return None
    norm = math.hypot(*offset)
    return (shrunk[0] / norm, shrunk[1] / norm)


def relation_strength(box_a: Box, box_b: Box, relation: str) -> float:
    """How far A stands in ``relation`` to B: the normalised offset component along the relation's direction.

    GenEval's rule holds when this exceeds 0.5; 0.0 when the boxes are too close to relate.
    """
    offset = relative_offset(box_a, box_b)
    if offset is None:
        return 0.0
    dx, dy = offset
    return {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[relation]


def relations(box_a: Box, box_b: Box) -> set[str]:
    """Every GenEval relation that A stands in to B."""
    return {rel for rel in RELATIONS if relation_strength(box_a, box_b, rel) > 0.5}


def boxes_apart(box_a: Box, box_b: Box, gap: float = MIN_GAP) -> bool:
    """True when the two boxes are separated by at least ``gap`` pixels along x or along y."""
    return (
        box_a[2] + gap <= box_b[0]
        or box_b[2] + gap <= box_a[0]
        or box_a[3] + gap <= box_b[1]
        or box_b[3] + gap <= box_a[1]
    )


def _random_centre(rng: np.random.Generator, size: float) -> tuple[float, float]:
    """A centre whose box corner lies on the GRID, at least MARGIN from every border."""
    first, last = int(MARGIN) // GRID, int(IMAGE_SIZE - MARGIN - size) // GRID
    corner_x, corner_y = rng.integers(first, last + 1, size=2) * GRID
    return float(corner_x + size / 2), float(corner_y + size / 2)


def _random_size(rng: np.random.Generator, sizes: tuple[float, ...] = SIZES) -> float:
    return float(sizes[rng.integers(len(sizes))])


def _place(
    rng: np.random.Generator, specs: list[tuple[str, str, float]], tries: int = 50
) -> tuple[ShapeObject, ...] | None:
    """Place (shape, colour, size) specs one by one at random non-overlapping centres; None when one won't fit."""
    placed: list[ShapeObject] = []
    for shape, color, size in specs:
        for _ in range(tries):
            obj = ShapeObject(shape, color, *_random_centre(rng, size), size)
            if all(boxes_apart(obj.box, other.box) for other in placed):
                placed.append(obj)
                break
        else:
            return None
    return tuple(placed)


def random_scene(rng: np.random.Generator, num_objects: int | None = None, sizes: tuple[float, ...] = SIZES) -> Scene:
    """A random scene of ``num_objects`` (default: uniform in 1..4) non-overlapping objects.

    Shapes and colours are uniform and independent, sizes uniform over ``sizes`` (a subset of SIZES), box corners on
    the GRID; every box keeps MARGIN pixels from the border and MIN_GAP pixels from every other box.
    """
    if not sizes or any(size not in SIZES for size in sizes):
        raise ValueError(f"sizes must be a non-empty subset of {SIZES}, got {sizes}")
    if num_objects is None:
        num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    if not 0 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"num_objects must be in 0..{MAX_OBJECTS}, got {num_objects}")
    for _ in range(MAX_TRIES):
        specs = [(_random_shape(rng), _random_color(rng), _random_size(rng, sizes)) for _ in range(num_objects)]
        objects = _place(rng, specs)
        if objects is not None:
            return Scene(objects)
    raise RuntimeError("could not place a random scene")  # pragma: no cover - 4 objects always fit


def _random_shape(rng: np.random.Generator) -> str:
    return SHAPES[rng.integers(len(SHAPES))]


def _random_color(rng: np.random.Generator) -> str:
    names = list(COLORS)
    return names[rng.integers(len(names))]


def _check_clause(clause: Any, where: str, num_include: int) -> None:
    """Raise ValueError unless ``clause`` is a clause this world can draw."""
    if not isinstance(clause, dict) or "class" not in clause:
        raise ValueError(f"{where}: expected a dict with a 'class', got {clause!r}")
    if clause["class"] not in SHAPES:
        raise ValueError(f"{where}: class {clause['class']!r} is not a shape of this world {SHAPES}")
    if not is_int(clause.get("count", 1)) or clause.get("count", 1) < 1:
        raise ValueError(f"{where}: count must be a positive int, got {clause.get('count')!r}")
    if "color" in clause and clause["color"] not in COLORS:
        raise ValueError(f"{where}: color {clause['color']!r} is not one of {tuple(COLORS)}")
    if "position" in clause:
        position = clause["position"]
        rel, index = position if isinstance(position, (list, tuple)) and len(position) == 2 else (None, None)
        if rel not in RELATIONS or not is_int(index) or not 0 <= index < num_include:
            raise ValueError(
                f"{where}: position must be [one of {RELATIONS}, index of an earlier include clause], got {position!r}"
            )


def validate_world_metadata(metadata: dict[str, Any]) -> None:
    """Raise ValueError, naming the record's prompt, unless a GenEval metadata record only uses this world's
    classes, colours and relations."""
    try:
        _check_world_metadata(metadata)
    except ValueError as error:
        raise ValueError(f"metadata of {metadata.get('prompt', '(no prompt)')!r}: {error}") from None


def _check_world_metadata(metadata: dict[str, Any]) -> None:
    include = metadata.get("include")
    if not isinstance(include, list) or not include:
        raise ValueError(f"metadata needs a non-empty 'include' list, got {include!r}")
    for j, clause in enumerate(include):
        _check_clause(clause, f"include[{j}]", j)  # as GenEval's rules: a position names an earlier clause
    for j, clause in enumerate(metadata.get("exclude", [])):
        _check_clause(clause, f"exclude[{j}]", len(include))
        needed = sum(c.get("count", 1) for c in include if c["class"] == clause["class"])
        count = clause.get("count", 1)
        if needed >= count:
            raise ValueError(f"exclude[{j}] forbids {clause['class']!r} x{count} but include needs {needed}")


def _satisfies_positions(objects: tuple[ShapeObject, ...], clause_of: list[int], include: list[dict]) -> bool:
    """Every object of a clause with ``position: [rel, i]`` stands comfortably in ``rel`` to every object of i."""
    for j, clause in enumerate(include):
        if "position" not in clause:
            continue
        rel, i = clause["position"]
        for a, ca in zip(objects, clause_of, strict=True):
            for b, cb in zip(objects, clause_of, strict=True):
                if ca == j and cb == i and relation_strength(a.box, b.box, rel) < COMFORT:
                    return False
    return True


def scene_for_metadata(metadata: dict[str, Any], rng: np.random.Generator) -> Scene:
    """A ground-truth scene that satisfies a GenEval metadata record.

    Exactly the included objects are drawn (so every exclude clause holds): ``count`` objects per include clause,
    in the clause's colour or a random one, at random sizes on the GRID; relations hold comfortably (normalised
    component >= COMFORT), objects keep MIN_GAP apart.
    Raises ValueError for classes/colours/relations outside the world.
    """
    validate_world_metadata(metadata)
    include = metadata["include"]
    clause_of = [j for j, clause in enumerate(include) for _ in range(clause.get("count", 1))]
    for _ in range(MAX_TRIES):
        specs = [
            (include[j]["class"], include[j].get("color") or _random_color(rng), _random_size(rng)) for j in clause_of
        ]
        objects = _place(rng, specs)
        if objects is not None and _satisfies_positions(objects, clause_of, include):
            return Scene(objects)
    raise ValueError(f"could not place a scene for {metadata.get('prompt', metadata)!r}")
