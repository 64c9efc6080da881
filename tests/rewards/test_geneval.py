"""Tests for maskfocus.rewards.geneval: GenEval rules, relative position, summaries (metadata: its own file)."""

from __future__ import annotations

import math
import random

import pytest
from geneval_helpers import DIRECTIONS, box_at, check_consistent, det, record

from maskfocus.rewards.geneval import (
    COLORS,
    RELATIONS,
    Thresholds,
    evaluate,
    relative_position,
    summarize,
    validate_metadata,
)

# ---------------------------------------------------------------------------------------------------------
# Thresholds, ordering, cap


def test_half_confidence_detection_counts_for_two_object_but_not_for_counting() -> None:
    dets = {"cat": [det(score=0.5)], "dog": [det(score=0.5)]}
    two = evaluate(dets, record("two_object", [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]))
    counting = evaluate({"cat": [det(score=0.5)] * 2}, record("counting", [{"class": "cat", "count": 2}]))
    assert two.correct
    assert not counting.correct
    assert counting.reasons == ("expected cat>=2, found 0",)


def test_score_threshold_is_strict() -> None:
    meta = record("single_object", [{"class": "cat", "count": 1}])
    assert not evaluate({"cat": [det(score=0.3)]}, meta).correct
    assert evaluate({"cat": [det(score=0.30001)]}, meta).correct
    assert not evaluate({"cat": [det(score=0.35)]}, meta, Thresholds(score=0.4)).correct


def test_first_count_detections_are_the_best_scoring() -> None:
    # Unsorted input: the two red cats score highest, so "two red cats" holds only after sorting best-first.
    dets = {"cat": [det(score=0.5, color="blue"), det(score=0.99, color="red"), det(score=0.8, color="red")]}
    assert evaluate(dets, record("colors", [{"class": "cat", "count": 2, "color": "red"}])).correct
    dets["cat"][0] = det(score=0.999, color="blue")
    assert not evaluate(dets, record("colors", [{"class": "cat", "count": 2, "color": "red"}])).correct


def test_seventeen_detections_pass_exclude_seventeen_because_of_the_cap_of_sixteen() -> None:
    dets = {"cat": [det(score=0.95) for _ in range(17)]}
    meta = record("counting", [{"class": "cat", "count": 1}], [{"class": "cat", "count": 17}])
    assert evaluate(dets, meta).correct
    assert not evaluate(dets, meta, Thresholds(max_per_class=17)).correct
    assert not evaluate(
        dets, record("counting", [{"class": "cat", "count": 1}], [{"class": "cat", "count": 16}])
    ).correct


# ---------------------------------------------------------------------------------------------------------
# Counting, colour, exclude, partial credit


def test_exclude_fails_counting_when_three_found_for_two_asked() -> None:
    meta = record("counting", [{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}])
    assert evaluate({"clock": [det(), det()]}, meta).correct
    three = evaluate({"clock": [det(), det(), det()]}, meta)
    assert not three.correct
    assert three.reasons == ("expected clock<3, found 3",)
    assert three.score == pytest.approx(0.5)


def test_counting_excludes_too_count_only_detections_above_the_counting_threshold() -> None:
    """A third clock at 0.5 is below counting's 0.9: "two clocks" with "fewer than three" holds (at 0.3 it failed)."""
    meta = record("counting", [{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}])
    assert evaluate({"clock": [det(score=0.95), det(score=0.95), det(score=0.5)]}, meta).correct
    assert not evaluate({"clock": [det(score=0.95), det(score=0.95), det(score=0.91)]}, meta).correct


def test_two_red_of_three_fail_when_three_red_required() -> None:
    meta = record("colors", [{"class": "car", "count": 3, "color": "red"}])
    result = evaluate({"car": [det(color="red"), det(color="red"), det(color="blue")]}, meta)
    assert not result.correct
    assert result.reasons == ("expected red car>=3, found 2 red; and 2 red, 1 blue",)
    assert evaluate({"car": [det(color="red")] * 3}, meta).correct


def test_colour_is_checked_only_on_the_first_count_detections() -> None:
    # The second, lower-scoring car is red but only the first (blue) one is checked for count 1.
    dets = {"car": [det(score=0.9, color="blue"), det(score=0.8, color="red")]}
    assert not evaluate(dets, record("colors", [{"class": "car", "count": 1, "color": "red"}])).correct


def test_partial_credit_is_fraction_of_clauses_met() -> None:
    meta = record(
        "color_attr",
        [{"class": "cat", "count": 1, "color": "red"}, {"class": "dog", "count": 1}, {"class": "cow", "count": 1}],
        [{"class": "bird", "count": 1}],
    )
    all_met = {"cat": [det(color="red")], "dog": [det()], "cow": [det()]}
    assert evaluate(all_met, meta).score == 1.0
    assert evaluate({**all_met, "bird": [det()]}, meta).score == pytest.approx(3 / 4)
    assert evaluate({"cat": [det(color="blue")], "dog": [det()]}, meta).score == pytest.approx(2 / 4)
    assert evaluate({"bird": [det()]}, meta).score == 0.0
    assert len(evaluate({"bird": [det()]}, meta).reasons) == 4


def test_reasons_non_empty_exactly_when_incorrect_over_random_detections() -> None:
    rng = random.Random(3)
    meta = record(
        "position",
        [{"class": "cat", "count": 2, "color": "red"}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
        [{"class": "cow", "count": 2}],
    )
    outcomes = set()
    for _ in range(300):
        dets = {
            name: [
                det(rng.uniform(0, 512), rng.uniform(0, 512), rng.random(), rng.choice([*COLORS[:2], None]))
                for _ in range(rng.randrange(4))
            ]
            for name in ("cat", "dog", "cow")
        }
        result = evaluate(dets, meta)
        check_consistent(result)
        assert result.score == pytest.approx(1 - len(result.reasons) / 3)
        outcomes.add(result.correct)
    assert outcomes == {True, False}


# ---------------------------------------------------------------------------------------------------------
# Relative position


def test_centres_closer_than_margin_have_no_relation() -> None:
    # Boxes 10 wide: shrink per axis is 0.1 * (10 + 10) = 2 pixels.
    assert relative_position(box_at(101.9, 98.1), box_at(100, 100)) == frozenset()
    assert relative_position(box_at(100, 100), box_at(100, 100)) == frozenset()
    # Offset 5 shrinks to 3, and 3 / 5 > 0.5; with a margin of 0.3 (shrink 6) nothing is left.
    assert relative_position(box_at(105, 100), box_at(100, 100)) == {"right of"}
    assert relative_position(box_at(105, 100), box_at(100, 100), margin=0.3) == frozenset()
    # Offset 3 shrinks to 1, and 1 / 3 < 0.5: no relation even though the shrunk offset is non-zero.
    assert relative_position(box_at(103, 100), box_at(100, 100)) == frozenset()


@pytest.mark.parametrize("relation", RELATIONS)
def test_clear_offset_gives_its_single_relation(relation: str) -> None:
    dx, dy = DIRECTIONS[relation]
    assert relative_position(box_at(100 + 50 * dx, 100 + 50 * dy), box_at(100, 100)) == {relation}


def test_diagonal_offset_gives_two_relations() -> None:
    assert relative_position(box_at(50, 50), box_at(100, 100)) == {"left of", "above"}
    assert relative_position(box_at(150, 150), box_at(100, 100)) == {"right of", "below"}


def reference_relative_position(a: tuple[float, ...], b: tuple[float, ...], margin: float) -> set[str]:
    """Slow, literal transcription of SOURCE.md, one axis at a time."""
    shrunk = []
    for axis in (0, 1):
        centre_a = (a[axis] + a[axis + 2]) / 2
        centre_b = (b[axis] + b[axis + 2]) / 2
        offset = centre_a - centre_b
        shrink = margin * (abs(a[axis + 2] - a[axis]) + abs(b[axis + 2] - b[axis]))
        if offset > shrink:
            shrunk.append(offset - shrink)
        elif offset < -shrink:
            shrunk.append(offset + shrink)
        else:
            shrunk.append(0.0)
    if abs(shrunk[0]) < 1e-3 and abs(shrunk[1]) < 1e-3:
        return set()
    ox = (a[0] + a[2]) / 2 - (b[0] + b[2]) / 2
    oy = (a[1] + a[3]) / 2 - (b[1] + b[3]) / 2
    length = math.sqrt(ox * ox + oy * oy)
    dx, dy = shrunk[0] / length, shrunk[1] / length
    names = [("left of", dx < -0.5), ("right of", dx > 0.5), ("above", dy < -0.5), ("below", dy > 0.5)]
    return {name for name, holds in names if holds}


def random_box(rng: random.Random, integer: bool) -> tuple[float, float, float, float]:
    pick = (lambda lo, hi: float(rng.randint(lo, hi))) if integer else rng.uniform
    x0, y0 = pick(0, 60), pick(0, 60)
    return (x0, y0, x0 + pick(0, 30), y0 + pick(0, 30))


@pytest.mark.parametrize("seed", range(4))
def test_relative_position_matches_slow_reference_on_random_boxes(seed: int) -> None:
    rng = random.Random(seed)
    seen = set()
    for _ in range(2000):
        integer = rng.random() < 0.5
        a, b = random_box(rng, integer), random_box(rng, integer)
        margin = rng.choice([0.0, 0.1, 0.25])
        got = relative_position(a, b, margin)
        assert got == reference_relative_position(a, b, margin), (a, b, margin)
        seen.add(got)
    assert frozenset() in seen and frozenset({"left of", "above"}) in seen and frozenset({"right of"}) in seen


def test_relative_position_is_mirrored_when_boxes_swap() -> None:
    mirror = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    rng = random.Random(11)
    for _ in range(1000):
        a, b = random_box(rng, False), random_box(rng, False)
        assert relative_position(b, a) == {mirror[r] for r in relative_position(a, b)}


# ---------------------------------------------------------------------------------------------------------
# Position clauses


POSITION_META = {
    "tag": "position",
    "include": [{"class": "teddy bear", "count": 1}, {"class": "dog", "count": 1, "position": ["right of", 0]}],
    "prompt": "a photo of a dog right of a teddy bear",
}


def test_position_clause_holds_or_fails_on_geometry() -> None:
    meta = validate_metadata(POSITION_META)
    assert evaluate({"teddy bear": [det(100, 100)], "dog": [det(200, 100)]}, meta).correct
    wrong = evaluate({"teddy bear": [det(100, 100)], "dog": [det(0, 100)]}, meta)
    assert wrong.reasons == ("expected dog right of target, found left of target",)
    close = evaluate({"teddy bear": [det(100, 100)], "dog": [det(101, 100)]}, meta)
    assert close.reasons == ("expected dog right of target, found no relation to target",)


def test_position_fails_with_no_target_when_target_clause_failed() -> None:
    meta = validate_metadata(POSITION_META)
    result = evaluate({"dog": [det(200, 100)]}, meta)
    assert not result.correct
    assert result.reasons == ("expected teddy bear>=1, found 0", "no target for dog to be right of")
    assert result.score == 0.0


def test_position_must_hold_against_every_target_object() -> None:
    meta = record("position", [{"class": "cat", "count": 2}, {"class": "dog", "count": 1, "position": ["above", 0]}])
    assert evaluate({"cat": [det(100, 200), det(150, 200)], "dog": [det(125, 50)]}, meta).correct
    assert not evaluate({"cat": [det(100, 200), det(150, 20)], "dog": [det(125, 50)]}, meta).correct


def test_position_must_hold_for_every_object_of_the_clause() -> None:
    """Two dogs above one cat: the second dog, beside the cat, fails the clause (not only the first is checked)."""
    meta = record("position", [{"class": "cat", "count": 1}, {"class": "dog", "count": 2, "position": ["above", 0]}])
    assert evaluate({"cat": [det(125, 200)], "dog": [det(100, 50), det(150, 50)]}, meta).correct
    beside = evaluate({"cat": [det(125, 200)], "dog": [det(100, 50, score=0.9), det(250, 200, score=0.8)]}, meta)
    assert beside.reasons == ("expected dog above target, found right of target",)


def test_a_shrunk_offset_of_exactly_half_its_length_is_no_relation() -> None:
    """The cut-offs are strict: boxes 10 apart, each 25 wide, shrink the 10 to 5, half the offset's length 10."""
    assert relative_position(box_at(110, 100, 25), box_at(100, 100, 25)) == frozenset()
    assert relative_position(box_at(110.01, 100, 25), box_at(100, 100, 25)) == frozenset({"right of"})
    assert relative_position(box_at(100, 90, 25), box_at(100, 100, 25)) == frozenset()
    assert relative_position(box_at(100, 89.99, 25), box_at(100, 100, 25)) == frozenset({"above"})


# ---------------------------------------------------------------------------------------------------------
# Summaries


def test_summarize_averages_per_tag_fractions_in_tag_order() -> None:
    summary = summarize([("counting", True), ("single_object", True), ("single_object", False), ("counting", True)])
    assert list(summary["tags"]) == ["single_object", "counting"]
    assert summary["tags"] == {"single_object": 0.5, "counting": 1.0}
    assert summary["overall"] == pytest.approx(0.75)
    assert summary["num_images"] == 4
    with pytest.raises(ValueError, match="unknown GenEval tag"):
        summarize([("nope", True)])
    assert "num_unscored" not in summary


def test_overall_is_the_mean_of_the_tags_not_of_the_images() -> None:
    """GenEval's overall weighs every tag alike: one correct counting image of one, three of four single objects
    wrong give (1/4 + 1) / 2 = 0.625, not the images' 2/5."""
    records = [("single_object", True), *[("single_object", False)] * 3, ("counting", True)]
    summary = summarize(records)
    assert summary["tags"] == {"single_object": 0.25, "counting": 1.0}
    assert summary["overall"] == pytest.approx(0.625)
    assert summary["num_images"] == 5


def test_images_the_judge_could_not_score_are_left_out_and_counted() -> None:
    from types import SimpleNamespace

    from maskfocus.evaluation import EvalJob, score_images
    from maskfocus.evaluation_output import format_table
    from maskfocus.rewards.geneval import GenEvalResult

    rows = [{"tag": "colors", "prompt": "a red circle", "include": [{"class": "circle", "count": 1}]}]
    results = [GenEvalResult(True, 1.0, ()), GenEvalResult(False, math.nan, ("the reward server returned no score",))]
    judge = SimpleNamespace(judge=lambda images, metadata: results)
    records = score_images(rows, [EvalJob(0, 0, "a red circle"), EvalJob(0, 1, "a red circle")], None, judge)
    assert [(r["correct"], r["score"]) for r in records] == [(True, 1.0), (None, None)]
    summary = summarize((r["tag"], r["correct"]) for r in records)
    assert summary == {"overall": 1.0, "tags": {"colors": 1.0}, "num_images": 1, "num_unscored": 1}
    assert format_table(summary).endswith("1 images (1 more the judge could not score: left out)")
    assert "overall         1.000  (the 1 tag scored here, not the mean of all 6; --limit" in format_table(summary)
    two_tags = {**summary, "tags": {"colors": 1.0, "counting": 0.5}}
    assert "(the mean of the 2 tags scored here, not the mean of all 6;" in format_table(two_tags)
    with pytest.raises(ValueError, match=r"at least one scored .* \(2 unscored\)"):
        summarize([("colors", None), ("colors", None)])
