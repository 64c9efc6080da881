"""The `maskfocus` command line end to end, in subprocesses, on small prompt subsets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import cli_error

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "maskfocus.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
    )


def test_eval_end_to_end_on_a_small_subset(tmp_path):
    out, summary_path, grid = tmp_path / "results.jsonl", tmp_path / "summary.json", tmp_path / "grid.png"
    result = run_cli(
        "eval",
        "--benchmark",
        "shapes-geneval",
        "--num-images-per-prompt",
        "2",
        "--limit",
        "12",
        "--out",
        str(out),
        "--summary",
        str(summary_path),
        "--grid",
        str(grid),
        "--set",  # tests/test_compiled.py checks compiled sampling against eager; a cold compile here costs ~50 s
        "sampler.compile=false",
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 24
    assert {"tag", "prompt", "correct", "score", "reasons", "metadata"} <= set(records[0])
    summary = json.loads(summary_path.read_text())
    assert summary["num_images"] == 24 and 0.0 <= summary["overall"] <= 1.0
    assert set(summary["tags"]) <= {"single_object", "two_object", "counting", "colors", "position", "color_attr"}
    assert summary["overall"] == pytest.approx(sum(summary["tags"].values()) / len(summary["tags"]))
    for tag, score in summary["tags"].items():  # each tag's score is the share of its images judged correct
        judged = [record["correct"] for record in records if record["tag"] == tag]
        assert score == pytest.approx(sum(judged) / len(judged))
    evaluated = summary["evaluated"]
    assert (evaluated["prompts"], evaluated["images_per_prompt"], evaluated["judge"]) == (12, 2, "shapes")
    from maskfocus.evaluation import load_rows, rows_fingerprint

    assert evaluated["rows"] == rows_fingerprint(load_rows("shapes-geneval")[:12])  # which 12 rows, not only how many
    assert evaluated["thresholds"] == {"score": 0.3, "counting_score": 0.9, "max_per_class": 16, "position_margin": 0.1}
    assert evaluated["sampler"]["num_steps"] == 12 and "compile" not in evaluated["sampler"]  # the same images
    assert evaluated["dtype"] == "float32"  # eval.dtype, the weights' dtype the images were sampled in
    assert isinstance(summary["clip_score"], float)
    assert "overall" in result.stdout
    from PIL import Image

    with Image.open(grid) as picture:  # the first 2 rows of each tag (one here), 2 images each, a label above each
        assert picture.size == (2 * (128 + 4) + 4, 2 * (128 + 4 + 16) + 4)  # 4-px gaps for the verdict frames
        frames = [picture.getpixel((2, 4 + 16 + 40 + 148 * row)) for row in range(2)]  # first images' left edges
    first_images = {record["row"]: record["correct"] for record in records if record["image"] == 0}
    assert frames == [(40, 160, 60) if first_images[row] else (210, 40, 40) for row in range(2)]


def test_eval_set_names_an_unknown_key(capsys):
    assert "sampler.complie" in cli_error(capsys, "eval", "--limit", "1", "--no-clip", "--set", "sampler.complie=true")


def test_a_set_without_a_value_is_refused_rather_than_read_as_null(tmp_path, capsys):
    """YAML reads `grpo.clip_eps=` as null, which would switch the clip off without a word."""
    from maskfocus.config_yaml import parse_set

    error = cli_error(capsys, "train", "--set", f"train.out_dir={tmp_path}", "--set", "grpo.clip_eps=")
    assert "--set 'grpo.clip_eps=': no value after '='; write grpo.clip_eps=null for null" in error
    assert not any(tmp_path.iterdir())
    assert parse_set(["grpo.clip_eps=null", "sampler.negative_prompt=''"]) == {
        "grpo.clip_eps": None,
        "sampler.negative_prompt": "",
    }


def test_sample_writes_a_grid(tmp_path):
    out = tmp_path / "grid.png"
    args = ["--num-images", "4", "--out", str(out), "--set", "sampler.compile=false"]
    result = run_cli("sample", "--prompt", "a photo of a red circle", *args)
    assert result.returncode == 0, result.stderr
    from PIL import Image

    assert Image.open(out).size[0] > 64 * 4


def test_unknown_word_is_one_clear_message_that_lists_the_known_words(tmp_path, capsys):
    error = cli_error(capsys, "sample", "--prompt", "a photo of a giraffe", "--out", str(tmp_path / "x.png"))
    lines = error.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("maskfocus sample: error:"))
    assert "giraffe" in lines[start] and len(lines) == start + 2  # the error, then the known words, nothing more
    assert lines[-1].startswith("Known words: ") and " circle " in lines[-1]


def test_malformed_metadata_names_file_and_line(tmp_path, capsys):
    bad = tmp_path / "meta.jsonl"
    bad.write_text('{"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a"}\n{oops\n')
    assert f"{bad}:2" in cli_error(capsys, "eval", "--metadata", str(bad), "--no-clip")


def test_unknown_benchmark_lists_the_known_ones(capsys):
    assert "shapes-geneval" in cli_error(capsys, "eval", "--benchmark", "nope", "--no-clip")


def test_a_missing_model_folder_is_named_with_what_to_check(tmp_path, capsys):
    from maskfocus.models.loading import FOLDER_HINT

    error = cli_error(capsys, "sample", "--prompt", "a photo of a circle", "--model", str(tmp_path / "x"))
    assert f"model folder not found: {tmp_path / 'x'}; {FOLDER_HINT}" in error


def test_the_model_of_an_unfinished_run_is_named_as_not_written_yet(tmp_path, capsys):
    """`--model runs/NAME/model` of a run that has not finished: the folder is missing for a reason worth saying."""
    run = tmp_path / "runs" / "NAME"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("seed: 0\n")
    error = cli_error(capsys, "eval", "--limit", "1", "--no-clip", "--model", str(run / "model"))
    assert f"model folder not found: {run / 'model'}; the run {run} has no final model yet" in error
    assert f"maskfocus train --resume {run}" in error


@pytest.mark.parametrize("command", [["sample", "--prompt", "a circle"], ["eval", "--limit", "1", "--no-clip"]])
def test_a_negative_prompt_the_model_cannot_read_is_named_before_sampling(capsys, command):
    error = cli_error(capsys, *command, "--set", "sampler.negative_prompt='blurry zebra'")
    assert error.startswith("maskfocus") and "sampler.negative_prompt: prompt 'blurry zebra' uses word(s)" in error


def test_real_geneval_classes_are_refused_by_the_shapes_detector(capsys):
    real = ROOT.parent / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"
    if not real.is_file():
        pytest.skip("../shared/data/geneval is not beside the project")
    assert "cannot detect" in cli_error(capsys, "eval", "--metadata", str(real), "--no-clip")


def test_a_stopped_eval_says_where_the_records_judged_so_far_are(monkeypatch, tmp_path, capsys):
    """Ctrl-C (or SIGTERM) printed only 'interrupted'; the records judged so far stay in OUT.partial."""
    import os
    import signal
    import time

    import maskfocus.evaluation
    from maskfocus.cli import main

    def run_evaluation(model, rows, eval_config, sampler, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
        time.sleep(30)  # the handler raises before this ends
        raise AssertionError("SIGINT was not turned into a stop")

    monkeypatch.setattr(maskfocus.evaluation, "run_evaluation", run_evaluation)
    out = tmp_path / "results.jsonl"
    assert main(["eval", "--limit", "2", "--no-clip", "--out", str(out)]) == 130
    error = capsys.readouterr().err
    expected = f"maskfocus eval: stopped on SIGINT while evaluating; the records judged so far are in {out}.partial"
    assert expected in error
    assert main(["eval", "--limit", "2", "--no-clip"]) == 130
    assert "stopped on SIGINT while evaluating; nothing was written" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--detector-path", "/x"], "--detector-path is for --detector owlv2, not the shapes detector"),
        (["--detector", "shapes", "--server-url", "http://a:1"], "--server-url is for --detector http, not the shapes"),
        (["--detector", "http", "--score-threshold", "0.2"], "--score-threshold is for --detector shapes or owlv2"),
    ],
)
def test_a_detector_option_the_chosen_detector_does_not_use_is_refused(capsys, args, message):
    """Given to the shapes detector, --detector-path was ignored without a word."""
    assert message in cli_error(capsys, "eval", *args, "--limit", "1", "--no-clip")


def test_a_colour_the_shapes_detector_cannot_tell_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """GenEval's `pink` passed the metadata check, and every such row scored 0 without a word."""
    import json

    import maskfocus.models

    monkeypatch.setattr(maskfocus.models, "load_generator", lambda *args, **kwargs: pytest.fail("model loaded"))
    row = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "pink"}], "prompt": "a pink circle"}
    (metadata := tmp_path / "pink.jsonl").write_text(json.dumps(row) + "\n")
    error = cli_error(capsys, "eval", "--metadata", str(metadata), "--no-clip")
    assert "the shapes detector cannot tell the colour(s) pink; it knows: red, " in error


def test_an_incomplete_detector_from_the_command_line_names_the_options_that_set_it(capsys):
    error = cli_error(capsys, "eval", "--limit", "1", "--no-clip", "--detector", "owlv2", "--detector-path", "/x")
    assert "rewards[0].detector: kind owlv2 needs `path` (the OWLv2 folder) and `clip_model`" in error
    assert "Value error" not in error and "--detector-path sets path, --color-clip sets clip_model" in error
    from maskfocus.cli import build_parser
    from maskfocus.cli_eval_options import detector_overrides

    args = build_parser().parse_args(["eval", "--nms-iou", "0.3", "--score-threshold", "0.4", "--color-clip", "c"])
    assert detector_overrides(args) == {"clip_model": "c", "score_threshold": 0.4, "nms_iou": 0.3}


def test_every_option_of_the_detector_table_is_an_eval_option():
    """The eval parser's detector options are made from config_rewards.DETECTOR_OPTIONS, and `detector_overrides`
    reads each back under its config key."""
    from maskfocus.cli import build_parser
    from maskfocus.cli_eval_options import detector_overrides
    from maskfocus.config_rewards import DETECTOR_OPTIONS

    values = {"kind": "owlv2", "path": "p", "clip_model": "c", "clip_checkpoint": "w.pt", "url": "u"}
    argv = [arg for key, option in DETECTOR_OPTIONS.items() for arg in (option, values.get(key, "0.5"))]
    overrides = detector_overrides(build_parser().parse_args(["eval", *argv]))
    assert overrides == {key: values.get(key, 0.5) for key in DETECTOR_OPTIONS}


def test_eval_takes_the_readmes_colour_classifier_an_architecture_name_and_a_weights_file():
    """README names GenEval's colour CLIP as `ViT-L-14-quickgelu` plus a weights file; eval had no option for the
    file, and switching the detector on the command line drops the config's detector settings."""
    from maskfocus.cli import build_parser
    from maskfocus.cli_eval_options import detector_overrides
    from maskfocus.config import default_run_config
    from maskfocus.evaluation import eval_detector_config

    argv = ["eval", "--detector", "owlv2", "--detector-path", "/m/owlv2", "--color-clip", "ViT-L-14-quickgelu"]
    argv += ["--color-clip-checkpoint", "/m/vit_l14.bin", "--score-threshold", "0.3"]
    argv += ["--counting-score-threshold", "0.9", "--nms-iou", "0.5"]
    detector, field = eval_detector_config(default_run_config(), detector_overrides(build_parser().parse_args(argv)))
    assert (detector.kind, detector.clip_model, detector.clip_checkpoint) == (
        "owlv2",
        "ViT-L-14-quickgelu",
        "/m/vit_l14.bin",
    )


def test_an_option_takes_its_choices_or_type_from_the_config_field():
    """Through `X | None`: a threshold once typed `float | None` must still parse as a number, not as text."""
    from typing import Literal

    from maskfocus.cli_eval_options import option_spec

    assert option_spec(float | None, "t") == {"type": float}
    assert option_spec(int, "n") == {"type": int}
    assert option_spec(str | None, "p") == {"type": str}
    assert option_spec(Literal["a", "b"] | None, "k") == {"choices": ("a", "b"), "metavar": None}
    with pytest.raises(TypeError, match="no command-line option type for pair"):
        option_spec(tuple[int, int], "pair")


@pytest.mark.parametrize("prompt", ["", "   "])
def test_sample_refuses_an_empty_prompt(capsys, prompt):
    error = cli_error(capsys, "sample", "--prompt", prompt, "--model", "/nowhere")  # named before the model
    assert "--prompt is empty: give the text to draw (an empty one" in error


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (["model.dtype=bfloat16"], "float32"),  # rollouts in bfloat16, evaluation of the weights themselves
        (["model.dtype=bfloat16", "eval.dtype=null"], "bfloat16"),
        (["eval.dtype=float16"], "float16"),
    ],
)
def test_eval_loads_the_model_in_eval_dtype(monkeypatch, settings, expected):
    import maskfocus.models
    from maskfocus.cli import main

    class Loaded(Exception):
        pass

    def load_generator(config, device=None, dtype=None):
        raise Loaded(dtype)

    monkeypatch.setattr(maskfocus.models, "load_generator", load_generator)
    with pytest.raises(Loaded) as loaded:
        main(["eval", "--limit", "1", "--no-clip", *(arg for s in settings for arg in ("--set", s))])
    assert loaded.value.args == (expected,)


@pytest.mark.parametrize(
    ("args", "compiled"),
    [
        ([], False),  # a few images: the compile would cost more than it saves
        (["--set", "sampler.compile=true"], True),  # asked for explicitly
        (["--set", "sampler={compile: true, cfg_scale: 2}"], True),  # asked for in the mapping form of --set
        (["--set", "sampler={cfg_scale: 2}"], False),  # a mapping that leaves compile alone
        (["--num-images", "400"], True),
        (["--set", "sampler.compile=false", "--num-images", "400"], False),
    ],
)
def test_sample_compiles_only_where_it_pays_off_or_is_asked_for(monkeypatch, tmp_path, args, compiled):
    assert sampler_of_sample(monkeypatch, tmp_path, args).compile == compiled


def sampler_of_sample(monkeypatch, tmp_path, args: list[str]):
    """The sampler settings `maskfocus sample ARGS` samples with (stopped there, before any sampling)."""
    import maskfocus.cli
    import maskfocus.sampling

    seen = []

    class Sampled(Exception):
        pass

    def sample_with_config(model, prompts, sampler, generator):
        seen.append(sampler)
        raise Sampled

    monkeypatch.setattr(maskfocus.sampling, "sample_with_config", sample_with_config)
    with pytest.raises(Sampled):
        maskfocus.cli.main(["sample", "--prompt", "a photo of a red circle", "--out", str(tmp_path / "g.png"), *args])
    return seen[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sample", "--prompt", "a red circle", "--num-images", "0"], "argument --num-images: must be >= 1, got 0"),
        (["sample", "--prompt", "a red circle", "--steps", "-2"], "argument --steps: must be >= 1, got -2"),
        (["eval", "--limit", "0"], "argument --limit: must be >= 1, got 0"),
        (["eval", "--per-tag", "-1"], "argument --per-tag: must be >= 1, got -1"),
        (["eval", "--num-images-per-prompt", "x"], "argument --num-images-per-prompt: expected a whole number"),
        (["train", "--iterations", "0"], "argument --iterations: must be >= 1, got 0"),
        (["sample", "--prompt", "a red circle", "--scale", "0"], "argument --scale: must be >= 1, got 0"),
        (["sample", "--prompt", "a red circle", "--scale", "33"], "argument --scale: must be <= 32, got 33"),
        (["compare", ".", "--window", "0"], "argument --window: must be >= 1, got 0"),
    ],
)
def test_count_options_name_the_option_not_a_set_key(capsys, args, message):
    from maskfocus.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_eval_names_a_missing_or_empty_metadata_file(tmp_path, capsys):
    missing = tmp_path / "nothere.jsonl"
    assert f"--metadata {missing}: no such file" in cli_error(capsys, "eval", "--metadata", str(missing))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert f"no prompt rows in --metadata {empty}" in cli_error(capsys, "eval", "--metadata", str(empty))


def test_sampling_with_fewer_steps_than_the_training_selection_is_not_refused(monkeypatch, tmp_path):
    """K = 3 critical steps need T >= 4 for training; sampling and evaluation select no steps."""
    assert sampler_of_sample(monkeypatch, tmp_path, ["--steps", "3"]).num_steps == 3


def test_version_is_the_installed_packages(capsys):
    import tomllib

    from maskfocus.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert exit_info.value.code == 0 and capsys.readouterr().out == f"maskfocus {project['version']}\n"


def test_eval_refuses_two_prompt_sets_and_a_folder_as_metadata_and_sample_a_negative_seed(tmp_path, capsys):
    """--metadata silently beat --benchmark; a folder was "no such file"; seed -1 drew the images of 2**63 - 2."""
    from maskfocus.cli import main

    out = ["--out", str(tmp_path / "r.jsonl")]
    (metadata := tmp_path / "m.jsonl").write_text("")
    error = cli_error(capsys, "eval", "--metadata", str(metadata), "--benchmark", "shapes-geneval", *out)
    assert f"--metadata {metadata} and --benchmark shapes-geneval: give one prompt set" in error
    error = cli_error(capsys, "eval", "--metadata", str(tmp_path), *out)
    assert f"--metadata {tmp_path}: is a folder; give a GenEval-format JSONL file" in error
    with pytest.raises(SystemExit):
        main(["sample", "--prompt", "a red circle", "--seed", "-1", "--out", str(tmp_path / "g.png")])
    assert "argument --seed: must be >= 0, got -1" in capsys.readouterr().err
    assert "Input should be greater than or equal to 0" in cli_error(capsys, "train", "--check", "--set", "seed=-3")


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("sample", ["images in the grid (default 8)", "sampling seed (default 0;", "tiles, 1 to 32 (default 3)"]),
        ("compare", ["moving-average window of the curves (default 10)"]),
        ("pretrain", ["(default vq,generator,clip)", "shipped weights are then replaced in place"]),
    ],
)
def test_help_shows_each_options_default_and_that_pretrain_replaces_the_shipped_weights(capsys, command, shown):
    """sample's --num-images, --seed and --scale, compare's --window and pretrain's --stages gave no default; pretrain's
    --out did not say that leaving it out rebuilds maskfocus/pretrained/ in place."""
    from maskfocus.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines to the terminal's width
    assert all(part in text for part in shown), text
