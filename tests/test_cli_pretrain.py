"""`maskfocus pretrain` on the command line: settings, stages, outputs and a stop, each named before training
(tests/shapes/test_pretrain*.py train a few steps per stage)."""

from __future__ import annotations

import pytest
from support import cli_error


def test_pretrain_rejects_an_unknown_setting_before_training(tmp_path, capsys):
    error = cli_error(capsys, "pretrain", "--out", str(tmp_path), "--set", "generator.transformer.width=128")
    assert "generator.transformer.width" in error and "unknown key" in error
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_pretrain_stopped_by_ctrl_c_says_what_was_saved_and_how_to_finish(tmp_path, capsys, monkeypatch):
    import maskfocus.shapes.pretrain_vq
    from maskfocus.cli import main

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(maskfocus.shapes.pretrain_vq, "train_vqvae", interrupted)
    assert main(["pretrain", "--out", str(tmp_path)]) == 130
    error = capsys.readouterr().err
    assert f"\nmaskfocus pretrain: stopped; this run saved nothing in {tmp_path} (a stage in progress" in error
    assert error.rstrip().endswith("finish with the same command and --stages vq,generator,clip")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--eval-images-per-prompt", "0"], "--eval-images-per-prompt: "),
        (["--seed", "-1"], "--seed: "),
        (["--set", "seed=-1"], "--set seed: "),
    ],
)
def test_pretrain_names_the_option_that_gave_a_bad_value(tmp_path, capsys, args, named):
    """(A --seed and a --set seed that disagree are refused, as train's --iterations is: tests/test_config_base.py.)"""
    error = cli_error(capsys, "pretrain", "--out", str(tmp_path / "out"), *args)
    assert f"\n  {named}" in error and "greater than or equal to" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stages", "vq,foo"], "--stages: unknown stage(s) foo; choose from vq, generator, clip"),
        (["--stages", ","], "--stages: no stage given; choose from vq, generator, clip"),
    ],
)
def test_pretrain_names_a_bad_stage_list_before_training(tmp_path, capsys, args, message):
    assert message in cli_error(capsys, "pretrain", "--out", str(tmp_path), *args)
    assert not any(tmp_path.iterdir())


def test_pretrain_refuses_an_output_that_is_a_file(tmp_path, capsys):
    weights = tmp_path / "weights"
    weights.write_text("not a folder")
    error = cli_error(capsys, "pretrain", "--out", str(weights), "--stages", "vq")
    assert f"--out {weights}: is a file; give a folder" in error
    assert weights.read_text() == "not a folder"
    error = cli_error(capsys, "pretrain", "--out", str(weights / "below"), "--stages", "vq")
    assert f"--out {weights / 'below'}: cannot be made: {weights} is a file; give a folder" in error
