"""Tests for maskfocus.rewards.geneval's metadata: parsing and validation of GenEval JSONL records (the real
553 among them), and the strict records of the reward option."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from geneval_helpers import DIRECTIONS, check_consistent, det, real_records, record

from maskfocus.rewards.geneval import (
    TAGS,
    Detection,
    GenEvalResult,
    MetadataError,
    evaluate,
    iter_metadata_lines,
    load_metadata,
    strict_metadata,
    validate_metadata,
)

# ---------------------------------------------------------------------------------------------------------
# Metadata parsing


def perfect_detections(meta: dict[str, Any]) -> dict[str, list[Detection]]:
    """Detections that satisfy every clause: exact counts and colours, boxes placed 60 px along each relation."""
    centres: list[tuple[float, float]] = []
    dets: dict[str, list[Detection]] = {}
    for clause in meta["include"]:
        cx, cy = 500.0, 500.0
        if "position" in clause:
            relation, target = clause["position"]
            dx, dy = DIRECTIONS[relation]
            cx, cy = centres[target][0] + 60 * dx, centres[target][1] + 60 * dy
        centres.append((cx, cy))
        dets.setdefault(clause["class"], []).extend(
            det(cx, cy, score=0.95, color=clause.get("color")) for _ in range(clause["count"])
        )
    return dets


def test_all_real_geneval_lines_parse() -> None:
    records = real_records()
    assert len(records) == 553
    assert {r["tag"] for r in records} == set(TAGS)
    assert sum("position" in c for r in records for c in r["include"]) == 100


def test_real_records_pass_with_perfect_detections_and_fail_with_none() -> None:
    for meta in real_records():
        perfect = evaluate(perfect_detections(meta), meta)
        assert perfect == GenEvalResult(correct=True, score=1.0, reasons=(), graded=1.0), meta
        empty = evaluate({}, meta)
        assert not empty.correct and empty.reasons, meta
        check_consistent(empty)


GOOD_LINE = (
    '{"tag": "position", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}], "prompt": "p"}'
)


@pytest.mark.parametrize(
    ("bad_line", "field"),
    [
        ('{"tag": "counting", "include": [', "malformed JSON"),
        (GOOD_LINE.replace('"position"', '"shapes"'), "tag"),
        (GOOD_LINE.replace('"count": 1}]', '"count": 0}]'), "include[1].count"),
        (GOOD_LINE.replace('"count": 1}]', '"count": true}]'), "include[1].count"),
        (GOOD_LINE.replace('"count": 1}]', '"count": 1, "color": "teal"}]'), "include[1].color"),
        (GOOD_LINE.replace('"count": 1}]', '"count": 1, "position": ["left of", 1]}]'), "include[1].position"),
        (GOOD_LINE.replace('"count": 1}]', '"count": 1, "position": ["near", 0]}]'), "include[1].position"),
        (GOOD_LINE.replace('"count": 1}, {', '"count": 1, "position": ["above", 0]}, {'), "include[0].position"),
        (GOOD_LINE.replace('"count": 1}]', '"count": 1, "size": 3}]'), "include[1]: unknown key(s) 'size'"),
        (GOOD_LINE.replace('"prompt"', '"seed": 1, "prompt"'), "record: unknown key(s) 'seed'"),
        (GOOD_LINE.replace('"prompt": "p"', '"prompt": ""'), "prompt"),
        (
            GOOD_LINE.replace(
                '"include": [', '"exclude": [{"class": "cat", "count": 1, "color": "red"}], "include": ['
            ),
            "exclude[0]: unknown key(s) 'color'",
        ),
        (GOOD_LINE.replace('[{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]', "[]"), "include"),
        # clauses no image could meet, and lines JSON reads loosely
        (
            GOOD_LINE.replace('"count": 1}]', '"count": 17}]'),
            "include[1].count: expected at most 16 (GenEval keeps 16 per class), got 17",
        ),
        (GOOD_LINE.replace('"cat"', '" cat "'), "include[0].class: expected a class name without surrounding spaces"),
        (
            GOOD_LINE.replace('"include": [', '"exclude": [{"class": "dog", "count": 1}], "include": ['),
            "exclude[0].count: forbids 1 or more dog while an include clause asks for 1",
        ),
        (GOOD_LINE.replace('"prompt": "p"', '"prompt": "p", "tag": "colors"'), "key(s) given twice in one object: tag"),
        ("[" * 100_000, "malformed JSON: nested too deeply"),
    ],
)
def test_malformed_line_names_file_line_and_field(tmp_path: Path, bad_line: str, field: str) -> None:
    path = tmp_path / "meta.jsonl"
    path.write_text(f"{GOOD_LINE}\n\n{bad_line}\n{GOOD_LINE}\n")
    with pytest.raises(MetadataError) as info:
        load_metadata(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ")
    assert field in message


def test_a_byte_order_mark_is_skipped_and_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    path = tmp_path / "meta.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_LINE.encode() + b"\n")
    assert load_metadata(path) == list(iter_metadata_lines([GOOD_LINE], "mem"))
    path.write_bytes(GOOD_LINE.replace("cat", "caf\u00e9").encode("latin-1") + b"\n")
    with pytest.raises(MetadataError, match=r"meta.jsonl: not UTF-8 text \(invalid continuation byte\); save it"):
        load_metadata(path)


def test_blank_lines_are_skipped_and_good_lines_round_trip() -> None:
    records = list(iter_metadata_lines(["", GOOD_LINE, "   ", GOOD_LINE], "mem"))
    assert len(records) == 2
    assert records[0]["include"][1] == {"class": "dog", "count": 1}


def test_schema_error_lists_allowed_values() -> None:
    with pytest.raises(MetadataError, match=r"^<metadata>: include\[0\]\.color: expected one of red, orange"):
        validate_metadata({"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "Red"}], "prompt": "p"})


# ---------------------------------------------------------------------------------------------------------
# Strict metadata (reward option): nothing beyond what the prompt asks for

SHAPE_CLASSES = ("circle", "square", "triangle", "diamond")


def test_strict_single_object_caps_its_class_and_forbids_the_others() -> None:
    meta = record("single_object", [{"class": "circle", "count": 1}])
    strict = strict_metadata(meta, SHAPE_CLASSES)
    assert strict["exclude"] == [
        {"class": "circle", "count": 2, "strict": True},
        {"class": "square", "count": 1, "strict": True},
        {"class": "triangle", "count": 1, "strict": True},
        {"class": "diamond", "count": 1, "strict": True},
    ]
    assert "exclude" not in meta  # the input record is left as it was
    one = {"circle": [det(50, 50)]}
    extra = {"circle": [det(50, 50), det(150, 150)], "square": [det(100, 20)]}
    assert evaluate(one, strict).correct and evaluate(extra, meta).correct
    result = evaluate(extra, strict)
    # the include holds; the added excludes are one clause, "nothing else", and it fails (twice over)
    assert not result.correct and result.score == 0.5 and result.graded == 0.5
    assert result.reasons == ("expected circle<2, found 2", "expected square<1, found 1")
    check_consistent(result)


@pytest.mark.parametrize("classes", [SHAPE_CLASSES, tuple(f"class{i}" for i in range(80))])
def test_strict_partial_credit_pays_an_empty_image_half_of_a_correct_one(classes) -> None:
    """Counted one by one, the forbidding clauses outweighed the prompt's: an empty image earned 0.8 of a correct
    one's partial credit with 4 classes, 0.99 with 80."""
    meta = record("single_object", [{"class": "circle", "count": 1}])
    strict = strict_metadata(meta, ("circle", *classes))
    empty, correct = evaluate({}, strict), evaluate({"circle": [det(50, 50)]}, strict)
    assert (empty.score, empty.graded) == (0.5, 0.5) and (correct.score, correct.graded) == (1.0, 1.0)
    hacked = evaluate({"circle": [det(50, 50)], classes[-1]: [det(150, 150)]}, strict)
    assert hacked.score == 0.5 and not hacked.correct
    assert evaluate({}, meta).score == 0.0  # GenEval's own clauses: nothing for an empty image


def test_strict_keeps_a_counting_prompts_own_cap_and_sums_repeated_classes() -> None:
    counting = record("counting", [{"class": "square", "count": 3}], [{"class": "square", "count": 4}])
    assert strict_metadata(counting, SHAPE_CLASSES)["exclude"][:2] == [
        {"class": "square", "count": 4},  # GenEval's own cap: a clause of its own
        {"class": "circle", "count": 1, "strict": True},
    ]
    two_of_one = record("two_object", [{"class": "circle", "count": 1}, {"class": "circle", "count": 1}])
    assert {"class": "circle", "count": 3, "strict": True} in strict_metadata(two_of_one, SHAPE_CLASSES)["exclude"]


def test_strict_real_records_pass_with_exactly_the_asked_objects() -> None:
    for meta in real_records():
        strict = strict_metadata(meta, ["dog", "cat", *{c["class"] for c in meta["include"]}])
        assert evaluate(perfect_detections(meta), strict).correct, meta
        one_more = perfect_detections(meta)
        first = meta["include"][0]["class"]
        one_more[first] = [*one_more[first], det(900, 900, color=meta["include"][0].get("color"))]
        assert not evaluate(one_more, strict).correct, meta
