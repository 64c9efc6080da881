"""Tests for maskfocus.rewards.combined: build_rewards dispatching the configured terms (geneval with each
detector kind, clip, hps) and clear errors for missing local model files; RewardSpec's new fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from maskfocus.config import ConfigError, RewardSpec, config_from_dict
from maskfocus.models.base import ModelLoadError
from maskfocus.rewards.combined import GenEvalReward, WeightedReward, build_rewards
from maskfocus.rewards.geneval_client import GenEvalClient
from maskfocus.rewards.judges import DetectorJudge

ROWS = [{"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}] * 2


def _images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


def test_clip_and_hps_terms_score_with_their_own_weights(tiny_clip_folder, tiny_arch, hps_checkpoint):
    specs = [
        RewardSpec(name="clip", model=str(tiny_clip_folder), weight=0.5),
        RewardSpec(name="hps", model=tiny_arch, checkpoint=str(hps_checkpoint), weight=2.0),
    ]
    reward = build_rewards(specs)
    total, parts = reward(_images(), ROWS)
    assert set(parts) == {"clip", "hps"} and parts["hps"].shape == (2,)
    torch.testing.assert_close(total, 0.5 * parts["clip"] + 2.0 * parts["hps"])
    assert not torch.allclose(parts["clip"], parts["hps"])  # different weights, different scores


def test_clip_term_accepts_an_architecture_name_with_a_checkpoint(tiny_arch, hps_checkpoint):
    reward = build_rewards([RewardSpec(name="clip", model=tiny_arch, checkpoint=str(hps_checkpoint))])
    assert reward.terms[0][1].scorer.fit == "crop"


def test_geneval_terms_use_the_configured_detector(tiny_owlv2_folder, tiny_clip_folder, owlv2_thresholds):
    owlv2 = {"kind": "owlv2", "path": str(tiny_owlv2_folder), "clip_model": str(tiny_clip_folder), **owlv2_thresholds}
    specs = [
        RewardSpec(name="geneval", mode="partial", detector=owlv2),
        RewardSpec(name="geneval", detector={"kind": "http", "url": "http://127.0.0.1:1"}),
    ]
    reward = build_rewards(specs)
    (_, partial), (_, binary) = reward.terms
    assert isinstance(partial.judge, DetectorJudge) and partial.judge.name == "owlv2"
    assert isinstance(binary.judge, GenEvalClient) and binary.judge.url == "http://127.0.0.1:1"
    values = partial(_images(), ROWS)
    assert values.shape == (2,) and ((values >= 0) & (values <= 1)).all()


def test_strict_geneval_term_pays_less_for_extra_objects():
    from maskfocus.shapes.render import render_batch
    from maskfocus.shapes.scene import Scene, ShapeObject

    extra = Scene((ShapeObject("circle", "red", 16, 16, 16), ShapeObject("square", "blue", 44, 44, 16)))
    images = render_batch([extra])
    meta = [{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}]
    loose = build_rewards([RewardSpec(name="geneval", mode="partial")])
    strict = build_rewards([RewardSpec(name="geneval", mode="partial", strict=True)])
    assert loose(images, meta)[0].item() == 1.0
    assert strict(images, meta)[0].item() == 0.5  # the square breaks "nothing else", one of the 2 clauses
    with pytest.raises(ConfigError, match=r"rewards\.0: this clip term would ignore `strict` "):
        config_from_dict({"rewards": [{"name": "clip", "strict": True}]})


def test_strict_with_the_http_reward_server_is_binary_only():
    """The server's correctness honours the exclude clauses strict sends; its partial score (Flow-GRPO's
    count-distance credit) ignores them, so strict partial cannot apply."""
    http = {"kind": "http"}
    with pytest.raises(ConfigError, match=r"rewards\.0: .*`strict: true` with detector kind http works in mode binary"):
        config_from_dict({"rewards": [{"name": "geneval", "mode": "partial", "strict": True, "detector": http}]})
    with pytest.raises(ConfigError, match=r"strict with the http reward server works in mode binary only"):
        GenEvalReward("partial", judge=GenEvalClient("http://127.0.0.1:1", known_classes=["dog"]), strict=True)
    binary = config_from_dict({"rewards": [{"name": "geneval", "strict": True, "detector": http}]})
    assert binary.rewards[0].strict and binary.rewards[0].mode == "binary"
    strict = GenEvalReward("binary", judge=GenEvalClient("http://127.0.0.1:1", known_classes=["dog"]), strict=True)
    assert strict.strict_classes == ["dog"]
    plain = config_from_dict({"rewards": [{"name": "geneval", "mode": "partial", "detector": {"kind": "http"}}]})
    assert not plain.rewards[0].strict and plain.rewards[0].detector.kind == "http"


def test_default_geneval_term_is_the_shapes_detector():
    ((_, term),) = build_rewards([RewardSpec(name="geneval")]).terms
    assert term.name == "geneval_binary" and term.judge.name == "shapes"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"name": "clip", "model": "/nowhere/clip"},
            r"rewards\[1\]\.model: CLIP model folder not found: /nowhere/clip",
        ),
        ({"name": "hps", "checkpoint": "/nowhere/HPS_v2.1.pt"}, r"rewards\[1\]\.checkpoint: .*/nowhere/HPS_v2\.1\.pt"),
        (
            {
                "name": "geneval",
                "detector": {
                    "kind": "owlv2",
                    "path": "/nowhere/owl",
                    "clip_model": "/x",
                    "score_threshold": 0.1,
                    "counting_score_threshold": 0.3,
                    "nms_iou": 0.5,
                },
            },
            r"rewards\[1\]\.detector\.path: no OWLv2 folder \(config\.json\) at /nowhere/owl",
        ),
    ],
)
def test_missing_model_files_name_the_field_and_the_path(spec, message):
    with pytest.raises(ModelLoadError, match=message):
        build_rewards([RewardSpec(name="geneval", mode="partial"), RewardSpec(**spec)])


def test_an_unknown_geneval_mode_is_refused_where_the_term_is_made():
    """The config's Literal guards the YAML; a script building the term directly got graded credit for "Partial"."""
    with pytest.raises(ConfigError, match="unknown GenEval mode 'Partial'; one of binary, partial, graded"):
        GenEvalReward("Partial")


def test_two_terms_with_one_metric_name_are_refused():
    with pytest.raises(ConfigError, match="repeated: clip"):
        build_rewards([RewardSpec(name="clip"), RewardSpec(name="clip", weight=2.0)])


def test_reward_spec_fills_the_model_by_name_and_checks_required_fields():
    assert RewardSpec(name="clip").model == "builtin:shapes-clip"
    assert RewardSpec(name="hps", checkpoint="hps.pt").model == "ViT-H-14"
    assert RewardSpec(name="geneval").detector.kind == "shapes"
    with pytest.raises(ConfigError, match=r"rewards\.0: .*hps term needs `checkpoint`"):
        config_from_dict({"rewards": [{"name": "hps"}]})
    with pytest.raises(ConfigError, match=r"rewards\.0\.detector: .*kind owlv2 needs `path`"):
        config_from_dict({"rewards": [{"name": "geneval", "detector": {"kind": "owlv2"}}]})
    with pytest.raises(ConfigError, match=r"rewards\.0\.detector\.retries: unknown key"):
        config_from_dict({"rewards": [{"name": "geneval", "detector": {"kind": "http", "retries": 3}}]})
    http = config_from_dict({"rewards": [{"name": "geneval", "detector": {"kind": "http", "num_retries": 5}}]})
    assert http.rewards[0].detector.num_retries == 5 and http.rewards[0].detector.timeout_s == 120.0


@pytest.mark.parametrize(
    "term, message",
    [
        # OWLv2 paths under the default kind would train against the shapes detector
        (
            {"name": "geneval", "detector": {"path": "/owl", "clip_model": "c"}},
            r"kind is shapes, which would ignore `path`, `clip_model`",
        ),
        (
            {"name": "geneval", "detector": {"nms_iou": 0.7, "url": "http://h:1"}},
            r"kind is shapes, which would ignore `nms_iou`, `url` \(`nms_iou` is read by kind owlv2; `url` is read by",
        ),
        ({"name": "geneval", "detector": {"timeout_s": 5}}, "kind is shapes, which would ignore `timeout_s`"),
        ({"name": "clip", "mode": "graded"}, r"this clip term would ignore `mode` \(`mode` is read by geneval terms\)"),
        ({"name": "hps", "checkpoint": "h.pt", "detector": {"kind": "http"}}, "this hps term would ignore `detector`"),
        (
            {"name": "geneval", "checkpoint": "c.pt"},
            r"this geneval term would ignore `checkpoint` \(`checkpoint` is read by clip and hps",
        ),
        (
            {"name": "geneval", "mode": "graded", "detector": {"kind": "http"}},
            "mode graded needs the per-clause counts",
        ),
    ],
)
def test_settings_the_term_or_its_detector_would_ignore_are_refused_in_the_config(term, message):
    """Refused by the config, so `train --check` names them before any model loads."""
    with pytest.raises(ConfigError, match=r"rewards\.0(\.detector)?: .*" + message):
        config_from_dict({"rewards": [term]})


def test_an_explicit_kind_may_keep_the_settings_of_another():
    """`--set rewards.0.detector.kind=http` on an owlv2 config (README: published numbers go through http) was
    refused for the owlv2 paths and thresholds the file still holds; only the default kind, shapes, means a
    forgotten `kind`."""
    owl = {"path": "/o", "clip_model": "c", "score_threshold": 0.1, "counting_score_threshold": 0.2, "nms_iou": 0.4}
    config = config_from_dict(
        {"rewards": [{"name": "geneval", "detector": {**owl, "kind": "http", "url": "http://h:1"}}]}
    )
    assert config.rewards[0].detector.kind == "http" and config.rewards[0].detector.path == "/o"
    owlv2 = config_from_dict({"rewards": [{"name": "geneval", "detector": {**owl, "kind": "owlv2", "timeout_s": 5}}]})
    assert owlv2.rewards[0].detector.kind == "owlv2"


def test_the_settings_a_kind_reads_and_defaults_written_out_still_load():
    """A run's config.yaml writes every field, other kinds' defaults too: it must still load and resume."""
    owl = {"kind": "owlv2", "path": "/o", "clip_model": "c", "score_threshold": 0.1, "counting_score_threshold": 0.2}
    assert RewardSpec(name="geneval", detector={**owl, "nms_iou": 0.3, "batch_size": 4}).detector.batch_size == 4
    written = RewardSpec(name="clip").model_dump(mode="json")
    assert written["mode"] == "binary" and written["detector"]["url"]
    assert RewardSpec.model_validate(written) == RewardSpec(name="clip")
    http = {"kind": "http", "url": "http://h:1", "timeout_s": 5.0, "num_retries": 0, "batch_size": 2}
    assert RewardSpec(name="geneval", mode="partial", detector=http).detector.timeout_s == 5.0


def test_one_metric_name_twice_or_every_weight_zero_is_refused_in_the_config():
    with pytest.raises(ConfigError, match="more than one term would log as reward/clip in metrics.jsonl"):
        config_from_dict({"rewards": [{"name": "clip"}, {"name": "clip", "weight": 2.0}]})
    with pytest.raises(ConfigError, match="every term has weight 0"):
        config_from_dict({"rewards": [{"name": "geneval", "weight": 0.0}, {"name": "clip", "weight": 0.0}]})
    two_modes = config_from_dict(
        {"rewards": [{"name": "geneval", "mode": "partial"}, {"name": "geneval", "weight": 0}]}
    )
    assert [spec.mode for spec in two_modes.rewards] == ["partial", "binary"]


def test_binary_and_partial_terms_of_one_detector_judge_each_batch_once(monkeypatch):
    from maskfocus.shapes.render import render_batch
    from maskfocus.shapes.scene import Scene, ShapeObject

    images = render_batch([Scene((ShapeObject("circle", "red", 16, 16, 16),))] * 2)
    meta = [
        {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"},
        {
            "tag": "two_object",
            "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}],
            "prompt": "a photo of a circle and a square",
        },
    ]
    specs = [RewardSpec(name="geneval", mode="partial"), RewardSpec(name="geneval", mode="binary", weight=2.0)]
    reward = build_rewards(specs)
    (_, partial), (_, binary) = reward.terms
    assert partial.judge is binary.judge
    calls = []
    original = partial.judge.judge
    monkeypatch.setattr(partial.judge, "judge", lambda *args: calls.append(1) or original(*args))
    total, parts = reward(images, meta)
    assert len(calls) == 1
    assert parts["geneval_partial"].tolist() == [1.0, 0.5] and parts["geneval_binary"].tolist() == [1.0, 0.0]
    torch.testing.assert_close(total, torch.tensor([3.0, 0.5]))
    calls.clear()
    strict = build_rewards([specs[0], RewardSpec(name="geneval", mode="binary", strict=True)])
    strict_judge = strict.terms[0][1].judge
    strict_original = strict_judge.judge
    monkeypatch.setattr(strict_judge, "judge", lambda *args: calls.append(1) or strict_original(*args))
    strict(images, meta)
    assert len(calls) == 2  # strict rules judge against other metadata


def test_plain_and_strict_terms_of_one_mode_get_their_own_metric_names():
    from maskfocus.shapes.render import render_batch
    from maskfocus.shapes.scene import Scene, ShapeObject

    images = render_batch(
        [Scene((ShapeObject("circle", "red", 16, 16, 16), ShapeObject("square", "blue", 44, 44, 16)))]
    )
    meta = [{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}]
    specs = [RewardSpec(name="geneval", mode="partial"), RewardSpec(name="geneval", mode="partial", strict=True)]
    total, parts = build_rewards(specs)(images, meta)
    assert sorted(parts) == ["geneval_partial", "geneval_partial_strict"]
    assert parts["geneval_partial"].item() == 1.0  # the extra square is free under the plain rules
    assert parts["geneval_partial_strict"].item() == 0.5  # and breaks "nothing else" under strict rules
    torch.testing.assert_close(total, parts["geneval_partial"] + parts["geneval_partial_strict"])
    with pytest.raises(ConfigError, match="repeated: geneval_partial_strict"):
        build_rewards([specs[1], specs[1]])


def test_a_weight_zero_term_is_logged_but_its_nan_does_not_reach_the_total():
    class Fixed:
        def __init__(self, name, values):
            self.name, self.values_B = name, torch.tensor(values)

        def __call__(self, images_BHWC, metadata_B):
            return self.values_B

    reward = WeightedReward([(2.0, Fixed("main", [0.5, 1.0])), (0.0, Fixed("monitor", [float("nan"), 3.0]))])
    total, parts = reward(np.zeros((2, 4, 4, 3), np.uint8), [{"prompt": "a"}, {"prompt": "b"}])
    assert total.tolist() == [1.0, 2.0]
    assert math.isnan(parts["monitor"][0]) and parts["monitor"][1] == 3.0
