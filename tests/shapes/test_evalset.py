"""Tests for maskfocus.shapes.evalset: the shipped shapes-geneval file and the ground-truth quality bar."""

from __future__ import annotations

import collections
import json

from maskfocus.rewards.geneval import TAGS, validate_metadata
from maskfocus.shapes.detector import score_ground_truth
from maskfocus.shapes.evalset import PATH, build_eval_set, eval_prompts, load_eval_set
from maskfocus.shapes.prompts import enumerate_prompts
from maskfocus.shapes.render import down_up

ROWS = {"single_object": 100, "two_object": 96, "counting": 96, "colors": 96, "position": 100, "color_attr": 100}
DISTINCT = {"single_object": 4, "two_object": 12, "counting": 12, "colors": 24, "position": 20, "color_attr": 100}


def test_shipped_file_equals_build_eval_set_zero() -> None:
    assert load_eval_set() == build_eval_set(0)
    first = json.loads(PATH.read_text().splitlines()[0])
    assert list(first) == ["tag", "include", "prompt"]


def test_rows_per_tag_and_even_repetition() -> None:
    rows = load_eval_set()
    assert collections.Counter(r["tag"] for r in rows) == ROWS
    for tag in TAGS:
        counts = collections.Counter(r["prompt"] for r in rows if r["tag"] == tag)
        assert len(counts) == DISTINCT[tag]
        assert set(counts.values()) == {ROWS[tag] // DISTINCT[tag]}
        assert set(counts) <= {m["prompt"] for m in enumerate_prompts(tag)}
    relations = collections.Counter(r["include"][1]["position"][0] for r in rows if r["tag"] == "position")
    assert set(relations.values()) == {25}


def test_rows_are_valid_geneval_metadata_and_eval_prompts_match() -> None:
    rows = load_eval_set()
    for row in rows:
        validate_metadata(row)
    assert eval_prompts() == {r["prompt"] for r in rows}


def test_build_is_deterministic_and_seed_changes_the_held_out_prompts() -> None:
    assert build_eval_set(3) == build_eval_set(3)
    held = {r["prompt"] for r in build_eval_set(3) if r["tag"] == "color_attr"}
    assert held != {r["prompt"] for r in build_eval_set(0) if r["tag"] == "color_attr"}


def test_ground_truth_renders_of_the_whole_set_score_above_point_99_per_tag() -> None:
    scores = score_ground_truth(load_eval_set())
    assert set(scores) == set(TAGS)
    assert min(scores.values()) >= 0.99, scores


def test_ground_truth_after_a_4x_down_up_round_trip_scores_above_point_97_per_tag() -> None:
    scores = score_ground_truth(load_eval_set(), degrade=down_up, seed=1)
    assert min(scores.values()) >= 0.97, scores
