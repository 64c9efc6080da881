"""Fixtures: tiny random aMUSEd and Meissonic folders (built by model_folders.py), and copies to break."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from model_folders import write_amused_folder, write_meissonic_folder


@pytest.fixture(scope="session")
def amused_folder(tmp_path_factory) -> Path:
    return write_amused_folder(tmp_path_factory.mktemp("amused") / "model")


@pytest.fixture(scope="session")
def meissonic_folder(tmp_path_factory) -> Path:
    return write_meissonic_folder(tmp_path_factory.mktemp("meissonic") / "model")


@pytest.fixture
def amused_copy(amused_folder, tmp_path) -> Path:
    """A copy to break."""
    return Path(shutil.copytree(amused_folder, tmp_path / "model"))


@pytest.fixture
def meissonic_copy(meissonic_folder, tmp_path) -> Path:
    """A copy to break (the sentinel of an earlier import removed)."""
    target = Path(shutil.copytree(meissonic_folder, tmp_path / "model"))
    (target / "transformer" / "IMPORTED").unlink(missing_ok=True)
    return target
