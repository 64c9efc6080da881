"""Tests for the graded GenEval credit (`GenEvalResult.graded`, reward mode `graded`): a counting clause that
misses earns how close the count came; everything else scores as the partial credit does."""

from __future__ import annotations

import random

import pytest

from maskfocus.config import ConfigError, RewardSpec
from maskfocus.rewards.combined import GenEvalReward, build_rewards
from maskfocus.rewards.geneval import COLORS, Detection, evaluate, exclude_credit, validate_metadata
from maskfocus.rewards.geneval_client import GenEvalClient


def det(cx: float = 100.0, score: float = 0.95, color: str | None = None) -> Detection:
    return Detection(box=(cx - 5, 95.0, cx + 5, 105.0), score=score, color=color)


def counting_record(n: int) -> dict:
    return validate_metadata(
        {
            "tag": "counting",
            "include": [{"class": "circle", "count": n}],
            "exclude": [{"class": "circle", "count": n + 1}],
            "prompt": f"a photo of {n} circles",
        }
    )


def reference_counting_credit(n: int, k: int) -> float:
    """Slow reference, written from the definition: the include clause earns the share of the n objects found,
    the exclude clause (at most n allowed) loses 1/n for each object beyond n; the credit is their mean."""
    include = 1.0 if k >= n else k / n
    exclude = 1.0
    for _ in range(max(k - n, 0)):
        exclude -= 1 / n
    return (include + max(exclude, 0.0)) / 2


@pytest.mark.parametrize("n", [2, 3, 4])
def test_counting_credit_matches_the_reference_and_peaks_at_the_asked_count(n: int) -> None:
    credits = []
    for k in range(0, 3 * n + 1):
        result = evaluate({"circle": [det(cx=20.0 * i) for i in range(k)]}, counting_record(n))
        assert result.graded == pytest.approx(reference_counting_credit(n, k))
        credits.append(result.graded)
    assert credits[n] == 1.0 and max(credits[:n] + credits[n + 1 :]) < 1.0
    below, above = credits[: n + 1], credits[n:]
    assert all(a < b for a, b in zip(below, below[1:], strict=False))  # rises to n
    assert all(a >= b for a, b in zip(above, above[1:], strict=False)) and above[-1] == 0.5  # falls after n
    # Near misses rank above far ones, where the partial credit pays every miss the same half.
    off_by_one = evaluate({"circle": [det(cx=20.0 * i) for i in range(n + 1)]}, counting_record(n))
    assert off_by_one.score == 0.5 and off_by_one.graded == pytest.approx(1 - 1 / (2 * n))


def test_exclude_credit_is_zero_beyond_nothing_allowed_and_one_when_it_holds() -> None:
    assert exclude_credit(0, 1) == 1.0 and exclude_credit(1, 1) == 0.0 and exclude_credit(5, 1) == 0.0
    assert exclude_credit(3, 4) == 1.0 and exclude_credit(4, 4) == pytest.approx(2 / 3)


def test_colour_count_miss_earns_the_share_of_objects_in_the_asked_colour() -> None:
    meta = validate_metadata(
        {"tag": "colors", "include": [{"class": "car", "count": 3, "color": "red"}], "prompt": "a photo"}
    )
    result = evaluate({"car": [det(color="red"), det(color="red"), det(color="blue")]}, meta)
    assert result.score == 0.0 and result.graded == pytest.approx(2 / 3)
    # too few found: still only those of the asked colour earn credit (one blue car earned 1/3 as one red car did)
    assert evaluate({"car": [det(color="blue")]}, meta).graded == 0.0
    assert evaluate({"car": [det(color="red"), det(color="blue")]}, meta).graded == pytest.approx(1 / 3)


def test_graded_equals_partial_when_every_clause_asks_for_one_object() -> None:
    rng = random.Random(5)
    meta = validate_metadata(
        {
            "tag": "position",
            "include": [
                {"class": "cat", "count": 1, "color": "red"},
                {"class": "dog", "count": 1, "position": ["left of", 0]},
            ],
            "exclude": [{"class": "cow", "count": 1}],
            "prompt": "a photo",
        }
    )
    seen = set()
    for _ in range(300):
        dets = {
            name: [
                det(rng.uniform(0, 512), rng.random(), rng.choice([*COLORS[:2], None])) for _ in range(rng.randrange(3))
            ]
            for name in ("cat", "dog", "cow")
        }
        result = evaluate(dets, meta)
        assert result.graded == pytest.approx(result.score)
        assert (result.graded == 1.0) == result.correct
        seen.add(round(result.score, 3))
    assert len(seen) >= 3  # the random detections reach several partial scores, not one


def test_graded_is_never_below_partial_and_is_one_exactly_when_correct() -> None:
    rng = random.Random(9)
    meta = validate_metadata(
        {
            "tag": "counting",
            "include": [{"class": "cat", "count": 3, "color": "red"}, {"class": "dog", "count": 2}],
            "exclude": [{"class": "cat", "count": 4}, {"class": "cow", "count": 2}],
            "prompt": "a photo",
        }
    )
    for _ in range(300):
        dets = {
            name: [det(rng.uniform(0, 512), 0.95, rng.choice(["red", "blue"])) for _ in range(rng.randrange(7))]
            for name in ("cat", "dog", "cow")
        }
        result = evaluate(dets, meta)
        assert result.score - 1e-9 <= result.graded <= 1.0
        assert (result.graded == 1.0) == result.correct


def test_graded_reward_term_scores_rendered_counting_images() -> None:
    from maskfocus.shapes.render import render_batch
    from maskfocus.shapes.scene import Scene, ShapeObject

    def circles(count: int) -> Scene:
        return Scene(tuple(ShapeObject("circle", "red", 10 + 15 * i, 32, 10) for i in range(count)))

    images = render_batch([circles(2), circles(3), circles(4)])
    meta = [{**counting_record(2), "prompt": "a photo of two circles"}] * 3
    specs = [RewardSpec(name="geneval", mode="graded"), RewardSpec(name="geneval", mode="partial")]
    _, parts = build_rewards(specs)(images, meta)
    assert parts["geneval_graded"].tolist() == pytest.approx([1.0, 0.75, 0.5])
    assert parts["geneval_partial"].tolist() == pytest.approx([1.0, 0.5, 0.5])


def test_graded_mode_with_the_http_reward_server_is_refused() -> None:
    with pytest.raises(ConfigError, match="mode graded needs the per-clause counts"):
        GenEvalReward("graded", GenEvalClient("http://127.0.0.1:1"))
