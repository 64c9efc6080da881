"""benchmarks/ablation.py: the `--jobs VARIANT:SEED` parser and its errors."""

from __future__ import annotations

import argparse

import pytest
from support import load_benchmark


@pytest.fixture(scope="module")
def ablation():
    return load_benchmark("ablation")


def test_jobs_parse_into_variant_and_seed(ablation):
    assert ablation.parse_job("random:2") == ("random", 2)
    assert ablation.parse_job("critical_remask_trajectory:0") == ("critical_remask_trajectory", 0)


@pytest.mark.parametrize("text", ["bogus:1", "random", "random:", "random:two", ":1"])
def test_bad_jobs_name_what_is_allowed(ablation, text):
    with pytest.raises(argparse.ArgumentTypeError, match="VARIANT:SEED") as caught:
        ablation.parse_job(text)
    assert "critical_no_router" in str(caught.value) and repr(text) in str(caught.value)
