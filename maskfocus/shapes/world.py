"""Constants of the shapes world: image size, shape classes, palette, number words, object sizes.

The shapes world is a small, fully verifiable stand-in for text-to-image generation: four shape classes in six
GenEval colour names on a plain light grey background, small enough to train and evaluate a tiny masked image
generator on a CPU, and scored with the GenEval rules by an exact, training-free detector.
"""

from __future__ import annotations

IMAGE_SIZE = 64
"""Side of every image, in pixels."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
"""Shape classes. The triangle points up (flat base at the bottom); the diamond is a square rotated 45 degrees.
Every shape's bounding box is a square whose side is the object's ``size``."""

PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "diamond": "diamonds"}
"""Plural form of each shape name."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 35),
    "orange": (250, 135, 10),
    "yellow": (245, 225, 20),
    "green": (35, 160, 55),
    "blue": (25, 75, 225),
    "purple": (145, 35, 175),
}
"""Palette (ordered): six GenEval colour names to saturated, well separated RGB values."""

BACKGROUND: tuple[int, int, int] = (200, 200, 200)
"""Plain light grey background."""

NUMBER_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
"""Counts a prompt or caption can name, to their words."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
"""GenEval relative positions."""

OPPOSITE_RELATION: dict[str, str] = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
"""Each relation's mirror image."""

GRID = 4
"""Object boxes sit on this pixel grid (the VQ tokenizer's patch side): corners and sizes are multiples of it, so
every token of a scene is either plain background, solid colour, or one of a few fixed edge patterns per
(shape, size). This keeps the token distribution small enough for a tiny generator to learn on a CPU."""

SIZES: tuple[float, ...] = (12.0, 16.0, 20.0)
"""Object sizes (bounding box side), in pixels: multiples of GRID."""

SIZE_MIN = min(SIZES)
"""Smallest object size, in pixels."""

SIZE_MAX = max(SIZES)
"""Largest object size, in pixels."""

MARGIN = 4.0
"""Minimum distance between an object's bounding box and the image border, in pixels."""

MIN_GAP = 4.0
"""Minimum gap between the bounding boxes of two objects of a scene, in pixels (keeps same-colour objects apart
even after a blur or a 4x down-and-up sampling)."""

MAX_OBJECTS = 4
"""Most objects in a random scene."""


def article(word: str) -> str:
    """Indefinite article for ``word`` ("an" before a vowel letter, else "a")."""
    return "an" if word[:1] in "aeiou" else "a"
