"""`maskfocus eval` on the real GenEval prompt set through the real-detector paths: OWLv2 + CLIP colours (tiny
random models saved by the tests) and the HTTP reward server, with a toy generator standing in for the model."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
from fake_reward_server import reply, running
from support import ToyGenerator

from maskfocus.cli import main
from maskfocus.config import EvalConfig, SamplerConfig, config_from_dict, default_run_config, dump_config
from maskfocus.evaluation import build_eval_judge, check_classes, load_rows, run_evaluation
from maskfocus.rewards.colors import ColorClassifier
from maskfocus.rewards.geneval import TAGS
from maskfocus.rewards.owlv2 import Owlv2Detector

METADATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"


@pytest.fixture
def toy_model(monkeypatch) -> ToyGenerator:
    """The CLI's model loader returns a toy generator: real checkpoints are not what this test is about."""
    import maskfocus.models

    toy = ToyGenerator()
    monkeypatch.setattr(maskfocus.models, "load_generator", lambda *args, **kwargs: toy)
    return toy


@pytest.fixture
def calls(monkeypatch) -> dict[str, int]:
    """Counts images through OWLv2 and boxes through the colour classifier."""
    counts = {"detected": 0, "coloured": 0}
    detect, classify = Owlv2Detector.detect_batch, ColorClassifier.classify

    def counting_detect(self, images):
        counts["detected"] += len(images)
        return detect(self, images)

    def counting_classify(self, image, boxes, classname):
        counts["coloured"] += len(boxes)
        return classify(self, image, boxes, classname)

    monkeypatch.setattr(Owlv2Detector, "detect_batch", counting_detect)
    monkeypatch.setattr(ColorClassifier, "classify", counting_classify)
    return counts


def _one_row_per_tag() -> list[dict]:
    rows = load_rows(None, METADATA)
    return [next(row for row in rows if row["tag"] == tag) for tag in TAGS]


def test_run_evaluation_scores_every_tag_with_owlv2_and_clip_colours(tiny_owlv2_folder, tiny_clip_folder, calls):
    detector = {"kind": "owlv2", "path": str(tiny_owlv2_folder), "clip_model": str(tiny_clip_folder)}
    detector |= {"score_threshold": 0.0, "counting_score_threshold": 0.0, "nms_iou": 0.5}  # every box counts
    config = config_from_dict({"rewards": [{"name": "geneval", "detector": detector}]})
    judge = build_eval_judge(config)
    rows = _one_row_per_tag()
    check_classes(rows, judge.known_classes, judge.name)
    eval_config, sampler = EvalConfig(num_images_per_prompt=2), SamplerConfig(num_steps=2, batch_size=5)
    records, summary, _ = run_evaluation(ToyGenerator(), rows, eval_config, sampler, judge=judge, show_progress=False)
    assert len(records) == 12 and summary["num_images"] == 12 and set(summary["tags"]) == set(TAGS)
    assert calls["detected"] == 12 and calls["coloured"] > 0
    assert all(r["correct"] == (not r["reasons"]) for r in records)


def test_cli_eval_runs_the_real_metadata_through_owlv2(tmp_path, tiny_owlv2_folder, tiny_clip_folder, toy_model, calls):
    summary_path, out = tmp_path / "summary.json", tmp_path / "records.jsonl"
    args = ["eval", "--metadata", str(METADATA), "--limit", "5", "--num-images-per-prompt", "1", "--no-clip"]
    args += ["--detector", "owlv2", "--detector-path", str(tiny_owlv2_folder), "--color-clip", str(tiny_clip_folder)]
    args += ["--score-threshold", "0.1", "--counting-score-threshold", "0.3", "--nms-iou", "0.5"]
    args += ["--steps", "4", "--batch-size", "4", "--summary", str(summary_path), "--out", str(out)]
    assert main(args) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["num_images"] == 5 and 0.0 <= summary["overall"] <= 1.0
    assert len(out.read_text().splitlines()) == 5 and calls["detected"] == 5


def cows_are_correct(handler, request) -> None:
    """A reward server that judges an image correct when its prompt names a cow."""
    rewards = [float("cow" in m["prompt"]) for m in request["meta_datas"]]
    reply(handler, 200, pickle.dumps({"scores": rewards, "rewards": rewards, "strict_rewards": rewards}))


def test_cli_eval_scores_through_the_reward_server(tmp_path, toy_model):
    summary_path = tmp_path / "summary.json"
    with running(cows_are_correct) as server:
        args = ["eval", "--metadata", str(METADATA), "--limit", "3", "--num-images-per-prompt", "2", "--no-clip"]
        args += ["--detector", "http", "--server-url", server.url, "--steps", "4", "--summary", str(summary_path)]
        assert main(args) == 0
    sent = [m["prompt"] for request in server.requests for m in request["meta_datas"]]
    expected = [row["prompt"] for row in load_rows(None, METADATA)[:3] for _ in range(2)]
    assert sent == expected
    summary = json.loads(summary_path.read_text())
    assert summary["num_images"] == 6 and summary["tags"] == {"single_object": pytest.approx(1 / 3)}


def test_cli_eval_errors_name_the_missing_detector_setting(capsys, tmp_path):
    assert main(["eval", "--metadata", str(METADATA), "--limit", "2", "--detector", "owlv2", "--no-clip"]) == 2
    assert "kind owlv2 needs `path`" in capsys.readouterr().err
    args = [
        "eval",
        "--metadata",
        str(METADATA),
        "--detector",
        "owlv2",
        "--detector-path",
        "/m/owl",
        "--color-clip",
        "/c",
    ]
    # --detector switches the kind: the config's detector settings (here a --set into its shapes detector) stay out
    assert main([*args, "--set", "rewards.0.detector.nms_iou=0.5"]) == 2
    assert "needs explicit `score_threshold`, `counting_score_threshold`, `nms_iou` (all of" in capsys.readouterr().err
    # a config whose detector is already owlv2 keeps its own settings
    owlv2_set = ["--set", "rewards.0.detector.kind=owlv2", "--set", "rewards.0.detector.path=/m/owl"]
    owlv2_set += ["--set", "rewards.0.detector.clip_model=/c", "--set", "rewards.0.detector.nms_iou=0.5"]
    assert main(["eval", "--metadata", str(METADATA), *owlv2_set]) == 2
    assert "needs explicit `score_threshold`, `counting_score_threshold` (all of" in capsys.readouterr().err
    assert main([*args, "--score-threshold", "0.1", "--counting-score-threshold", "0.3"]) == 2
    error = capsys.readouterr().err
    assert "needs explicit `nms_iou` (all of" in error and "--nms-iou" in error
    # A run's config.yaml writes GenEval's defaults out for its shapes detector: they do not pass as chosen for owlv2
    resolved = tmp_path / "config.yaml"
    dump_config(default_run_config(), resolved)
    assert "score_threshold: 0.3" in resolved.read_text()
    assert main([*args, "--config", str(resolved)]) == 2
    assert "needs explicit `score_threshold`, `counting_score_threshold`, `nms_iou`" in capsys.readouterr().err
    assert main(["eval", "--metadata", str(METADATA), "--limit", "2", "--no-clip"]) == 2
    assert "--detector owlv2" in capsys.readouterr().err  # the shapes detector cannot see COCO classes


def test_run_evaluation_still_takes_a_detect_batch_function():
    rows = _one_row_per_tag()
    nothing_found = lambda images: [{} for _ in images]  # noqa: E731
    eval_config, sampler = EvalConfig(num_images_per_prompt=1), SamplerConfig(num_steps=2, batch_size=6)
    records, summary, _ = run_evaluation(ToyGenerator(), rows, eval_config, sampler, nothing_found, show_progress=False)
    assert summary["overall"] == 0.0 and all(r["reasons"] for r in records)


def test_a_judge_failing_late_leaves_the_records_judged_so_far(tmp_path):
    """Records were kept in memory until the end: a reward server lost at batch k, or one that scored nothing,
    threw away every judged batch."""
    from maskfocus.evaluation import BenchmarkError
    from maskfocus.rewards.geneval import GenEvalResult
    from maskfocus.rewards.geneval_client import RewardServerError

    class FailsOnSecondBatch:
        name, known_classes, known_colors, batches = "http", None, None, 0

        def judge(self, images, metadata):
            self.batches += 1
            if self.batches == 2:
                raise RewardServerError("the GenEval server did not answer")
            return [GenEvalResult(True, 1.0, ()) for _ in images]

    rows, out = _one_row_per_tag(), tmp_path / "eval" / "records.jsonl"
    out.parent.mkdir()
    out.write_text("an earlier evaluation's records\n")
    eval_config, sampler = EvalConfig(num_images_per_prompt=1), SamplerConfig(num_steps=2, batch_size=4)
    with pytest.raises(RewardServerError):
        run_evaluation(ToyGenerator(), rows, eval_config, sampler, judge=FailsOnSecondBatch(), records_out=out)
    kept = [json.loads(line) for line in (tmp_path / "eval" / "records.jsonl.partial").read_text().splitlines()]
    assert [record["prompt"] for record in kept] == [row["prompt"] for row in rows[:4]]
    assert out.read_text() == "an earlier evaluation's records\n"  # replaced only by a whole evaluation

    class ScoresNothing(FailsOnSecondBatch):
        def judge(self, images, metadata):
            return [GenEvalResult(False, float("nan"), ()) for _ in images]

    partial = out.with_name(out.name + ".partial")
    with pytest.raises(BenchmarkError, match=rf"could not score any of the 6 images .*records are in {partial}:"):
        run_evaluation(ToyGenerator(), rows, eval_config, sampler, judge=ScoresNothing(), records_out=out)
    assert len(partial.read_text().splitlines()) == 6
    # a failed evaluation, not a whole one: the earlier records stay beside their summary (they were overwritten)
    assert out.read_text() == "an earlier evaluation's records\n"
