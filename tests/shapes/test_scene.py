"""Tests for maskfocus.shapes.scene: non-overlap invariants, prompt-true scenes, GenEval geometry."""

from __future__ import annotations

import numpy as np
import pytest

from maskfocus.rewards.geneval import relative_position
from maskfocus.shapes.evalset import load_eval_set
from maskfocus.shapes.scene import (
    Scene,
    ShapeObject,
    random_scene,
    relation_strength,
    relations,
    scene_for_metadata,
)
from maskfocus.shapes.world import COLORS, IMAGE_SIZE, MARGIN, MAX_OBJECTS, MIN_GAP, SHAPES, SIZE_MAX, SIZE_MIN


def gap_between(a: ShapeObject, b: ShapeObject) -> float:
    """Slow reference: the larger of the x and y gaps between two boxes (negative when they overlap)."""
    ax0, ay0, ax1, ay1 = a.box
    bx0, by0, bx1, by1 = b.box
    return max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1)


def check_layout(scene: Scene) -> None:
    """Every object valid, inside the image with MARGIN, and MIN_GAP away from every other object."""
    for obj in scene.objects:
        assert obj.shape in SHAPES and obj.color in COLORS
        assert SIZE_MIN <= obj.size <= SIZE_MAX
        x0, y0, x1, y1 = obj.box
        assert min(x0, y0) >= MARGIN - 1e-9 and max(x1, y1) <= IMAGE_SIZE - MARGIN + 1e-9
    for i, a in enumerate(scene.objects):
        for b in scene.objects[i + 1 :]:
            assert gap_between(a, b) >= MIN_GAP - 1e-9


def test_random_scenes_never_overlap_and_stay_inside_over_many_seeds() -> None:
    for seed in range(300):
        scene = random_scene(np.random.default_rng(seed))
        assert 1 <= len(scene.objects) <= MAX_OBJECTS
        check_layout(scene)


def test_random_scene_honours_num_objects_and_is_deterministic() -> None:
    for n in range(MAX_OBJECTS + 1):
        assert len(random_scene(np.random.default_rng(n), n).objects) == n
    assert random_scene(np.random.default_rng(7)) == random_scene(np.random.default_rng(7))
    with pytest.raises(ValueError, match="num_objects"):
        random_scene(np.random.default_rng(0), MAX_OBJECTS + 1)


def test_random_scene_draws_only_the_requested_sizes() -> None:
    rng = np.random.default_rng(0)
    drawn = {obj.size for _ in range(200) for obj in random_scene(rng, sizes=(16.0,)).objects}
    assert drawn == {16.0}
    drawn = {obj.size for _ in range(200) for obj in random_scene(rng).objects}
    assert drawn == {12.0, 16.0, 20.0}
    for bad in ((), (15.0,), (16.0, 24.0)):
        with pytest.raises(ValueError, match="sizes must be a non-empty subset"):
            random_scene(rng, sizes=bad)


def test_box_of_is_the_centred_square_box() -> None:
    scene = Scene((ShapeObject("circle", "red", 10.0, 20.0, 12.0),))
    assert scene.box_of(0) == (4.0, 14.0, 16.0, 26.0)


def test_relations_agree_with_the_geneval_reference_on_random_boxes() -> None:
    rng = np.random.default_rng(0)

    def random_box() -> tuple[float, float, float, float]:
        (x0, x1), (y0, y1) = np.sort(rng.uniform(0, 64, 2)), np.sort(rng.uniform(0, 64, 2))
        return (float(x0), float(y0), float(x1), float(y1))

    for _ in range(2000):
        a, b = random_box(), random_box()
        assert relations(a, b) == set(relative_position(a, b))


def test_relation_strength_is_signed_along_each_axis() -> None:
    left, right = (0.0, 0.0, 10.0, 10.0), (30.0, 0.0, 40.0, 10.0)
    assert relation_strength(left, right, "left of") == pytest.approx(1 - 0.1 * 20 / 30)
    assert relation_strength(left, right, "right of") < 0 and relation_strength(left, right, "above") == 0
    assert relations(left, left) == set()


def count_in(scene: Scene, clause: dict) -> list[ShapeObject]:
    return [o for o in scene.objects if o.shape == clause["class"]]


def test_scene_for_metadata_satisfies_every_eval_row_by_its_own_geometry() -> None:
    rng = np.random.default_rng(0)
    for row in load_eval_set():
        scene = scene_for_metadata(row, rng)
        check_layout(scene)
        needed = {}
        for clause in row["include"]:
            needed[clause["class"]] = needed.get(clause["class"], 0) + clause["count"]
        assert {s: len(count_in(scene, {"class": s})) for s in needed} == needed
        assert len(scene.objects) == sum(needed.values())
        for clause in row["include"]:
            if "color" in clause:
                assert all(o.color == clause["color"] for o in count_in(scene, clause))
            if "position" in clause:
                relation, target = clause["position"]
                for a in count_in(scene, clause):
                    for b in count_in(scene, row["include"][target]):
                        assert relation in relative_position(a.box, b.box)
                        assert relation_strength(a.box, b.box, relation) >= 0.8
        for clause in row.get("exclude", []):
            assert len(count_in(scene, clause)) < clause["count"]


def test_scene_for_metadata_picks_varied_colours_when_none_is_asked() -> None:
    rng = np.random.default_rng(0)
    meta = {"tag": "counting", "include": [{"class": "square", "count": 4}], "prompt": "a photo of four squares"}
    colours = {o.color for _ in range(20) for o in scene_for_metadata(meta, rng).objects}
    assert len(colours) >= 4


@pytest.mark.parametrize(
    ("clause", "match"),
    [
        ({"class": "dog", "count": 1}, "not a shape"),
        ({"class": "circle", "count": 1, "color": "pink"}, "not one of"),
        ({"class": "circle", "count": 0}, "positive"),
        ({"class": "circle", "count": True}, r"^metadata of 'p': include\[1\]: count must be a positive int, got True"),
        ({"class": "circle", "count": 1, "position": ["left of", False]}, "index of an earlier include clause"),
        ({"class": "circle", "count": 1, "position": ["near", 0]}, "position"),
        ({"class": "circle", "count": 1, "position": "left of"}, r"position must be .* got 'left of'"),
        ({"class": "circle", "count": 1, "position": ["left of", 1]}, "index of an earlier include clause"),
        ({"class": "circle", "count": 1, "position": ["left of", 2]}, "index of an earlier include clause"),
    ],
)
def test_scene_for_metadata_rejects_what_the_world_cannot_draw(clause: dict, match: str) -> None:
    meta = {"tag": "x", "include": [{"class": "square", "count": 1}, clause], "prompt": "p"}
    with pytest.raises(ValueError, match=match):
        scene_for_metadata(meta, np.random.default_rng(0))


def test_scene_for_metadata_rejects_contradicting_exclude_and_foreign_exclude() -> None:
    rng = np.random.default_rng(0)
    include = [{"class": "circle", "count": 2}]
    with pytest.raises(ValueError, match="forbids"):
        scene_for_metadata({"include": include, "exclude": [{"class": "circle", "count": 2}]}, rng)
    with pytest.raises(ValueError, match=r"forbids 'circle' x1 but include needs 2"):  # count 1 by default
        scene_for_metadata({"include": include, "exclude": [{"class": "circle"}]}, rng)
    forward = [{"class": "circle", "count": 1, "position": ["left of", 1]}, {"class": "square", "count": 1}]
    with pytest.raises(ValueError, match=r"include\[0\]: position must be .* earlier include clause"):
        scene_for_metadata({"include": forward}, rng)
    with pytest.raises(ValueError, match="not a shape"):
        scene_for_metadata({"include": include, "exclude": [{"class": "cat", "count": 1}]}, rng)
    with pytest.raises(ValueError, match="include"):
        scene_for_metadata({"include": []}, rng)
