"""benchmarks/failure_reasons.py: per-row success counts and failed clauses, against judging image by image."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from support import load_benchmark, run_benchmark_cli

from maskfocus.config import GenEvalDetectorConfig, SamplerConfig
from maskfocus.evaluation import expand_jobs, generate_batches, load_rows
from maskfocus.rewards.judges import build_judge


def test_counts_match_judging_each_image_alone(tiny_model):
    module = load_benchmark("failure_reasons")
    rows = [row for row in load_rows("shapes-geneval") if row["tag"] in ("counting", "position")][:3]
    sampler = SamplerConfig(num_steps=4, batch_size=4)
    judge = build_judge(GenEvalDetectorConfig())
    correct, reasons = module.judge_rows(tiny_model, sampler, judge, rows, 3, seed=5)
    expected_correct: Counter = Counter()
    expected_reasons: Counter = Counter()
    for chunk, images in generate_batches(tiny_model, expand_jobs(rows, 3), sampler, 5):
        for job, image in zip(chunk, images, strict=True):
            (result,) = judge.judge(image[None], [rows[job.row_index]])
            expected_correct[job.row_index] += result.correct
            for reason in result.reasons:
                expected_reasons[(rows[job.row_index]["tag"], re.sub(r"\d+", "N", reason))] += 1
    assert correct == expected_correct and reasons == expected_reasons
    assert sum(reasons.values()) > 0  # the untrained tiny model fails some clauses, so the tally is exercised
    assert all(not any(ch.isdigit() for ch in reason) for _, reason in reasons)


@pytest.mark.parametrize("option", ["--images", "--top"])
def test_counts_below_one_are_argument_errors(monkeypatch, capsys, option):
    """`--images 0` was a ZeroDivisionError after the sampling."""
    with pytest.raises(SystemExit):
        run_benchmark_cli(load_benchmark("failure_reasons"), ["builtin:shapes-tiny", option, "0"], monkeypatch)
    assert f"argument {option}: must be >= 1, got 0" in capsys.readouterr().err
