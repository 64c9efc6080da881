"""maskfocus/compare_standing.py through `maskfocus compare`'s table: where a run without a final evaluation stands
(running, trained, diverged, failed, stopped) with the command that goes on, and the note on runs a resume changed."""

from __future__ import annotations

import os
from pathlib import Path

from support import make_run, rewrite_metrics

from maskfocus.compare import comparison_table, group_runs
from maskfocus.compare_folders import find_run_folders
from maskfocus.compare_run import load_run
from maskfocus.run_io import evaluate_command


def test_unfinished_runs_are_listed_and_kept_out_of_the_scores(tmp_path):
    make_run(tmp_path / "done", {}, 0.5)
    make_run(tmp_path / "running", {}, None, iterations=3)
    runs = [load_run(folder) for folder in find_run_folders([tmp_path])]
    groups, common = group_runs(runs)
    assert list(groups) == ["same config"] and common == {}
    table = comparison_table(groups, None, common)
    assert "| A: same config | 1 | seed 0 | 0.500 | - |" in table
    running = tmp_path / "running"
    assert (
        f"no final evaluation (eval/summary.json) yet: {running}: stopped part-way, logged up to iteration 2 of 0-249; "
        f"no checkpoint was written yet (`maskfocus train --resume {running}` starts the run again from the base model)"
    ) in table.splitlines()


def unfinished_line(folder: Path) -> str:
    """What the table says of the run in `folder`, which has no final evaluation (the run folder left out)."""
    groups, common = group_runs([load_run(folder)])
    table = comparison_table(groups, None, common)
    line = next(line for line in table.splitlines() if line.startswith("no final evaluation"))
    return line.removeprefix(f"no final evaluation (eval/summary.json) yet: {folder}: ")


def test_a_trained_run_without_its_evaluation_is_given_the_eval_command_the_trainer_gives(tmp_path):
    """Every run without eval/summary.json read `no final evaluation (eval/summary.json) yet: RUN, last iteration N`,
    finished with train.final_eval: false or not, with no command that evaluates it."""
    import shlex

    from maskfocus.cli import build_parser
    from maskfocus.config import default_run_config
    from maskfocus.trainer import after_training_message

    run = make_run(tmp_path / "run", {"train.num_iterations": 5, "train.final_eval": False}, None)
    (run / "model").mkdir()
    command = evaluate_command(run)
    evaluate = f"evaluate it with `{command}`"
    assert unfinished_line(run) == f"trained all 5 iterations with train.final_eval: false; {evaluate}"
    assert f"evaluate it with `{command}`" in after_training_message(run, default_run_config(), "stopped on SIGINT")
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert (args.config, args.model) == (str(run / "config.yaml"), str(run / "model"))
    assert (args.out, args.summary) == (str(run / "eval" / "results.jsonl"), str(run / "eval" / "summary.json"))
    # a real model's run skips the built-in evaluation, which scores shapes-world prompts: the command needs a prompt
    # file (a review found it suggested the shapes benchmark, which fails or means nothing there)
    real = make_run(tmp_path / "real", {"train.num_iterations": 5, "train.final_eval": False, "model.path": "m"}, None)
    (real / "model").mkdir()
    assert unfinished_line(real) == (
        f"trained all 5 iterations with train.final_eval: false; evaluate it with `{evaluate_command(real)}`, adding "
        "`--metadata FILE.jsonl` where the model is not a shapes-world one (FILE.jsonl: GenEval's"
        " evaluation_metadata.jsonl or another GenEval-format prompt file; eval.benchmark shapes-geneval scores "
        "shapes-world prompts only)"
    )
    stopped = make_run(tmp_path / "stopped", {"train.num_iterations": 5}, None)  # Ctrl-C during its evaluation
    (stopped / "model").mkdir()
    evaluate = f"evaluate it with `{evaluate_command(stopped)}`"
    assert unfinished_line(stopped) == f"trained all 5 iterations; its final evaluation did not finish; {evaluate}"


def test_a_trained_run_without_its_model_is_told_that_a_resume_writes_it(tmp_path):
    run = make_run(tmp_path / "run", {"train.num_iterations": 5}, None)
    (run / "checkpoints" / "iter_000004").mkdir(parents=True)
    assert unfinished_line(run) == (
        "trained all 5 iterations, but not its model/ (a resume writes it and the final evaluation); resume from "
        f"iter_000004 with `maskfocus train --resume {run}`"
    )


def test_a_diverged_run_and_a_run_of_nan_rewards_are_named_with_what_to_do(tmp_path):
    loss = make_run(tmp_path / "loss", {"train.num_iterations": 50}, None)
    rewrite_metrics(loss, lambda record: {"loss/skipped_nonfinite": 1.0 if record["iteration"] >= 2 else 0.5})
    assert unfinished_line(loss) == (
        "diverged: the loss or its gradient was non-finite at every optimizer step from iteration 2 on "
        "(loss/skipped_nonfinite); "
        "start again with a lower optim.learning_rate"
    )
    last = make_run(tmp_path / "last", {"train.num_iterations": 5}, None)  # diverged up to its last iteration
    rewrite_metrics(last, lambda record: {"loss/skipped_nonfinite": 1.0 if record["iteration"] >= 3 else 0.0})
    assert unfinished_line(last).startswith(
        "diverged: the loss or its gradient was non-finite at every optimizer step from iteration 3"
    )
    nan = make_run(tmp_path / "nan", {"train.num_iterations": 50}, None)
    rewrite_metrics(nan, lambda record: {"reward/nan_group_fraction": 1.0 if record["iteration"] >= 3 else 0.0})
    assert unfinished_line(nan).startswith(
        "stopped: every group's reward was NaN from iteration 3 on (reward/nan_group_fraction); fix the reward term, "
        f"then no checkpoint was written yet (`maskfocus train --resume {nan}`"
    )


def test_a_failed_run_names_its_error_log_until_a_resume_logs_after_it(tmp_path):

    run = make_run(tmp_path / "run", {"train.num_iterations": 50}, None)
    (run / "checkpoints" / "iter_000004").mkdir(parents=True)
    (run / "error.log").write_text("Traceback ...\n")
    resume = f"resume from iter_000004 with `maskfocus train --resume {run}`"
    failed = f"failed part-way, logged up to iteration 4 of 0-49 (see {run / 'error.log'})"
    assert unfinished_line(run) == f"{failed}; {resume}"
    later = (run / "error.log").stat().st_mtime + 10  # a resume from that failure logged after it, then stopped
    os.utime(run / "metrics.jsonl", (later, later))
    assert unfinished_line(run) == f"stopped part-way, logged up to iteration 4 of 0-49; {resume}"


def test_a_run_that_never_logged_and_one_running_now_say_so(tmp_path):
    from maskfocus import run_lock

    fresh = make_run(tmp_path / "fresh", {}, None, iterations=0)
    assert unfinished_line(fresh) == (
        "stopped before logging an iteration; no checkpoint was written yet "
        f"(`maskfocus train --resume {fresh}` starts the run again from the base model)"
    )
    running = make_run(tmp_path / "running", {"train.num_iterations": 50}, None)
    with run_lock.held(running):
        assert unfinished_line(running) == "running now (logged up to iteration 4 of 0-49; run.lock)"


def test_a_run_resumed_with_other_settings_is_named_with_the_settings_it_changed(tmp_path):
    """A run trained 3 iterations on Ray, then resumed with `--executor local` for 5 more, is grouped by its latest
    config.yaml (train.executor=local) with no word of its Ray iterations (config.before_resume_*.yaml)."""
    from maskfocus.config import default_run_config, dump_config

    def kept_before_resume(run: Path, name: str, settings: dict) -> None:
        dump_config(default_run_config(settings), run / f"config.before_resume_{name}.yaml")

    resumed = make_run(tmp_path / "resumed", {"train.executor": "local", "train.num_iterations": 8}, 0.5)
    kept_before_resume(resumed, "iter_000002", {"train.executor": "ray", "train.num_iterations": 3})
    extended = make_run(tmp_path / "extended", {"train.num_iterations": 8, "seed": 1}, 0.5)
    kept_before_resume(extended, "iter_000002", {"train.num_iterations": 3, "seed": 1})  # only extended: no note
    twice = make_run(tmp_path / "twice", {"rollout.group_size": 8, "seed": 2}, 0.5)  # .2: the later resume
    kept_before_resume(twice, "iter_000002", {"rollout.group_size": 4, "seed": 2})
    kept_before_resume(twice, "iter_000002.2", {"rollout.group_size": 6, "seed": 2})
    runs = [load_run(folder) for folder in (resumed, extended, twice)]
    changes = [["train.executor: ray -> local"], [], ["rollout.group_size: 4 -> 6 -> 8"]]
    assert [run.resume_changes for run in runs] == changes
    (twice / "config.before_resume_iter_000005.yaml").write_text("train: [1\n")
    changes[2].append("config.before_resume_iter_000005.yaml (unreadable)")
    assert load_run(twice).resume_changes == changes[2]
    groups, common = group_runs(runs, ignore=("rollout.group_size",))
    notes = [line for line in comparison_table(groups, None, common).splitlines() if "was resumed" in line]
    assert notes == [
        f"note: {resumed} was resumed with other settings and is grouped by its latest: train.executor: ray -> local",
        f"note: {twice} was resumed with other settings and is grouped by its latest: rollout.group_size: 4 -> 6 -> 8",
    ]
