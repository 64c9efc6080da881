"""maskfocus/script_args.py: the argparse types of counts and shares, and the one-line errors of scripts."""

from __future__ import annotations

import argparse

import pytest

from maskfocus.config_base import ConfigError
from maskfocus.models.base import ModelLoadError
from maskfocus.script_args import (
    check_not_inside,
    fraction,
    nonnegative_float,
    open_fraction,
    positive_float,
    positive_int,
    probability,
    run_script,
)


@pytest.mark.parametrize(
    ("parse", "good", "bad"),
    [
        (positive_int, {"1": 1, "64": 64}, ["0", "-2", "1.5", "x"]),
        (fraction, {"1": 1.0, "0.5": 0.5, "1e-3": 1e-3}, ["0", "-0.2", "1.5", "nan", "inf", "x"]),
        (open_fraction, {"0.9": 0.9, "1e-3": 1e-3}, ["0", "1", "1.5", "nan", "x"]),
        (probability, {"0": 0.0, "1": 1.0, "0.9": 0.9}, ["-0.1", "1.01", "nan", "x"]),
        (nonnegative_float, {"0": 0.0, "6": 6.0}, ["-5", "inf", "x"]),
        (positive_float, {"0.5": 0.5, "120": 120.0}, ["0", "-1", "nan", "x"]),
    ],
)
def test_each_type_takes_its_range_and_names_what_is_allowed(parse, good, bad):
    assert {text: parse(text) for text in good} == good
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be|expected"):
            parse(text)


def test_ctrl_c_is_one_line_and_exit_status_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert run_script(interrupted, prog="maskfocus eval") == 130
    assert capsys.readouterr().err == "maskfocus eval: interrupted\n"


def test_a_user_error_is_one_line_and_exit_status_2(capsys):
    def fails():
        raise ModelLoadError("model folder not found: /nowhere")

    assert run_script(fails, prog="counts.py") == 2
    assert capsys.readouterr().err == "counts.py: error: model folder not found: /nowhere\n"
    assert run_script(lambda: None, prog="counts.py") == 0
    assert run_script(lambda: 3, prog="counts.py") == 3


def test_a_programming_error_keeps_its_traceback(capsys):
    """A bug is not a user error: no one-line `error:` message, and the traceback still reaches the failing line."""

    def broken():
        raise KeyError("two_object")

    with pytest.raises(KeyError) as raised:
        run_script(broken, prog="counts.py")
    assert capsys.readouterr().err == ""
    assert any(entry.name == "broken" for entry in raised.traceback)


def test_an_output_folder_must_not_overlap_the_folder_it_is_made_from(tmp_path):
    """positional_base.py and relation_finetune.py replace OUT: OUT = the base model deleted the base, and OUT = a part
    of it (BASE/vqvae) deleted that part."""
    base = tmp_path / "runs" / "base" / "model"
    for out in (base, base.parent, tmp_path / "runs" / "base" / "model" / "..", base / "vqvae"):
        with pytest.raises(ConfigError, match=r"overlaps --base .* which replacing it would damage"):
            check_not_inside("OUT", out, "--base", base)
    check_not_inside("OUT", tmp_path / "runs" / "other", "--base", base)
    check_not_inside("OUT", tmp_path / "runs" / "base" / "model_copy", "--base", base)  # a sibling, not a part
