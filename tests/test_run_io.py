"""Run folders: a new run never writes into a folder that already holds one; metrics.jsonl across a resume; the
final float32 model and the resume hint from the checkpoints (tests/test_run_io_curve.py: the reward curve)."""

from __future__ import annotations

import json

import pytest
import torch

from maskfocus.config import ConfigError, config_from_dict
from maskfocus.run_io import (
    MetricsLog,
    RecentReward,
    float32_final_model,
    new_run_folder,
    read_metrics,
    resume_hint,
    rewind_metrics,
    running_counts,
    save_checkpoint,
)


def test_new_run_folder_writes_the_config_and_refuses_a_folder_that_holds_a_run(tmp_path):
    config = config_from_dict({"train": {"out_dir": str(tmp_path)}})
    folder = new_run_folder(config, "first")
    assert (folder / "config.yaml").is_file()
    assert new_run_folder(config, "first") == folder  # nothing logged yet: the same name may be reused
    log = MetricsLog(folder / "metrics.jsonl")
    log.write({"iteration": 0})
    log.close()
    with pytest.raises(ConfigError, match=r"already holds a run.*--resume"):
        new_run_folder(config, "first")
    assert (folder / "metrics.jsonl").read_text().count("\n") == 1  # the earlier run's records are untouched


@pytest.mark.parametrize("name", ["", ".", "../elsewhere", "a/../../b", "/abs"])
def test_a_run_name_stays_inside_train_out_dir(tmp_path, name):
    config = config_from_dict({"train": {"out_dir": str(tmp_path / "runs")}})
    with pytest.raises(ConfigError, match=rf"--name '{name}': a run name is a folder path inside train.out_dir"):
        new_run_folder(config, name)
    assert not (tmp_path / "runs").exists() and sorted(tmp_path.iterdir()) == []
    assert new_run_folder(config, "ablation/seed0") == tmp_path / "runs" / "ablation" / "seed0"


@pytest.mark.parametrize(("out_dir", "name"), [("taken", None), ("taken/below", "run"), ("runs", "taken")])
def test_a_file_in_the_run_folders_way_is_named(tmp_path, out_dir, name):
    (tmp_path / "runs").mkdir()
    for file in (tmp_path / "taken", tmp_path / "runs" / "taken"):
        file.write_text("a file")
    config = config_from_dict({"train": {"out_dir": str(tmp_path / out_dir)}})
    blocking = tmp_path / ("runs/taken" if out_dir == "runs" else "taken")
    expected = rf"^run folder \(train.out_dir and --name\) .*: (is a file|cannot be made: {blocking} is a file); give"
    with pytest.raises(ConfigError, match=expected):
        new_run_folder(config, name)


def test_recent_reward_is_the_mean_of_the_last_window_and_skips_non_finite_rewards():
    recent = RecentReward(window=3)
    assert recent.postfix({}) == {}
    shown = [recent.postfix({"reward/mean": value}) for value in (0.1, 0.2, float("nan"), 0.3, 0.7)]
    assert shown[1] == {"reward(last 2)": "0.150"} and shown[2] == {"reward(last 2)": "0.150"}
    assert shown[-1] == {"reward(last 3)": f"{(0.2 + 0.3 + 0.7) / 3:.3f}"}


def test_a_resumed_runs_recent_reward_goes_on_from_the_records_it_kept():
    """After a resume the bar showed the first resumed iteration's reward alone, unlabelled (new-user walkthrough)."""
    kept = [{"iteration": i, "reward/mean": value} for i, value in enumerate((0.9, 0.1, None, 0.2))]
    recent = RecentReward(window=3, earlier=kept)
    assert recent.postfix({"iteration": 4, "reward/mean": 0.6}) == {"reward(last 3)": f"{(0.1 + 0.2 + 0.6) / 3:.3f}"}
    every_fifth = [{"iteration": i, "reward/mean": i / 100} for i in range(0, 50, 5)]  # train.log_every 5
    recent = RecentReward(window=10, earlier=every_fifth)  # only the records of iterations 40-49: 40 and 45
    assert recent.postfix({"iteration": 50, "reward/mean": 0.5}) == {"reward(last 3)": f"{(0.4 + 0.45 + 0.5) / 3:.3f}"}


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_rewind_moves_the_records_to_redo_and_a_cut_last_line_aside(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"iteration": i, "reward/mean": i / 10} for i in range(5)]
    _write_lines(path, [json.dumps(r) for r in records] + ['{"iteration": 5, "rew'])
    assert read_metrics(path) == records  # the cut line is left out, not an error
    assert rewind_metrics(path, 3) == 3
    assert read_metrics(path) == records[:3]
    aside = (tmp_path / "metrics.superseded.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in aside[:2]] == records[3:] and aside[2] == '{"iteration": 5, "rew'
    assert rewind_metrics(path, 3) == 0 and read_metrics(path) == records[:3]  # nothing more to move
    assert rewind_metrics(tmp_path / "absent.jsonl", 0) == 0


def test_a_fresh_start_moves_everything_and_a_log_appends_after_the_rewind(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_lines(path, [json.dumps({"iteration": i}) for i in range(3)])
    log = MetricsLog(path, start_iteration=1)
    log.write({"iteration": 1, "reward/mean": float("nan")})
    log.close()
    assert read_metrics(path) == [{"iteration": 0}, {"iteration": 1, "reward/mean": None}]
    assert rewind_metrics(path, 0) == 2 and read_metrics(path) == []
    assert len((tmp_path / "metrics.superseded.jsonl").read_text().splitlines()) == 4


def test_a_whole_last_record_without_its_newline_is_not_joined_by_the_next(tmp_path):
    """A crash between a record and its newline: the next record was appended onto it, and both then read as one
    line cut short (dropped)."""
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 0}\n{"iteration": 1}')
    log = MetricsLog(path, start_iteration=2)
    log.write({"iteration": 2})
    log.close()
    assert read_metrics(path) == [{"iteration": 0}, {"iteration": 1}, {"iteration": 2}]


def test_a_resume_carries_the_running_counts_of_the_last_kept_record_on(tmp_path):
    path, keys = tmp_path / "metrics.jsonl", ("sync/dropped_stale", "sync/redone")
    records = [{"iteration": i, "sync/dropped_stale": i, "sync/redone": 2 * i} for i in range(5)]
    _write_lines(path, [json.dumps(record) for record in records])
    MetricsLog(path, start_iteration=3).close()  # the resume redoes iterations 3 and 4: their counts go
    assert running_counts(path, keys) == {"sync/dropped_stale": 2, "sync/redone": 4}
    assert running_counts(tmp_path / "new.jsonl", keys) == {"sync/dropped_stale": 0, "sync/redone": 0}
    _write_lines(path, [json.dumps({"iteration": 0})])  # a record without them (an in-process run resumed on Ray)
    assert running_counts(path, keys) == {"sync/dropped_stale": 0, "sync/redone": 0}


def test_a_broken_line_before_the_last_names_its_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_lines(path, ['{"iteration": 0}', "{oops", '{"iteration": 2}'])
    with pytest.raises(ValueError, match=rf"{path}:2: not a JSON record"):
        read_metrics(path)


def test_final_model_takes_the_float32_weights_of_the_last_checkpoint(tmp_path):
    import torch

    from maskfocus.models import load_generator

    config = config_from_dict({"model": {"dtype": "bfloat16"}})
    published = load_generator(config.model)
    assert "no checkpoint" in resume_hint(tmp_path)
    with pytest.raises(RuntimeError, match="without a checkpoint"):
        float32_final_model(config, tmp_path, published)
    master = load_generator(config.model, dtype="float32").trainable_module()
    with torch.no_grad():
        for parameter in master.parameters():
            parameter.add_(1e-3)  # below bfloat16's resolution near most weights: float32 must keep it
    save_checkpoint(tmp_path, 4, master, None, {})
    final = float32_final_model(config, tmp_path, published)
    for name, value in final.trainable_module().state_dict().items():
        assert value.dtype == torch.float32 and torch.equal(value, master.state_dict()[name]), name
    assert resume_hint(tmp_path) == f"resume from iter_000004 with `maskfocus train --resume {tmp_path}`"
    same = config_from_dict({"model": {"dtype": "float32"}})
    assert float32_final_model(same, tmp_path, published) is published  # float32 rollouts: the published copy


def test_a_resume_that_changes_settings_rewrites_the_config_and_keeps_the_old_one(tmp_path):
    from maskfocus.config import dump_config, load_config
    from maskfocus.run_io import record_resumed_config

    config = config_from_dict({"train": {"num_iterations": 3}})
    dump_config(config, tmp_path / "config.yaml")
    assert record_resumed_config(tmp_path, config) == ([], None)  # same settings: nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    (tmp_path / "checkpoints" / "iter_000002").mkdir(parents=True)
    (tmp_path / "checkpoints" / "iter_000002" / "state.json").write_text(
        '{"iteration": 2, "num_updates": 9, "prompt_cursor": 12, "policy_version": 3}'  # as checkpoints write it
    )
    extended = config_from_dict({"train": {"num_iterations": 5}, "sampler": {"compile": True}})
    changes, kept = record_resumed_config(tmp_path, extended)
    assert changes == ["sampler.compile: False -> True", "train.num_iterations: 3 -> 5"]
    assert kept == tmp_path / "config.before_resume_iter_000002.yaml"
    assert load_config(kept) == config and load_config(tmp_path / "config.yaml") == extended


def _finished_run(folder, num_iterations: int = 250, num_updates: int = 750):
    """A run folder as a finished run leaves it: its config, last checkpoint, final evaluation and model."""
    from maskfocus.config import dump_config

    config = config_from_dict({"train": {"num_iterations": num_iterations}, "optim": {"learning_rate": 1e-4}})
    dump_config(config, folder / "config.yaml")
    checkpoint = folder / "checkpoints" / f"iter_{num_iterations - 1:06d}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.json").write_text(
        json.dumps(
            {"iteration": num_iterations - 1, "num_updates": num_updates, "prompt_cursor": 0, "policy_version": 0}
        )
    )
    (folder / "eval").mkdir()
    (folder / "eval" / "summary.json").write_text('{"overall": 0.55}')
    (folder / "model").mkdir()
    (folder / "model" / "model_index.json").write_text("{}")
    return config


def test_the_schedule_note_gives_the_lr_at_the_resume_point_under_the_old_and_the_new_length():
    from maskfocus.run_io import schedule_note

    before = config_from_dict({"train": {"num_iterations": 250}, "optim": {"learning_rate": 1e-4}})
    after = config_from_dict({"train": {"num_iterations": 500}, "optim": {"learning_rate": 1e-4}})
    # 3 optimizer steps per iteration: 750 steps done; the peak times 0.1 at the end of 250 iterations, times
    # 1 - 0.9 * 750 / 1499 half way through 500
    assert schedule_note(before, after, num_updates=750, iteration=250) == (
        "learning-rate schedule: now spans 500 iterations, 1500 optimizer steps (was 250, 750); "
        "lr at the resume point (iteration 250): 1e-05 -> 5.5e-05"
    )
    assert schedule_note(before, before, num_updates=300, iteration=100) is None  # a crash-resume keeps the schedule
    other_k = config_from_dict({"train": {"num_iterations": 250}, "selection": {"num_steps": 2}})
    # 300 steps taken at K = 3, then 150 iterations at K = 2: the decay ends at the run's last step
    assert "now spans 250 iterations, 600 optimizer steps (was 250, 750)" in schedule_note(before, other_k, 300, 100)


def test_extending_a_finished_run_prints_the_new_schedule_and_sets_its_evaluation_and_model_aside(tmp_path, capsys):
    from maskfocus.run_io import record_resumed_config

    _finished_run(tmp_path)
    changes, _ = record_resumed_config(tmp_path, config_from_dict({"train": {"num_iterations": 500}}))
    assert changes == ["train.num_iterations: 250 -> 500"]
    printed = capsys.readouterr().out.splitlines()
    assert (
        "learning-rate schedule: now spans 500 iterations, 1500 optimizer steps (was 250, 750); "
        "lr at the resume point (iteration 250): 1e-05 -> 5.5e-05"
    ) in printed
    assert not (tmp_path / "eval").exists() and not (tmp_path / "model").exists()
    assert (tmp_path / "eval.before_resume_iter_000249" / "summary.json").read_text() == '{"overall": 0.55}'
    assert (tmp_path / "model.before_resume_iter_000249" / "model_index.json").is_file()
    assert any(
        "eval.before_resume_iter_000249/" in line and "model.before_resume_iter_000249/" in line for line in printed
    )


def test_a_resume_with_nothing_left_to_learn_keeps_the_evaluation_and_model(tmp_path, capsys):
    from maskfocus.run_io import record_resumed_config

    config = _finished_run(tmp_path)
    record_resumed_config(tmp_path, config)  # e.g. to redo the final evaluation
    recompiled = config.model_copy(update={"sampler": config.sampler.model_copy(update={"compile": True})})
    changes, _ = record_resumed_config(tmp_path, recompiled)
    assert changes == [f"sampler.compile: {config.sampler.compile} -> True"]
    assert (tmp_path / "eval" / "summary.json").is_file() and (tmp_path / "model" / "model_index.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if "before_resume" in p.name) == [
        "config.before_resume_iter_000249.yaml"
    ]
    assert "learning-rate schedule" not in capsys.readouterr().out


def test_a_second_resume_from_the_same_checkpoint_keeps_every_replaced_config_and_result(tmp_path):
    from maskfocus.config import load_config
    from maskfocus.run_io import record_resumed_config

    original = _finished_run(tmp_path)
    _, first = record_resumed_config(tmp_path, config_from_dict({"train": {"num_iterations": 500}}))
    # that resume stopped before its first checkpoint; meanwhile a resume re-finished the run at 250 iterations
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text('{"overall": 0.56}')
    _, second = record_resumed_config(tmp_path, config_from_dict({"train": {"num_iterations": 400}}))
    assert first == tmp_path / "config.before_resume_iter_000249.yaml"
    assert second == tmp_path / "config.before_resume_iter_000249.2.yaml"
    assert load_config(first) == original
    assert load_config(second).train.num_iterations == 500
    assert load_config(tmp_path / "config.yaml").train.num_iterations == 400
    assert (tmp_path / "eval.before_resume_iter_000249" / "summary.json").read_text() == '{"overall": 0.55}'
    assert (tmp_path / "eval.before_resume_iter_000249.2" / "summary.json").read_text() == '{"overall": 0.56}'


def test_the_progress_bar_shows_the_runs_position_from_the_resume_point(capsys):
    from maskfocus.run_io import iteration_progress

    bar = iteration_progress(200, 250, "train", show=True)
    bar.update(1)
    bar.close()
    assert (bar.n, bar.total) == (201, 250)
    assert "201/250" in capsys.readouterr().err
    fresh = iteration_progress(0, 250, "train", show=False)
    assert (fresh.n, fresh.total) == (0, 250)


def test_plain_state_dict_copies_full_tensors_or_only_joins_the_gathers():
    import torch

    from maskfocus.run_io import plain_state_dict

    module = torch.nn.Linear(3, 2)
    state = plain_state_dict(module)
    assert state.keys() == {"weight", "bias"}
    assert torch.equal(state["weight"], module.weight) and not state["weight"].requires_grad
    assert all(tensor.is_contiguous() and tensor.device.type == "cpu" for tensor in state.values())
    assert plain_state_dict(module, keep=False) == {}  # a rank that only joins the gathers holds nothing


def test_runs_started_in_the_same_second_get_their_own_folders_and_hints_quote_paths(tmp_path, monkeypatch):
    import time

    from maskfocus.config import default_run_config
    from maskfocus.run_io import new_run_folder, resume_hint, save_checkpoint

    monkeypatch.setattr(time, "strftime", lambda fmt: "20261205-044500")
    config = default_run_config({"train.out_dir": str(tmp_path / "my runs")})
    first, second = new_run_folder(config), new_run_folder(config)
    assert (first.name, second.name) == ("20261205-044500", "20261205-044500.2")
    save_checkpoint(first, 3, torch.nn.Linear(1, 1), None, {})
    assert resume_hint(first) == f"resume from iter_000003 with `maskfocus train --resume '{first}'`"


def test_train_keep_checkpoints_deletes_the_oldest_only_once_a_new_one_is_complete(tmp_path):
    """A Meissonic run wrote twelve checkpoints of float32 weights and AdamW state, ~12 GB each, to the shared disk."""
    from maskfocus.run_io import prune_checkpoints

    module = torch.nn.Linear(2, 2)
    for iteration in (9, 19):
        save_checkpoint(tmp_path, iteration, module, None, {}, keep=None)  # keep every one (the default)
    (tmp_path / "checkpoints" / "iter_000029.partial").mkdir()  # a write cut short: not a checkpoint, and it goes
    save_checkpoint(tmp_path, 39, module, None, {}, keep=2)
    names = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_000019", "iter_000039"]
    assert resume_hint(tmp_path).startswith("resume from iter_000039")
    assert prune_checkpoints(tmp_path, None) == [] and prune_checkpoints(tmp_path, 1) == [
        tmp_path / "checkpoints" / "iter_000019"
    ]


def test_a_checkpoint_of_non_finite_weights_deletes_no_older_one(tmp_path):
    """A diverging loss: the periodic checkpoints of NaN weights pruned the finite ones a restart needs."""
    module = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path, 9, module, None, {}, keep=1)
    with torch.no_grad():
        module.weight.fill_(float("nan"))
    save_checkpoint(tmp_path, 19, module, None, {}, keep=1)
    names = sorted(path.name for path in (tmp_path / "checkpoints").iterdir())
    assert names == ["iter_000009", "iter_000019"]


def test_a_resume_names_learned_iterations_that_have_no_record(tmp_path, capsys):
    """A run killed between a checkpoint and its records: metrics.jsonl silently lacked iterations the checkpoint had
    learned ("holds each iteration once" was "at most once")."""
    path = tmp_path / "metrics.jsonl"
    _write_lines(path, [json.dumps({"iteration": i}) for i in (0, 1, 2)])
    MetricsLog(path, start_iteration=5).close()  # the checkpoint is of iteration 4: 3 and 4 were never logged
    out = capsys.readouterr().out
    assert f"note: {path} has no record of iteration(s) 3, 4, which the checkpoint has learned" in out
    MetricsLog(path, start_iteration=3).close()
    MetricsLog(tmp_path / "fresh.jsonl").close()
    assert "no record" not in capsys.readouterr().out
    MetricsLog(tmp_path / "empty.jsonl", start_iteration=2).close()  # no record at all: 0 and 1 are missing
    assert "has no record of iteration(s) 0, 1, which" in capsys.readouterr().out
    sparse = tmp_path / "sparse.jsonl"  # train.log_every 10 logs iterations 0, 10, ...: the others are not lost
    _write_lines(sparse, [json.dumps({"iteration": i}) for i in (0, 10, 20, 30, 40)])
    MetricsLog(sparse, start_iteration=50, log_every=10).close()
    assert "no record" not in capsys.readouterr().out
    MetricsLog(sparse, start_iteration=61, log_every=10).close()  # 50 and 60 were due and are missing
    assert f"note: {sparse} has no record of iteration(s) 50, 60, which" in capsys.readouterr().out
    MetricsLog(sparse, start_iteration=50, log_every=1).close()  # a resume that logs every iteration from now on
    assert "no record" not in capsys.readouterr().out
    MetricsLog(path, start_iteration=5, log_every=10).close()  # the stopped run logged every iteration
    assert f"note: {path} has no record of iteration(s) 3, 4, which" in capsys.readouterr().out
    extended = tmp_path / "extended.jsonl"  # a finished 95-iteration run (its last record 94), extended to 200
    _write_lines(extended, [json.dumps({"iteration": i}) for i in [*range(0, 95, 10), 94, 100]])
    MetricsLog(extended, start_iteration=120, log_every=10).close()  # 110 was due and is missing
    assert f"note: {extended} has no record of iteration(s) 110, which" in capsys.readouterr().out
