"""benchmarks/ablation.py: the `--jobs VARIANT:SEED` parser and its errors; the table and picture from runs."""

from __future__ import annotations

import argparse

import pytest
from support import load_benchmark, make_run

from maskfocus.config import DEFAULT_CONFIG
from maskfocus.script_args import run_script


@pytest.fixture(scope="module")
def ablation():
    return load_benchmark("ablation")


def test_jobs_parse_into_variant_and_seed(ablation):
    assert ablation.parse_job("random:2") == ("random", 2)
    assert ablation.parse_job("critical_remask_trajectory:0") == ("critical_remask_trajectory", 0)


@pytest.mark.parametrize("text", ["bogus:1", "random", "random:", "random:two", ":1"])
def test_bad_jobs_name_what_is_allowed(ablation, text):
    with pytest.raises(argparse.ArgumentTypeError, match="VARIANT:SEED") as caught:
        ablation.parse_job(text)
    assert "critical_no_router" in str(caught.value) and repr(text) in str(caught.value)


def test_table_and_picture_from_finished_runs(ablation, tmp_path):
    for seed, overall in enumerate((0.50, 0.56)):
        make_run(tmp_path / f"critical_seed{seed}", {"seed": seed}, overall)
    make_run(tmp_path / "all_seed0", {"selection.strategy": "all"}, 0.52, learner_s=8.0)
    table = ablation.write_table(tmp_path, [0, 1], 0.44, t_over_k=4.0)
    assert "| critical | 2 | 0.530 ± 0.042 | 0.090 ± 0.042 | 2.000 ± 0.000 | 5.000 ± 0.000 |" in table
    assert "| random | 0 | - | - | - | - |" in table
    assert "Learner time all-T / critical-K: 4.00; T/K = 4.00; off by 0%" in table
    assert (tmp_path / "ablation.md").read_text() == table
    picture = ablation.draw_comparison(tmp_path)
    assert picture == tmp_path / "compare.png" and picture.stat().st_size > 10_000
    assert ablation.draw_comparison(tmp_path / "critical_seed0" / "eval") is None  # no runs there: no picture


def test_a_damaged_run_is_left_out_of_the_table_and_the_picture_not_the_end_of_them(ablation, tmp_path, capsys):
    for seed, overall in enumerate((0.50, 0.56)):
        make_run(tmp_path / f"critical_seed{seed}", {"seed": seed}, overall)
    summary = tmp_path / "critical_seed1" / "eval" / "summary.json"
    summary.write_text(summary.read_text()[:40])  # cut by a killed process
    table = ablation.write_table(tmp_path, [0, 1], 0.44, t_over_k=4.0)
    assert "| critical | 1 | 0.500 | 0.060 | 2.000 | 5.000 |" in table  # seed 0 alone
    picture = ablation.draw_comparison(tmp_path)
    assert picture == tmp_path / "compare.png" and picture.is_file()
    err = capsys.readouterr().err
    assert f"left out of the table: {summary}" in err and f"left out of the picture: {summary}" in err


def test_the_predicted_learner_ratio_is_the_rollouts_T_over_K(ablation, tmp_path):
    assert ablation.steps_ratio(ablation.DEFAULT_CONFIG) == 12 / 3
    assert ablation.steps_ratio(ablation.DEFAULT_CONFIG, {"rollout.num_steps": 6}) == 6 / 3  # a --set counts
    halved = tmp_path / "halved.yaml"
    halved.write_text(ablation.DEFAULT_CONFIG.read_text().replace("rollout:\n", "rollout:\n  num_steps: 6\n", 1))
    assert ablation.steps_ratio(halved) == 6 / 3


def no_training(*_):
    raise AssertionError("a run was started")


def run_command(ablation, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`ablation.py ARGS` as its `__main__` runs it, no training started (a run would fail the test): (status,
    stderr). No picture is drawn."""
    monkeypatch.setattr(ablation, "run_variant", no_training)
    monkeypatch.setattr(ablation, "draw_comparison", lambda runs: None)
    monkeypatch.setattr("sys.argv", ["ablation.py", *args])
    capsys.readouterr()
    status = run_script(ablation.main, "ablation.py")
    return status, capsys.readouterr().err


@pytest.mark.parametrize("option", ["--parallel", "--iterations"])
@pytest.mark.parametrize("value", ["0", "-2"])
def test_counts_below_one_are_refused_by_the_command_line(ablation, monkeypatch, capsys, option, value):
    monkeypatch.setattr(ablation, "run_variant", no_training)
    monkeypatch.setattr("sys.argv", ["ablation.py", option, value])
    with pytest.raises(SystemExit) as exited:
        ablation.main()
    assert exited.value.code == 2
    assert f"argument {option}: must be >= 1, got {value}" in capsys.readouterr().err


def test_table_only_over_a_folder_without_runs_is_an_error_and_makes_no_folder(ablation, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "typo"
    status, error = run_command(ablation, monkeypatch, capsys, "--table-only", "--runs-dir", str(runs))
    assert status == 2
    assert error == (
        f"ablation.py: error: --runs-dir {runs}: no run VARIANT_seedN for --seeds 0 1 2 (it holds no runs); run "
        "without --table-only first, or give the seeds that were run\n"
    )
    assert not runs.exists()


def test_table_only_for_seeds_never_run_is_an_error_that_keeps_the_table(ablation, tmp_path, monkeypatch, capsys):
    """`--table-only --seeds 7` over runs of seed 0 replaced a good ablation.md with a table of dashes."""
    make_run(tmp_path / "critical_seed0", {"seed": 0}, 0.50)
    (tmp_path / "ablation.md").write_text("the good table\n")
    args = ("--table-only", "--runs-dir", str(tmp_path), "--seeds", "7")
    status, error = run_command(ablation, monkeypatch, capsys, *args)
    assert status == 2 and "no run VARIANT_seedN for --seeds 7 (it holds critical_seed0)" in error
    assert (tmp_path / "ablation.md").read_text() == "the good table\n"


def test_table_only_over_runs_without_an_evaluation_is_an_error_that_keeps_the_table(
    ablation, tmp_path, monkeypatch, capsys
):
    """Unfinished runs gave a table of dashes, replaced ablation.md and exited 0 (benchmarks walkthrough)."""
    make_run(tmp_path / "critical_seed0", {"seed": 0}, None, iterations=3)
    (tmp_path / "ablation.md").write_text("the good table\n")
    status, error = run_command(
        ablation, monkeypatch, capsys, "--table-only", "--runs-dir", str(tmp_path), "--seeds", "0"
    )
    assert status == 2 and "none of its runs VARIANT_seedN for --seeds 0 has a final evaluation" in error
    assert f"`maskfocus compare {tmp_path.resolve()}` says where each run stands" in error
    assert (tmp_path / "ablation.md").read_text() == "the good table\n"


def test_a_failed_run_is_one_line_naming_its_log_and_the_runs_not_started_are_dropped(
    ablation, tmp_path, monkeypatch, capsys
):
    """A variant that failed ended in a CalledProcessError traceback; its reason was only in its log."""
    import subprocess

    started = []

    def failing_train(command, **kwargs):
        started.append(command[command.index("--name") + 1])
        kwargs["stdout"].write("maskfocus train: error: model folder not found: /x\n")
        return subprocess.CompletedProcess(command, 2)

    monkeypatch.setattr(ablation.subprocess, "run", failing_train)
    monkeypatch.setattr("sys.argv", ["ablation.py", "--runs-dir", str(tmp_path), "--jobs", "random:0", "critical:1"])
    assert run_script(ablation.main, "ablation.py") == 1
    log = tmp_path / "random_seed0.log"
    assert capsys.readouterr().err == (
        f"ablation.py: run random_seed0 failed (exit 2); its log {log} ends: maskfocus train: error: model folder not "
        "found: /x\n"
    )
    assert started == ["random_seed0"]  # one run at a time: the second was never started


@pytest.mark.parametrize("runs", ["file", "file/ablation"])
def test_a_runs_dir_that_cannot_be_made_is_refused(ablation, tmp_path, monkeypatch, capsys, runs):
    (tmp_path / "file").write_text("")
    status, error = run_command(ablation, monkeypatch, capsys, "--runs-dir", str(tmp_path / runs))
    assert status == 2 and error.startswith(f"ablation.py: error: --runs-dir {tmp_path / runs}: ")


def test_a_missing_config_is_refused_before_any_run(ablation, tmp_path, monkeypatch, capsys):
    missing = tmp_path / "nope.yaml"
    args = ("--config", str(missing), "--runs-dir", str(tmp_path / "runs"), "--jobs", "random:0")
    status, error = run_command(ablation, monkeypatch, capsys, *args)
    assert status == 2 and error.startswith(f"ablation.py: error: config file not found: {missing} (from ")
    assert f"; the shipped configs are in {DEFAULT_CONFIG.parent}" in error  # where to look, for a path given relative
    assert not (tmp_path / "runs").exists()


def test_a_config_whose_model_folder_is_missing_is_refused_before_any_run(ablation, tmp_path, monkeypatch, capsys):
    """It was found only by the first run, whose log said so."""
    config = tmp_path / "moved.yaml"
    config.write_text(ablation.DEFAULT_CONFIG.read_text().replace("builtin:shapes-tiny", str(tmp_path / "gone"), 1))
    args = ("--config", str(config), "--runs-dir", str(tmp_path / "runs"), "--jobs", "random:0")
    status, error = run_command(ablation, monkeypatch, capsys, *args)
    assert status == 2 and f"model folder not found: {tmp_path / 'gone'}" in error
    assert not (tmp_path / "runs").exists()


def test_a_variant_the_config_cannot_take_is_refused_before_any_run(ablation, tmp_path, monkeypatch, capsys):
    clip = tmp_path / "clip.yaml"
    geneval = "  - name: geneval\n    weight: 1.0\n    mode: partial"
    assert geneval in ablation.DEFAULT_CONFIG.read_text()
    clip.write_text(ablation.DEFAULT_CONFIG.read_text().replace(geneval, "  - name: clip\n    weight: 1.0"))
    variants = ("--variants", "critical", "random", "critical_strict_reward")
    args = ("--config", str(clip), "--runs-dir", str(tmp_path / "runs"), *variants)
    status, error = run_command(ablation, monkeypatch, capsys, *args)
    assert status == 2
    assert error.startswith(
        f"ablation.py: error: variant critical_strict_reward (rewards.0.strict=true) does not apply to --config {clip}"
    )
    assert "this clip term would ignore `strict` (`strict` is read by geneval terms)" in error


def test_the_table_covers_the_seeds_of_the_jobs_run(ablation, tmp_path, monkeypatch, capsys):
    make_run(tmp_path / "critical_seed0", {"seed": 0}, 0.50)
    make_run(tmp_path / "random_seed5", {"seed": 5, "selection.strategy": "random"}, 0.40)
    args = ("--runs-dir", str(tmp_path), "--jobs", "random:5", "--base-overall", "0.3")
    monkeypatch.setattr(ablation, "run_variant", lambda config, runs, name, seed, *_: runs / f"{name}_seed{seed}")
    monkeypatch.setattr(ablation, "draw_comparison", lambda runs: None)
    monkeypatch.setattr("sys.argv", ["ablation.py", *args])
    assert run_script(ablation.main, "ablation.py") == 0
    table = (tmp_path / "ablation.md").read_text()
    assert f"table: {tmp_path / 'ablation.md'}" in capsys.readouterr().out
    assert "| random | 1 | 0.400 | 0.100 |" in table and "| critical | 1 | 0.500 | 0.200 |" in table
    assert ablation.table_seeds([0, 1, 2], None) == [0, 1, 2]
    assert ablation.table_seeds([0, 1], [("random", 5), ("all", 0)]) == [0, 1, 5]


def test_set_reaches_every_run_and_may_not_change_what_a_variant_sets(ablation, tmp_path, monkeypatch, capsys):
    """A quick try of the script needed a full evaluation per run: `--set` passes settings to every run."""
    import subprocess

    commands = []

    def recorded_train(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(ablation.subprocess, "run", recorded_train)
    monkeypatch.setattr(ablation, "draw_comparison", lambda runs: None)
    quick = ("--set", "eval.num_images_per_prompt=1", "--iterations", "2")
    monkeypatch.setattr("sys.argv", ["ablation.py", "--runs-dir", str(tmp_path), "--jobs", "random:0", *quick])
    assert run_script(ablation.main, "ablation.py") == 0
    [command] = commands
    assert " ".join(command).endswith(
        "--set eval.num_images_per_prompt=1 --set selection.strategy=random --iterations 2"
    )
    for given, message in (
        ("selection.strategy=all", "--set selection.strategy: the variant random sets it; leave it to the variant"),
        ("eval.num_images_per_prompt=0", "--set eval.num_images_per_prompt: Input should be greater than or equal"),
        ("seed=5", "--set seed: the script sets it for each run; give --seeds"),
        ("train.out_dir=/tmp/elsewhere", "--set train.out_dir: the script sets it for each run; give --runs-dir"),
        ("train.num_iterations=9", "--set train.num_iterations: the script sets it for each run; give --iterations"),
    ):
        status, error = run_command(ablation, monkeypatch, capsys, "--jobs", "random:0", "--set", given)
        assert status == 2 and message in error
