"""GenEval-style scoring (placeholder: being written)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Detection:
    """One detected object: pixel box (x0, y0, x1, y1), confidence in [0, 1], colour name or None."""

    box: tuple[float, float, float, float]
    score: float
    color: str | None = None
