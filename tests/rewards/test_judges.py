"""Tests for maskfocus.rewards.judges: detector + colour classification feeding the GenEval rules, and the
judge a detector config builds (shapes, owlv2 with local folders, http)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskfocus.config import ConfigError, GenEvalDetectorConfig, config_from_dict, load_config
from maskfocus.models.base import ModelLoadError
from maskfocus.rewards.geneval import Detection, Thresholds, load_metadata
from maskfocus.rewards.judges import DetectorJudge, build_judge, load_object_names, thresholds_of

SHARED_GENEVAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "geneval"
COLOR_ATTR = {
    "tag": "color_attr",
    "include": [{"class": "car", "count": 1, "color": "red"}, {"class": "dog", "count": 2, "color": "blue"}],
    "prompt": "a photo of a red car and two blue dogs",
}


class BoxColors:
    """Colour stand-in: a box's colour is written in its x0 (0 = red, 1 = blue); records what it was asked."""

    def __init__(self):
        self.calls: list[tuple[str, int]] = []

    def classify(self, image, boxes, classname):
        self.calls.append((classname, len(boxes)))
        return ["red" if box[0] == 0 else "blue" for box in boxes]


def _judge(detections, colors, **kwargs) -> DetectorJudge:
    return DetectorJudge("fake", lambda images: [detections] * len(images), colors=colors, **kwargs)


def test_colours_are_classified_for_the_first_count_detections_above_threshold():
    detections = {
        "car": [Detection((0, 0, 1, 1), 0.9), Detection((1, 0, 2, 1), 0.8)],
        "dog": [Detection((1, 0, 2, 2), 0.2), Detection((1, 0, 3, 3), 0.7), Detection((1, 1, 3, 3), 0.5)],
        "cat": [Detection((0, 0, 1, 1), 0.9)],
    }
    colors = BoxColors()
    (result,) = _judge(detections, colors).judge(np.zeros((1, 8, 8, 3), np.uint8), [COLOR_ATTR])
    assert result.correct, result.reasons
    assert sorted(colors.calls) == [("car", 1), ("dog", 2)]  # the 0.2 dog is below GenEval's 0.3


def test_a_wrong_colour_fails_the_clause_with_geneval_reason():
    detections = {"car": [Detection((1, 0, 2, 1), 0.9)], "dog": [Detection((1, 0, 2, 2), 0.9)] * 2}
    (result,) = _judge(detections, BoxColors()).judge(np.zeros((1, 8, 8, 3), np.uint8), [COLOR_ATTR])
    assert not result.correct and result.score == 0.5
    assert result.reasons == ("expected red car>=1, found 0 red; and 1 blue",)


def test_without_colour_classifier_detector_colours_are_used():
    detections = {"car": [Detection((0, 0, 1, 1), 0.9, "red")], "dog": [Detection((0, 0, 1, 1), 0.9, "blue")] * 2}
    (result,) = _judge(detections, None).judge(np.zeros((1, 8, 8, 3), np.uint8), [COLOR_ATTR])
    assert result.correct


def test_a_judge_given_more_images_than_records_names_both_counts():
    with pytest.raises(ValueError, match="^2 images but 1 metadata records: one record per image$"):
        _judge({}, None).judge(np.zeros((2, 8, 8, 3), dtype=np.uint8), [COLOR_ATTR])


def test_object_names_are_genevals_80_classes():
    names = load_object_names()
    assert len(names) == 80 and names[0] == "person"
    shared = SHARED_GENEVAL / "object_names.txt"
    if shared.is_file():
        assert names == [line.strip() for line in shared.read_text().splitlines() if line.strip()]
    rows = load_metadata(SHARED_GENEVAL / "evaluation_metadata.jsonl")
    classes = {c["class"] for row in rows for c in row["include"] + row.get("exclude", [])}
    assert classes <= set(names)


def test_a_class_name_file_listing_a_name_twice_or_not_in_utf8_is_named(tmp_path):
    from maskfocus.models.base import ModelLoadError

    (names := tmp_path / "names.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(ModelLoadError, match=r"^object_names: .*names.txt lists cat more than once"):
        load_object_names(names)
    names.write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ModelLoadError, match=r"names.txt is not UTF-8 text \(invalid continuation byte\)"):
        load_object_names(names)
    names.write_bytes(b"\xef\xbb\xbfcat\ndog\n")  # a byte-order mark is not part of the first name
    assert load_object_names(names) == ["cat", "dog"]


def test_shapes_judge_knows_the_shapes_world():
    from maskfocus.shapes.world import SHAPES

    judge = build_judge(GenEvalDetectorConfig())
    assert judge.name == "shapes" and list(judge.known_classes) == list(SHAPES)


def test_owlv2_judge_runs_on_real_metadata(tiny_owlv2_folder, tiny_clip_folder):
    config = GenEvalDetectorConfig(
        kind="owlv2",
        path=str(tiny_owlv2_folder),
        clip_model=str(tiny_clip_folder),
        score_threshold=0.0,
        counting_score_threshold=0.0,
        nms_iou=0.5,
    )
    judge = build_judge(config)
    rows = load_metadata(SHARED_GENEVAL / "evaluation_metadata.jsonl")[:40:8]
    images = np.random.default_rng(0).integers(0, 256, (len(rows), 16, 16, 3), dtype=np.uint8)
    results = judge.judge(images, rows)
    assert judge.name == "owlv2" and len(judge.known_classes) == 80 and len(results) == len(rows)
    assert all(0.0 <= r.score <= 1.0 and r.correct == (not r.reasons) for r in results)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"path": "/nowhere/owlv2", "clip_model": "/nowhere/clip"}, r"rewards\[2\]\.detector\.path: .*/nowhere/owlv2"),
        ({"clip_model": "/nowhere/clip"}, r"rewards\[2\]\.detector\.clip_model: .*not found: /nowhere/clip"),
        ({"clip_model": "ViT-L-14"}, r"rewards\[2\]\.detector\.clip_checkpoint: the architecture 'ViT-L-14' needs"),
        ({"clip_model": "x", "object_names": "/nowhere/names.txt"}, r"detector\.object_names: .*/nowhere/names\.txt"),
    ],
)
def test_owlv2_judge_errors_name_the_field_and_path(tiny_owlv2_folder, owlv2_thresholds, kwargs, message):
    config = GenEvalDetectorConfig(kind="owlv2", **{"path": str(tiny_owlv2_folder), **owlv2_thresholds, **kwargs})
    with pytest.raises(ModelLoadError, match=message):
        build_judge(config, field="rewards[2].detector")


def test_http_judge_takes_url_timeout_and_retries_from_the_config():
    config = GenEvalDetectorConfig(kind="http", url="http://10.0.0.9:18085", timeout_s=5, num_retries=7, batch_size=3)
    judge = build_judge(config)
    assert (judge.url, judge.timeout_s, judge.num_retries, judge.batch_size) == ("http://10.0.0.9:18085", 5, 7, 3)
    assert len(judge.known_classes) == 80


@pytest.mark.parametrize(
    "url",
    ["notaurl", "http://", "ftp://10.0.0.9:18085", "127.0.0.1:18085", "http://h:99999", "http://h:abc", "http://:80"],
)
def test_a_server_url_that_is_not_http_is_refused_by_the_config(url):
    """urllib refused it only at the first request, with a traceback, after the model had loaded and sampled."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="url\n.*must be an http:// or https:// address"):
        GenEvalDetectorConfig(kind="http", url=url)
    assert GenEvalDetectorConfig(kind="http", url="https://judge.example:8443/score").url.startswith("https://")


@pytest.mark.parametrize(
    "given",
    [{}, {"score_threshold": 0.1}, {"score_threshold": 0.1, "counting_score_threshold": 0.3}, {"nms_iou": 0.5}],
)
def test_owlv2_without_explicit_thresholds_is_refused_naming_the_fields(given):
    detector = {"kind": "owlv2", "path": "/models/owlv2", "clip_model": "/models/clip", **given}
    with pytest.raises(ConfigError) as raised:
        config_from_dict({"rewards": [{"name": "geneval", "detector": detector}]})
    message = str(raised.value)
    assert "<dict>: rewards.0.detector: kind owlv2 needs explicit" in message
    missing = [f for f in ("score_threshold", "counting_score_threshold", "nms_iou") if f not in given]
    assert f"needs explicit {', '.join(f'`{f}`' for f in missing)} " in message
    for phrase in ("0.3 / 0.9 score defaults are GenEval's", "Mask2Former", "http (Mask2Former) judge", "few hundred"):
        assert phrase in message


def test_a_null_threshold_is_unset_so_config_files_of_the_thirty_third_session_still_load():
    nulls = dict.fromkeys(("score_threshold", "counting_score_threshold", "nms_iou"))
    shapes = config_from_dict({"rewards": [{"name": "geneval", "detector": {"kind": "shapes", **nulls}}]})
    assert shapes.rewards[0].detector == GenEvalDetectorConfig(kind="shapes")  # GenEval's 0.3 / 0.9, NMS 0.5
    owlv2 = {"kind": "owlv2", "path": "/models/owlv2", "clip_model": "/models/clip", **nulls, "nms_iou": 0.4}
    with pytest.raises(ConfigError, match="needs explicit `score_threshold`, `counting_score_threshold` "):
        config_from_dict({"rewards": [{"name": "geneval", "detector": owlv2}]})


def test_shapes_thresholds_default_to_genevals_and_explicit_ones_are_used():
    assert thresholds_of(GenEvalDetectorConfig()) == Thresholds(score=0.3, counting_score=0.9)
    explicit = GenEvalDetectorConfig(score_threshold=0.1, counting_score_threshold=0.35)
    assert thresholds_of(explicit) == Thresholds(score=0.1, counting_score=0.35)
    assert build_judge(explicit).thresholds == Thresholds(score=0.1, counting_score=0.35)


def test_owlv2_judge_uses_the_configured_thresholds_and_nms(tiny_owlv2_folder, tiny_clip_folder):
    config = GenEvalDetectorConfig(
        kind="owlv2",
        path=str(tiny_owlv2_folder),
        clip_model=str(tiny_clip_folder),
        score_threshold=0.15,
        counting_score_threshold=0.35,
        nms_iou=0.45,
    )
    judge = build_judge(config)
    detector = judge.detect_batch.__self__
    assert judge.thresholds == Thresholds(score=0.15, counting_score=0.35)
    assert (detector.nms_iou, detector.min_score) == (0.45, 0.15)


def test_real_geneval_configs_set_uncalibrated_owlv2_thresholds():
    root = Path(__file__).resolve().parents[2] / "configs"
    for name in ("amused_geneval.yaml", "meissonic_geneval.yaml"):
        detector = load_config(root / name).rewards[0].detector
        assert detector.kind == "owlv2"
        assert (detector.score_threshold, detector.counting_score_threshold, detector.nms_iou) == (0.1, 0.3, 0.5)
        assert "UNCALIBRATED starting points, not measured" in (root / name).read_text()
