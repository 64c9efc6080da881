"""benchmarks/sampler_sweep.py: the grid is read and every combination checked before any is scored."""

from __future__ import annotations

import pytest
from support import load_benchmark, run_benchmark_cli

from maskfocus.config import ConfigError


@pytest.fixture(scope="module")
def sweep():
    return load_benchmark("sampler_sweep")


def test_grid_values_are_read_as_yaml_and_every_combination_gets_its_sampler(sweep):
    grid = sweep.parse_grid(["sampler.num_steps=2,8", "sampler.cfg_scale=1.5"])
    assert grid == {"sampler.num_steps": [2, 8], "sampler.cfg_scale": [1.5]}
    combinations = sweep.grid_samplers(grid)
    assert [values for values, _ in combinations] == [(2, 1.5), (8, 1.5)]
    # T = 2 is a sampler setting; the run config's K = 3 critical steps (T >= 4) does not apply to a sweep
    assert [(sampler.num_steps, sampler.cfg_scale) for _, sampler in combinations] == [(2, 1.5), (8, 1.5)]


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["sampler.num_steps="], "expected sampler.FIELD=V1,V2"),
        (["num_steps=4"], "expected sampler.FIELD=V1,V2"),
        (["sampler.num_steps=4", "sampler.num_steps=2"], "sampler.num_steps is given twice"),
        (["sampler.num_steps=[4"], "a value is not valid YAML"),
    ],
)
def test_a_malformed_grid_is_named(sweep, items, message):
    with pytest.raises(ConfigError, match=message):
        sweep.parse_grid(items)


def test_a_bad_value_anywhere_in_the_grid_fails_before_the_first_is_scored(sweep):
    """`num_steps=4,0` scored 4, printed its row, then failed on 0 with a traceback naming `--set`."""
    with pytest.raises(ConfigError) as error:
        sweep.grid_samplers(sweep.parse_grid(["sampler.num_steps=4,0"]))
    assert "  --grid sampler.num_steps: Input should be greater than or equal to 1 (got 0)" in str(error.value)
    with pytest.raises(ConfigError, match=r"--grid sampler.num_step: unknown key; did you mean 'num_steps'"):
        sweep.grid_samplers(sweep.parse_grid(["sampler.num_step=4"]))


def test_a_tag_left_without_rows_is_named_not_a_key_error(sweep):
    assert {row["tag"] for row in sweep.chosen_rows(["counting", "position"], 4)} == {"counting", "position"}
    with pytest.raises(ConfigError, match=r"--every 1000 leaves no rows of two_object; give a smaller --every"):
        sweep.chosen_rows(["single_object", "two_object"], 1000)


def test_the_command_line_fails_in_one_line_before_loading_the_model(sweep, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "load_evaluated_generator", lambda *_: pytest.fail("the model was loaded"))
    assert run_benchmark_cli(sweep, ["--grid", "sampler.cfg_scale=high"], monkeypatch) == 2
    error = capsys.readouterr().err
    assert error.startswith("sampler_sweep.py: error: invalid config") and "(got 'high')" in error
    with pytest.raises(SystemExit):
        run_benchmark_cli(sweep, ["--grid", "sampler.num_steps=4", "--every", "0"], monkeypatch)
    assert "argument --every: must be >= 1, got 0" in capsys.readouterr().err


def test_every_repeated_grid_option_counts(sweep, monkeypatch, capsys):
    """`--grid A --grid B` kept only B: a bad value in A was never checked."""
    monkeypatch.setattr(sweep, "load_evaluated_generator", lambda *_: pytest.fail("the model was loaded"))
    argv = ["--grid", "sampler.cfg_scale=high", "--grid", "sampler.num_steps=4"]
    assert run_benchmark_cli(sweep, argv, monkeypatch) == 2
    assert "(got 'high')" in capsys.readouterr().err


@pytest.mark.parametrize(("compile_values", "noted"), [("true", True), ("false", False)])
def test_a_compiled_sweep_says_its_first_rows_seconds_hold_the_compile(
    sweep, monkeypatch, capsys, compile_values, noted
):
    """The first row's 52.9 s against 0.5 s for the next read as a slow setting (benchmarks walkthrough)."""
    tags = {"single_object": 1.0}
    summary = {"tags": tags, "overall": 1.0, "seconds": 1.0}
    monkeypatch.setattr(sweep, "load_evaluated_generator", lambda *_: None)
    monkeypatch.setattr(sweep, "run_evaluation", lambda *_, **__: (None, summary, None))
    grid = ["--grid", "sampler.num_steps=4,8", f"sampler.compile={compile_values}"]
    assert run_benchmark_cli(sweep, [*grid, "--tags", "single_object"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert out.count("| 1.000 | 1.000 | 1.0 |") == 2
    assert (sweep.COMPILE_NOTE.strip() in out) is noted
