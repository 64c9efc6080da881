"""Shared fixtures: a toy MaskedGenerator small enough for exhaustive checks of the sampler's logic."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))  # lets test modules import helpers from tests/support.py

from support import ToyGenerator  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture
def toy_generator() -> ToyGenerator:
    return ToyGenerator()


@pytest.fixture(scope="session")
def tiny_model():
    """The shipped built-in model (loaded once per session)."""
    from maskfocus.models.amused import AmusedGenerator

    return AmusedGenerator.from_folder()
