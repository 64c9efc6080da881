"""`maskfocus train --resume` on a damaged run folder (maskfocus/resume_check.py): one message naming the file and
what to do, given before the resume sets aside model/ or rewrites config.yaml, and by `--check` too."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from support import cli_error


@pytest.fixture(scope="module")
def base_transformer():
    """The built-in model's transformer, which the default config trains."""
    from maskfocus.config import ModelConfig
    from maskfocus.models import load_generator

    return load_generator(ModelConfig(), dtype="float32").trainable_module()


@pytest.fixture
def run(tmp_path, base_transformer):
    """A run folder as a stopped in-process run leaves it: config, two logged iterations, a checkpoint of the
    second, the saved model (a stand-in folder)."""
    from maskfocus.config import default_run_config, dump_config
    from maskfocus.run_io import save_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    dump_config(default_run_config({"train.executor": "local"}), run / "config.yaml")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"iteration": i, "reward/mean": 0.5}) + "\n" for i in (0, 1)))
    module = base_transformer
    optimizer = torch.optim.AdamW(module.parameters())
    state = {"prompt_cursor": 8, "policy_version": 2, "num_updates": 6}
    save_checkpoint(run, 1, module, optimizer, state)
    (run / "model").mkdir()
    return run


def snapshot(run):
    return sorted((str(path.relative_to(run)), path.stat().st_mtime_ns) for path in run.rglob("*"))


def refused(capsys, run) -> str:
    """The resume's error, checked to come from the plain resume and from --check alike, with nothing changed."""
    before = snapshot(run)
    errors = [
        cli_error(capsys, "train", "--resume", str(run), "--iterations", "3", *check) for check in ([], ["--check"])
    ]
    assert errors[0] == errors[1]
    assert snapshot(run) == before
    return errors[0]


def test_an_intact_run_passes_the_check(run, capsys):
    from maskfocus.cli import main

    assert main(["train", "--resume", str(run), "--iterations", "3", "--check"]) == 0
    out = capsys.readouterr().out
    assert f"run folder: {run} (resumes at iteration 2; unchanged)" in out and "was learned with seed" not in out


def test_a_resume_under_another_seed_than_the_checkpoints_says_so(run, capsys):
    """state.json records the seed, which nothing compared: a config.yaml edited by hand changed the prompt stream
    and every iteration's draws without a word."""
    from maskfocus.cli import main

    state_file = run / "checkpoints" / "iter_000001" / "state.json"
    state_file.write_text(json.dumps({**json.loads(state_file.read_text()), "seed": 7}))
    assert main(["train", "--resume", str(run), "--iterations", "3", "--check"]) == 0
    note = (
        "note: iter_000001 was learned with seed 7; the iterations after it draw their prompts and samples with seed 0"
    )
    assert note in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--iterations", "3", "--check", "--set", "seed=7"]) == 0
    assert "was learned with seed" not in capsys.readouterr().out  # a --set seed is listed with the changes


@pytest.mark.parametrize(
    ("line", "message"),
    [("[1, 2, 3]", "not a JSON record of one iteration (got list)"), ("{oops", "not a JSON record (")],
)
def test_a_bad_metrics_line_is_named_by_file_and_line(run, capsys, line, message):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([lines[0], line, lines[1]]) + "\n")
    assert f"{run / 'metrics.jsonl'}:2: {message}" in refused(capsys, run)


@pytest.mark.parametrize("damage", ["half", "empty", "missing"])
def test_damaged_checkpoint_weights_are_named_before_the_folder_changes(run, capsys, damage):
    weights = run / "checkpoints" / "iter_000001" / "transformer.safetensors"
    data = weights.read_bytes()
    if damage == "missing":
        weights.unlink()
    else:
        weights.write_bytes(data[: len(data) // 2] if damage == "half" else b"")
    error = refused(capsys, run)
    assert f"checkpoint {weights.parent} is damaged (transformer.safetensors: " in error
    assert "move it out of checkpoints/ to resume from the one before it" in error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"iteration": 1,', "state.json: Expecting"),
        ('{"iteration": 1, "prompt_cursor": 8}', "state.json lacks a whole number for policy_version, num_updates"),
        ("[1]", "state.json lacks a whole number for iteration, prompt_cursor, policy_version, num_updates"),
    ],
)
def test_a_damaged_state_file_is_named(run, capsys, text, message):
    checkpoint = run / "checkpoints" / "iter_000001"
    (checkpoint / "state.json").write_text(text)
    assert f"checkpoint {checkpoint} is damaged ({message}" in refused(capsys, run)


@pytest.mark.parametrize("other", ["linear", "wider"])
def test_a_checkpoint_of_another_model_is_refused_before_the_folder_changes(run, capsys, other):
    """A Linear(2, 2) checkpoint passed as intact (its header reads): the resume then failed at its first load, with
    torch's error naming no file, after it had rewritten config.yaml and set model/ aside."""
    from safetensors.torch import load_file, save_file

    weights = run / "checkpoints" / "iter_000001" / "transformer.safetensors"
    if other == "linear":
        save_file(torch.nn.Linear(2, 2).state_dict(), str(weights))
        expected = "(bias is not in the model; weight is not in the model)"
    else:
        tensors = load_file(str(weights))
        name = sorted(tensors)[0]
        tensors[name] = torch.zeros(*tensors[name].shape[:-1], tensors[name].shape[-1] + 1)
        save_file(tensors, str(weights))
        expected = f"({name} has shape "
    error = refused(capsys, run)
    assert f"checkpoint {weights.parent} does not fit model.path builtin:shapes-tiny {expected}" in error
    assert "resume with the model.path the run trained" in error


def test_loading_a_checkpoint_into_another_model_names_the_checkpoint(run):
    """Where the model.path check cannot see it (a base with .bin weights only), the load itself says which
    checkpoint did not fit, not only torch's class name."""
    from maskfocus.config import ConfigError
    from maskfocus.run_io import load_checkpoint_weights

    checkpoint = run / "checkpoints" / "iter_000001"
    with pytest.raises(ConfigError, match=rf"^checkpoint {checkpoint} does not fit the model this run loads \(Error"):
        load_checkpoint_weights(checkpoint, torch.nn.Linear(2, 2))


def test_a_missing_optimizer_state_is_named(run, capsys):
    checkpoint = run / "checkpoints" / "iter_000001"
    (checkpoint / "optimizer.pt").unlink()
    assert f"checkpoint {checkpoint} is damaged (optimizer.pt: missing or not a torch archive)" in refused(capsys, run)


@pytest.mark.parametrize("text", ["\n", "# only a comment\n", "{}\n", "null\n", "---\n"])
def test_a_config_without_settings_is_refused_rather_than_read_as_every_default(run, capsys, text):
    (run / "config.yaml").write_text(text)
    assert f"{run / 'config.yaml'} holds no settings: it would resume with every default" in refused(capsys, run)


def test_a_config_that_is_not_utf8_is_named_by_the_config_loader(run, capsys):
    (run / "config.yaml").write_bytes(b"\xff\xfe\x00bad")
    assert f"{run / 'config.yaml'}: not UTF-8 text" in refused(capsys, run)


def test_a_folder_that_cannot_be_written_is_refused(run, capsys, monkeypatch):
    """As root the permission bits do not stop a write, so the refusal of a read-only folder is simulated."""
    import maskfocus.outputs

    real_access = maskfocus.outputs.os.access
    monkeypatch.setattr(maskfocus.outputs.os, "access", lambda path, mode: path != run and real_access(path, mode))
    assert f"--resume {run}: cannot be written (permissions or a read-only file system)" in refused(capsys, run)


def test_a_run_without_checkpoints_says_it_starts_again_from_the_base_model(run, capsys):
    import shutil

    from maskfocus.cli import main

    shutil.rmtree(run / "checkpoints")
    assert main(["train", "--resume", str(run), "--iterations", "3", "--check"]) == 0
    out = capsys.readouterr().out
    assert f"no checkpoint in {run / 'checkpoints'}: the resume starts again from the base model at iteration 0" in out
    assert "(a resume moves the 2 logged iterations to metrics.superseded.jsonl)" in out


def test_a_missing_folder_is_named_as_missing(tmp_path, capsys):
    error = cli_error(capsys, "train", "--resume", str(tmp_path / "nowhere"))
    assert f"--resume {tmp_path / 'nowhere'}: no such folder" in error


def test_fewer_iterations_than_learned_are_refused(run, capsys):
    """`--iterations 1` on a run that had learned 2 recorded num_iterations: 1 and exited 0."""
    before = snapshot(run)
    for check in ([], ["--check"]):
        error = cli_error(capsys, "train", "--resume", str(run), "--iterations", "1", *check)
        assert "train.num_iterations 1 (--iterations): the run has learned 2 iterations already; give 2" in error
    assert snapshot(run) == before


def test_learning_settings_of_a_run_with_nothing_left_to_learn_are_refused(run, capsys):
    """They were written to config.yaml although nothing was learned under them, and compare then grouped the run
    by settings it never ran with."""
    from maskfocus.cli import main

    before = snapshot(run)
    changes = ["--set", "rollout.group_size=6", "--set", "optim.learning_rate=0.5"]
    error = cli_error(capsys, "train", "--resume", str(run), "--iterations", "2", *changes, "--check")
    assert "optim.learning_rate, rollout.group_size: the run has learned all its 2 iterations" in error
    assert "give --iterations above 2" in error and snapshot(run) == before
    evaluation = ["--set", "eval.num_images_per_prompt=2"]  # what the final evaluation redone uses is fine
    assert main(["train", "--resume", str(run), "--iterations", "2", *evaluation, "--check"]) == 0
    assert main(["train", "--resume", str(run), "--iterations", "3", *changes, "--check"]) == 0  # learns one more
    # what the rollouts sampled with: the sampler's guidance, temperatures, negative prompt and T (the run's
    # rollout.num_steps is null), and model.dtype
    sampled = ["sampler.num_steps=30", "sampler.cfg_scale=9", "model.dtype=float16", "model.resolution=32"]
    error = cli_error(capsys, "train", "--resume", str(run), "--iterations", "2", "--check", *_sets(sampled))
    expected = "model.dtype, model.resolution, sampler.cfg_scale, sampler.num_steps: the run has learned all its 2"
    assert expected in error
    evaluation_only = ["sampler.batch_size=16", "sampler.compile=false", "eval.dtype=bfloat16"]
    assert main(["train", "--resume", str(run), "--iterations", "2", "--check", *_sets(evaluation_only)]) == 0


def _sets(settings: list[str]) -> list[str]:
    return [part for setting in settings for part in ("--set", setting)]


def test_a_finished_run_may_point_at_moved_files_and_an_old_config_failing_a_new_check_still_resumes(run, capsys):
    """A moved prompt file or reward model could not be given anew to redo the final evaluation; a config.yaml that
    fails a check added since (seed -1 here) made the comparison itself fail."""
    from maskfocus.cli import main

    record = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
    (prompts := run.parent / "moved.jsonl").write_text(json.dumps(record) + "\n")
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("prompt_file: null", "prompt_file: /gone/prompts.jsonl", 1))
    moved = ["--set", f"rollout.prompt_file={prompts}"]
    assert main(["train", "--resume", str(run), "--iterations", "2", *moved, "--check"]) == 0
    config.write_text(config.read_text().replace("seed: 0", "seed: -1", 1))
    saved = yaml.safe_load(config.read_text())  # an older version's null thresholds are not a change either
    saved["rewards"][0]["detector"].update(score_threshold=None, nms_iou=None)
    config.write_text(yaml.safe_dump(saved))
    error = cli_error(capsys, "train", "--resume", str(run), "--iterations", "2", "--set", "seed=0", *moved, "--check")
    assert "maskfocus train: error: seed: the run has learned all its 2 iterations" in error  # seed alone


def test_a_resume_that_fixes_an_old_config_failing_a_new_check_records_the_fix_and_moves_results_once(run, capsys):
    """--check passed such a resume, but the resume itself reloaded config.yaml strictly after moving eval/ and
    model/ aside, and failed: every retry the same, the results already moved. It now reads the old file as written."""
    from maskfocus.config import default_run_config, load_config
    from maskfocus.run_io import record_resumed_config

    config = run / "config.yaml"
    config.write_text(config.read_text().replace("seed: 0", "seed: -1", 1))  # refused by today's checks
    saved = yaml.safe_load(config.read_text())  # an older version wrote null thresholds (today: the kind's defaults)
    saved["rewards"][0]["detector"].update(score_threshold=None, counting_score_threshold=None, nms_iou=None)
    config.write_text(yaml.safe_dump(saved))
    fixed = default_run_config({"train.executor": "local", "train.num_iterations": 3})
    changes, kept = record_resumed_config(run, fixed)
    assert changes == ["seed: -1 -> 0", "train.num_iterations: 250 -> 3"]
    assert load_config(config).seed == 0 and "seed: -1" in kept.read_text()
    assert (run / "model.before_resume_iter_000001").is_dir() and not (run / "model").exists()
    assert "learning-rate schedule" not in capsys.readouterr().out  # the old file's schedule cannot be read
