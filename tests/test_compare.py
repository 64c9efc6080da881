"""maskfocus/compare.py and `maskfocus compare`: grouping runs by config, the table's numbers against a
hand computation, bad paths, and the picture (unfinished and resumed runs: test_compare_standing.py)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
from PIL import Image
from support import make_run, rewrite_metrics

from maskfocus.cli import main
from maskfocus.compare import NO_BASE_NOTE, base_summary, comparison_table, group_runs
from maskfocus.compare_folders import find_run_folders
from maskfocus.compare_run import CompareError, load_run


@pytest.fixture
def ablation_runs(tmp_path: Path) -> Path:
    """Three seeds of the default and two of random steps, in one folder, with different output folders."""
    runs = tmp_path / "runs"
    for seed, overall in enumerate((0.50, 0.56, 0.53)):
        # how often a run logs, previews and checkpoints, how many checkpoints it keeps and how long it waits on a
        # stall do not change what it learns either
        settings = {"seed": seed, "train.out_dir": f"out{seed}", "train.image_every": 10 + seed}
        settings |= {"train.keep_checkpoints": seed + 1, "ray.timeout_s": 60.0 * (seed + 1)}
        make_run(runs / f"critical_seed{seed}", {**settings, "train.checkpoint_every": 5 * (seed + 1)}, overall)
    for seed, overall in enumerate((0.40, 0.46)):
        make_run(runs / f"random_seed{seed}", {"seed": seed, "selection.strategy": "random"}, overall, learner_s=3.0)
    return runs


def test_seeds_output_folders_and_output_intervals_do_not_split_groups(ablation_runs):
    runs = [load_run(folder) for folder in find_run_folders([ablation_runs])]
    groups, common = group_runs(runs)
    # two groups tie on the key that splits them, so each label names its value and no setting is common
    assert list(groups) == ["selection.strategy=critical", "selection.strategy=random"]
    assert [len(group) for group in groups.values()] == [3, 2]
    assert common == {}


def test_table_numbers_match_a_hand_computation(ablation_runs):
    runs = [load_run(folder) for folder in find_run_folders([ablation_runs])]
    groups, common = group_runs(runs)
    base = {"overall": 0.44, "tags": {"single_object": 0.86, "two_object": 0.45}}
    table = comparison_table(groups, base, common)
    rows = {line.split(" | ")[0]: line.split(" | ") for line in table.splitlines() if line.startswith("| ")}
    critical = rows["| A: selection.strategy=critical"]
    overall = [0.50, 0.56, 0.53]
    assert critical[1:3] == ["3", "seeds 0, 1, 2"]
    assert critical[3] == f"{statistics.mean(overall):.3f} ± {statistics.stdev(overall):.3f}"
    gains = [value - 0.44 for value in overall]
    assert critical[4] == f"{statistics.mean(gains):.3f} ± {statistics.stdev(gains):.3f}"
    assert critical[5] == f"{statistics.mean([v + 0.1 for v in overall]):.3f} ± {statistics.stdev(overall):.3f}"
    random_row = rows["| B: selection.strategy=random"]
    assert random_row[3] == "0.430 ± 0.042" and random_row[-2] == "3.000 ± 0.000"
    assert rows["| base model"][3:7] == ["0.440", "-", "0.860", "0.450"]
    assert "the usual settings" not in table


def test_a_run_from_before_a_key_was_added_groups_with_a_newer_run_of_the_same_settings(tmp_path):
    """An older config.yaml lacks the keys added since (they default to the old behaviour); a key that really
    differs still splits the runs."""
    import yaml

    old, new = make_run(tmp_path / "old", {}, 0.5), make_run(tmp_path / "new", {}, 0.52)
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["rollout"]["held_out"], config["grpo"]["behaviour_weight_cap"]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    groups, _ = group_runs([load_run(old), load_run(new)])
    assert [len(group) for group in groups.values()] == [2]
    meaning = make_run(tmp_path / "meaning", {"rollout.held_out": "meaning"}, 0.5)
    groups, _ = group_runs([load_run(old), load_run(new), load_run(meaning)])
    assert list(groups) == ["rollout.held_out=text", "rollout.held_out=meaning"]


def test_null_detector_thresholds_of_older_runs_group_with_the_values_written_now(tmp_path):
    """The thirty-third session's runs wrote null thresholds (then: the kind's default); runs now write 0.3 / 0.9 /
    0.5. A config today's tree rejects (a key removed since) is still compared as written."""
    import yaml

    old, new = make_run(tmp_path / "old", {}, 0.5), make_run(tmp_path / "new", {}, 0.52)
    config = yaml.safe_load((old / "config.yaml").read_text())
    config["rewards"][0]["detector"].update(score_threshold=None, counting_score_threshold=None, nms_iou=None)
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    groups, _ = group_runs([load_run(old), load_run(new)])
    assert [len(group) for group in groups.values()] == [2]
    config["sampler"]["removed_key"] = 1
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    groups, _ = group_runs([load_run(old), load_run(new)])
    assert len(groups) == 2 and any("sampler.removed_key=<absent>" in label for label in groups)
    config["sampler"].pop("removed_key")
    config["train"]["removed_key"] = 3  # refused by today's tree; the detector's null thresholds are still read
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    groups, _ = group_runs([load_run(old), load_run(new)], ignore=("train.removed_key",))
    assert [len(group) for group in groups.values()] == [2]


def test_runs_are_compared_by_the_T_their_rollouts_sampled_with(tmp_path):
    unset = make_run(tmp_path / "unset", {}, 0.5)
    explicit = make_run(tmp_path / "explicit", {"rollout.num_steps": 12}, 0.52)  # sampler.num_steps is 12
    fewer = make_run(tmp_path / "fewer", {"rollout.num_steps": 6}, 0.49)
    groups, common = group_runs([load_run(unset), load_run(explicit), load_run(fewer)])
    assert list(groups) == ["rollout.num_steps=12", "rollout.num_steps=6"]
    assert [len(group) for group in groups.values()] == [2, 1] and common == {}


def test_the_seeds_cell_names_its_values_as_seeds(tmp_path):
    """`| 1 | 0 |` (one evaluated run, of seed 0) read as no seeds."""
    make_run(tmp_path / "one", {"seed": 0}, 0.5)
    make_run(tmp_path / "none", {"selection.strategy": "random"}, None)
    groups, common = group_runs([load_run(folder) for folder in find_run_folders([tmp_path])])
    table = comparison_table(groups, None, common)
    assert "| seeds |" in table.splitlines()[0]
    assert "| B: selection.strategy=critical | 1 | seed 0 | 0.500 |" in table
    assert "| A: selection.strategy=random | 0 | - | - |" in table


def test_seconds_per_iteration_leave_out_the_first_iteration_and_runs_of_only_that_one_are_named(tmp_path):
    """The first iteration includes torch.compile's one-off compile (12-21 s against 4-9 s later): it counted in the
    median, and a run that logged only that one showed it as its time per iteration."""

    def compiling_first(record):
        first = record["iteration"] == 0
        return {"perf/iteration_seconds": 16.0 if first else 5.0, "perf/learner_seconds": 9.0 if first else 2.0}

    two, one = make_run(tmp_path / "two", {}, 0.5, iterations=2), make_run(tmp_path / "one", {"seed": 1}, 0.6, 1)
    rewrite_metrics(two, compiling_first)
    rewrite_metrics(one, compiling_first)
    assert (load_run(two).iteration_seconds, load_run(two).learner_seconds) == (5.0, 2.0)
    groups, common = group_runs([load_run(two), load_run(one)])
    table = comparison_table(groups, None, common)
    assert "| A: same config | 2 | seeds 0, 1 | 0.550 ± 0.071 |" in table and "| 2.000 | 5.000 |\n" in table
    assert (
        "note: the s/iter columns leave out runs that logged only their first iteration, whose time includes the "
        f"one-off compile and warm-up: {one} (16.0 s)"
    ) in table.splitlines()


def test_a_broken_metrics_or_summary_file_is_a_clear_error(ablation_runs):
    folder = ablation_runs / "critical_seed0"
    (folder / "eval" / "summary.json").write_text("{not json")
    with pytest.raises(CompareError, match=r"critical_seed0/eval/summary.json: not JSON \(Expecting property name"):
        load_run(folder)
    (folder / "metrics.jsonl").write_text('{"iteration": 0}\n{broken\n{"iteration": 2}\n')
    with pytest.raises(CompareError, match=r"metrics.jsonl:2"):
        load_run(folder)


def test_a_damaged_run_is_left_out_of_a_comparison_of_many_and_named(ablation_runs, tmp_path, capsys):
    """A summary.json cut by a killed process ended the whole comparison; now that run is named and left out. Alone,
    or with every run damaged, its error is still the command's."""
    folder = ablation_runs / "critical_seed0"
    (folder / "eval" / "summary.json").write_text('{"overall": 0.5, "ta')
    assert main(["compare", str(ablation_runs), "--out", str(tmp_path / "cmp.png")]) == 0
    captured = capsys.readouterr()
    assert "left out: " in captured.err and "critical_seed0/eval/summary.json: not JSON" in captured.err
    assert "| A: selection.strategy=critical | 2 | seeds 1, 2 |" in captured.out  # the other two seeds of its group
    assert main(["compare", str(folder), "--out", str(tmp_path / "one.png")]) == 2
    assert "critical_seed0/eval/summary.json: not JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("summary", "problem"),
    [
        ([1, 2], "no numeric 'overall'"),
        ({"tags": {}}, "no numeric 'overall'"),
        ({"overall": "0.5", "tags": {}}, "no numeric 'overall'"),
        ({"overall": None, "tags": {}}, "no numeric 'overall'"),
        ({"overall": 0.5}, "'tags' is not a mapping of tag -> number"),
        ({"overall": 0.5, "tags": [0.5]}, "'tags' is not a mapping of tag -> number"),
        ({"overall": 0.5, "tags": {"colors": None}}, "'tags' is not a mapping of tag -> number"),
    ],
)
def test_a_summary_of_the_wrong_shape_is_named_in_a_run_and_as_the_base(tmp_path, summary, problem):
    folder = make_run(tmp_path / "run", {}, overall=0.5)
    (folder / "eval" / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(CompareError, match=rf"run/eval/summary.json: {problem}; expected `maskfocus eval --summary`"):
        load_run(folder)
    with pytest.raises(CompareError, match=rf"^--base .*summary.json: {problem}"):
        base_summary([], folder / "eval" / "summary.json")


@pytest.mark.parametrize("line", ['{"reward/mean": 0.5}', '{"iteration": "3"}', '{"iteration": true}'])
def test_a_metrics_record_without_a_whole_number_iteration_is_named(tmp_path, line):
    folder = make_run(tmp_path / "run", {}, overall=0.5)
    with (folder / "metrics.jsonl").open("a") as metrics:
        metrics.write(line + "\n" + '{"iteration": 9}\n')
    with pytest.raises(
        CompareError, match=r"run/metrics.jsonl: record 6 \(blank lines not counted\) has no whole-number 'iteration'"
    ):
        load_run(folder)


def test_a_metrics_line_that_is_no_record_is_named_by_its_line(tmp_path):
    folder = make_run(tmp_path / "run", {}, overall=0.5)
    with (folder / "metrics.jsonl").open("a") as metrics:
        metrics.write("[1, 2]\n" + '{"iteration": 9}\n')
    with pytest.raises(CompareError, match=r"run/metrics.jsonl:6: not a JSON record of one iteration \(got list\)"):
        load_run(folder)


def test_a_config_that_is_not_yaml_is_named(tmp_path):
    folder = make_run(tmp_path / "run", {}, overall=0.5)
    (folder / "config.yaml").write_text("seed: [1\n")
    with pytest.raises(CompareError, match=r"run/config.yaml:2:1: not valid YAML: while parsing a flow sequence"):
        load_run(folder)


def test_evaluations_of_different_sizes_are_flagged(tmp_path):
    run = load_run(make_run(tmp_path / "a", {}, 0.5))
    run.final["num_images"] = 8
    groups, common = group_runs([run])
    tags = run.final["tags"]
    assert "not like for like" in comparison_table(groups, {"overall": 0.4, "tags": tags, "num_images": 2352}, common)
    assert "not like for like" not in comparison_table(groups, {"overall": 0.4, "tags": tags, "num_images": 8}, common)
    evaluated = {"prompts": 2, "images_per_prompt": 4, "seed": 0, "judge": "detector", "sampler": {"num_steps": 12}}
    run.final["evaluated"] = evaluated
    same = {"overall": 0.4, "tags": tags, "num_images": 8, "evaluated": dict(evaluated)}
    assert "not like for like" not in comparison_table(groups, same, common)
    fewer_steps = {**same, "evaluated": {**evaluated, "sampler": {"num_steps": 8}}}
    table = comparison_table(groups, fewer_steps, common)
    assert "note: the evaluations differ in sampler (their `evaluated`): not like for like" in table


def test_ignored_keys_and_sections_do_not_split_groups(ablation_runs, tmp_path, capsys):
    runs = [load_run(folder) for folder in find_run_folders([ablation_runs])]
    groups, common = group_runs(runs, ignore=("selection",))
    assert list(groups) == ["same config"] and len(groups["same config"]) == 5 and common == {}
    assert list(group_runs(runs, ignore=("selection.strategy",))[0]) == ["same config"]
    with pytest.raises(CompareError, match="--ignore selektion: no such config key or section"):
        group_runs(runs, ignore=("selektion",))
    picture = tmp_path / "c.png"
    assert main(["compare", str(ablation_runs), "--ignore", "selection", "--out", str(picture)]) == 0
    assert "| A: same config | 5 | seeds 0, 1, 2, 0, 1 |" in capsys.readouterr().out


def test_a_run_named_twice_counts_once(ablation_runs):
    folders = find_run_folders([ablation_runs / "random_seed1", ablation_runs, ablation_runs / "random_seed1"])
    assert len(folders) == 5 and folders[0] == ablation_runs / "random_seed1"


def test_bad_paths_name_the_path(tmp_path):
    with pytest.raises(CompareError, match="missing: no such folder"):
        find_run_folders([tmp_path / "missing"])
    config = make_run(tmp_path / "run", {}, 0.5) / "config.yaml"
    with pytest.raises(CompareError, match=r"run/config.yaml: a file; give the run folder that holds it"):
        find_run_folders([config])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match=r"empty: neither a run folder"):
        find_run_folders([tmp_path / "empty"])
    with pytest.raises(CompareError, match=r"--base .*nope.json: no such file"):
        base_summary([], tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(CompareError, match=r"--base .*bad.json: not JSON"):
        base_summary([], tmp_path / "bad.json")


def test_builtin_base_comes_from_the_pretraining_measurement(ablation_runs):
    runs = [load_run(folder) for folder in find_run_folders([ablation_runs])]
    base = base_summary(runs, None)
    assert base is not None and 0.0 < base["overall"] < 1.0 and "two_object" in base["tags"]


def test_cli_writes_table_and_picture(ablation_runs, tmp_path, capsys):
    picture, markdown = tmp_path / "cmp.png", tmp_path / "cmp.md"
    assert main(["compare", str(ablation_runs), "--out", str(picture), "--markdown", str(markdown)]) == 0
    printed = capsys.readouterr().out
    assert "| B: selection.strategy=random | 2 | seeds 0, 1 |" in printed and f"picture: {picture}" in printed
    assert markdown.read_text() in printed
    with Image.open(picture) as image:
        assert image.width > 1000 and image.height > 400


def test_outputs_that_would_overwrite_a_compared_runs_files_or_the_base_are_refused(ablation_runs, tmp_path, capsys):
    """`--markdown RUN/config.yaml` replaced the run's config with the table and exited 0."""
    run = ablation_runs / "critical_seed0"
    config = (run / "config.yaml").read_text()
    (run / "reward_curve.png").write_bytes(b"the run's own curve")
    kept = run / "config.before_resume_iter_000001.yaml"  # a resume keeps the config it replaced
    kept.write_text(config)
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"overall": 0.4, "tags": {"single_object": 0.8}}))
    for option, path, problem in (
        ("--markdown", run / "config.yaml", f"is a file of the run {run}"),
        ("--out", run / "reward_curve.png", f"is a file of the run {run}"),
        ("--markdown", kept, f"is a file of the run {run}"),
        ("--markdown", base, "is the --base summary"),
    ):
        out = ["--out", str(tmp_path / "cmp.png")] if option == "--markdown" else []
        argv = ["compare", str(ablation_runs), "--base", str(base), *out, option, str(path)]
        assert main(argv) == 2
        assert f"{option} {path}: {problem}" in capsys.readouterr().err
    assert (run / "config.yaml").read_text() == config
    assert (run / "reward_curve.png").read_bytes() == b"the run's own curve"
    assert kept.read_text() == config
    for _ in range(2):  # a new file there is fine, and so is replacing it with the next comparison
        assert main(["compare", str(ablation_runs), "--out", str(run / "compare.png")]) == 0


def test_cli_bad_path_is_a_user_error(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "x.png")]) == 2
    assert "maskfocus compare: error:" in capsys.readouterr().err


def test_train_ends_with_the_gain_over_the_base_model(tmp_path):
    from maskfocus.cli_train import gain_line

    builtin = make_run(tmp_path / "runs" / "a", {}, 0.55)
    base = base_summary([load_run(builtin)], None)
    summary = builtin / "eval" / "summary.json"  # scored on the base's tags: like for like, so no note
    summary.write_text(json.dumps({**json.loads(summary.read_text()), "tags": dict.fromkeys(base["tags"], 0.55)}))
    line = gain_line(builtin, 0.55)
    assert line.startswith(f"overall {base['overall']:.3f} (base model) -> 0.550 ({0.55 - base['overall']:+.3f})")
    assert line.endswith(f"maskfocus compare {tmp_path / 'runs'}")
    other = make_run(tmp_path / "runs" / "b", {"model.path": str(tmp_path / "my_model")}, 0.55)
    assert gain_line(other, 0.55).startswith("overall 0.550 (no base-model evaluation to compare with)")


def test_a_table_without_a_base_row_says_why_and_how_to_give_one(tmp_path):
    """Runs from another model have no built-in measurement to compare with: the empty gain column is explained."""
    run = make_run(tmp_path / "runs" / "a", {"model.path": str(tmp_path / "my_model")}, 0.55)
    runs = [load_run(run)]
    groups, common = group_runs(runs)
    table = comparison_table(groups, base_summary(runs, None), common)
    assert "base model |" not in table and table.rstrip().endswith(NO_BASE_NOTE)
    assert "--base" in NO_BASE_NOTE
    builtin = [load_run(make_run(tmp_path / "runs" / "b", {}, 0.55))]
    groups, common = group_runs(builtin)
    assert NO_BASE_NOTE not in comparison_table(groups, base_summary(builtin, None), common)


def test_curve_of_another_metric_and_an_unknown_key_lists_the_logged_ones(ablation_runs, tmp_path, capsys):
    folder = ablation_runs / "critical_seed0"
    assert load_run(folder, "perf/learner_seconds").curve == [(i, 2.0) for i in range(5)]
    assert load_run(folder).curve == [(i, 0.5 + 0.05 * i) for i in range(5)]
    picture = tmp_path / "kl.png"
    assert main(["compare", str(ablation_runs), "--curve", "perf/learner_seconds", "--out", str(picture)]) == 0
    assert picture.is_file()
    assert main(["compare", str(ablation_runs), "--curve", "loss/kll", "--out", str(picture)]) == 2
    error = capsys.readouterr().err
    assert "--curve loss/kll: no run logged it" in error and "perf/learner_seconds, reward/mean" in error


def test_a_run_without_config_in_a_folder_of_runs_is_named_not_skipped_silently(tmp_path, capsys):
    make_run(tmp_path / "runs" / "good", {}, overall=0.5)
    broken = make_run(tmp_path / "runs" / "noconfig", {"seed": 1}, overall=0.5)
    (broken / "config.yaml").unlink()
    (tmp_path / "runs" / "notes").mkdir()  # neither metrics nor checkpoints: not a run, nothing said
    assert main(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "c.png")]) == 0
    error = capsys.readouterr().err
    assert f"left out {broken}: it holds a run's metrics or checkpoints but no config.yaml" in error
    assert "notes" not in error


def test_a_folder_of_only_configless_runs_names_them_in_its_error(tmp_path):
    broken = make_run(tmp_path / "runs" / "noconfig", {}, overall=0.5)
    (broken / "config.yaml").unlink()
    with pytest.raises(CompareError, match=rf"{broken}: a run's metrics or checkpoints but no config.yaml"):
        find_run_folders([tmp_path / "runs"])
    with pytest.raises(CompareError, match=rf"^{broken}: neither .*; {broken}: a run's metrics"):
        find_run_folders([broken])  # the run folder itself, given directly


def test_runs_in_subfolders_of_a_folder_of_runs_are_found(tmp_path):
    """`train --name ablation/seed0` puts a run in runs/ablation/; `compare runs` left those out without a word,
    and with no run directly in runs/ said that runs/ held none."""
    runs = tmp_path / "runs"
    for name in ("ablation/seed0", "ablation/seed1", "sweep/lr/high"):
        make_run(runs / name, {"seed": 0}, overall=0.5)
    make_run(runs / "a" / "b" / "c" / "d", {}, overall=0.5)  # deeper than RUN_SEARCH_DEPTH (3) below runs/
    expected = [runs / "ablation" / "seed0", runs / "ablation" / "seed1", runs / "sweep" / "lr" / "high"]
    assert find_run_folders([runs]) == expected
    make_run(runs / "top", {}, overall=0.5)
    assert find_run_folders([runs]) == [*expected, runs / "top"]
    assert find_run_folders([runs / "ablation"]) == expected[:2]


def test_a_closed_pipe_ends_the_command_quietly(ablation_runs, tmp_path):
    import subprocess
    import sys

    # unbuffered: the table goes out at once and `head` has gone by the time the picture's line follows
    command = f"PYTHONUNBUFFERED=1 {sys.executable} -m maskfocus.cli compare {ablation_runs} --out {tmp_path / 'c.png'}"
    command += " | head -1"
    result = subprocess.run(
        ["bash", "-c", command + "; echo status ${PIPESTATUS[0]} >&2"], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.startswith("| config | evaluated runs |") and result.stdout.count("\n") == 1
    assert "Traceback" not in result.stderr and "status 141" in result.stderr


def test_a_configless_run_in_a_subfolder_of_runs_is_named_too(tmp_path, capsys):
    make_run(tmp_path / "runs" / "ablation" / "seed0", {}, overall=0.5)
    broken = make_run(tmp_path / "runs" / "ablation" / "seed1", {"seed": 1}, overall=0.5)
    (broken / "config.yaml").unlink()
    assert main(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "c.png")]) == 0
    assert f"left out {broken}: it holds a run's metrics or checkpoints but no config.yaml" in capsys.readouterr().err
    (tmp_path / "runs" / "ablation" / "seed0" / "config.yaml").unlink()
    with pytest.raises(CompareError, match=rf"{broken}: a run's metrics or checkpoints but no config.yaml"):
        find_run_folders([tmp_path / "runs"])
