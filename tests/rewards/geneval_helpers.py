"""Detections, records and invariants shared by the GenEval rule tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from maskfocus.rewards.geneval import Detection, GenEvalResult, load_metadata, validate_metadata

REAL_METADATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"

# Unit direction (dx, dy) of each relation in image coordinates (y grows downwards).
DIRECTIONS = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}


def box_at(cx: float, cy: float, size: float = 10.0) -> tuple[float, float, float, float]:
    """Square box of side `size` centred at (cx, cy)."""
    return (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)


def det(cx: float = 100.0, cy: float = 100.0, score: float = 0.95, color: str | None = None) -> Detection:
    return Detection(box=box_at(cx, cy), score=score, color=color)


def record(tag: str, include: list[dict[str, Any]], exclude: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"tag": tag, "include": include, "prompt": "a photo"}
    if exclude is not None:
        meta["exclude"] = exclude
    return validate_metadata(meta)


def check_consistent(result: GenEvalResult) -> None:
    """Invariants: reasons exactly when incorrect; score 1.0 exactly when correct."""
    assert result.correct == (not result.reasons)
    assert result.correct == (result.score == 1.0)
    assert 0.0 <= result.score <= 1.0


def real_records() -> list[dict[str, Any]]:
    if not REAL_METADATA.exists():
        pytest.skip(f"GenEval metadata not found at {REAL_METADATA} (expected the shared/ folder beside the project)")
    return load_metadata(REAL_METADATA)
