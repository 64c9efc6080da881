"""Bad command lines of the tool scripts in benchmarks/ (ray_overhead, gpu_check, learner_autocast, positional_base,
relation_finetune): each is refused with one line and exit status 2 before any run, training or check starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import load_benchmark

from maskfocus.script_args import run_script


def refused(function, capsys, *args) -> str:
    """argparse's message for a command line `function(*args)` parses: it must exit with status 2."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        function(*args)
    assert exited.value.code == 2
    return capsys.readouterr().err


def status_and_error(main, prog: str, capsys) -> tuple[int, str]:
    """`main` run as the script's `__main__` runs it: (exit status, stderr)."""
    capsys.readouterr()
    status = run_script(main, prog)
    return status, capsys.readouterr().err


def never(*_, **__):
    raise AssertionError("work started before the command line was checked")


# ray_overhead


@pytest.fixture(scope="module")
def ray_overhead():
    return load_benchmark("ray_overhead")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--repeats", "0"], "argument --repeats: must be >= 1, got 0"),
        (["--iterations", "0"], "argument --iterations: must be >= 1, got 0"),
        (["--num-cpus", "-1"], "argument --num-cpus: must be >= 1, got -1"),
        (["--iterations", "4", "--warmup", "4"], "--warmup must be >= 0 and < --iterations (4), got 4"),
        (["--warmup", "-1"], "--warmup must be >= 0 and < --iterations (24), got -1"),
    ],
)
def test_ray_overhead_refuses_counts_and_a_warmup_that_leaves_no_iteration(ray_overhead, capsys, args, message):
    assert message in refused(ray_overhead.parse_args, capsys, args)


def test_ray_overhead_modes_are_plain_words_and_the_recorded_labels_still_work(ray_overhead, capsys):
    """The choices were the table labels, "ray, max_staleness 0", commas and spaces in a command line."""
    assert ray_overhead.parse_args(["--modes", "local", "ray-stale1"]).modes == ["local", "ray-stale1"]
    assert ray_overhead.parse_args(["--modes", "local", "ray, max_staleness 0"]).modes == ["local", "ray-stale0"]
    assert "argument --modes: invalid choice: 'ray'" in refused(ray_overhead.parse_args, capsys, ["--modes", "ray"])
    assert "--modes must include local" in refused(ray_overhead.parse_args, capsys, ["--modes", "ray-stale0"])


def test_ray_overhead_tables_label_modes_by_what_they_run(ray_overhead):
    values = dict.fromkeys(("perf/iteration_seconds", *ray_overhead.PARTS), 1.0)
    text = ray_overhead.table({"local": values, "ray-stale1": values}, {"local": 10.0, "ray-stale1": 12.0})
    assert "| ray, max_staleness 1 | 1.00 | 1.00 |" in text and "| local | 1.00 |" in text
    rounds = ray_overhead.rounds_table([{"local": values, "ray-stale1": values}])
    assert "| round | local | ray, max_staleness 1 |" in rounds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--config", "{tmp}/nope.yaml"], "config file not found: {tmp}/nope.yaml"),
        (["--ray-set", "ray.max_staleness=-3"], "--ray-set ray.max_staleness: Input should be greater than"),
        (["--ray-set", "garbage"], "--ray-set expects KEY=VALUE (e.g. train.num_iterations=10), got 'garbage'"),
        (["--runs-dir", "{tmp}/file"], "--runs-dir {tmp}/file: is a file; give a folder"),
    ],
)
def test_ray_overhead_checks_config_and_folder_before_the_first_run(
    ray_overhead, tmp_path, monkeypatch, capsys, args, message
):
    (tmp_path / "file").write_text("")
    monkeypatch.setattr(ray_overhead, "run_mode", never)
    argv = [arg.format(tmp=tmp_path) for arg in args]
    status, error = status_and_error(lambda: ray_overhead.main(argv), "ray_overhead.py", capsys)
    assert status == 2 and error.startswith("ray_overhead.py: error: ")
    assert message.format(tmp=tmp_path) in error


def test_ray_overhead_refuses_run_folders_taken_and_reports_a_failed_run_in_one_line(
    ray_overhead, tmp_path, monkeypatch, capsys
):
    """A second call with the default runs folder ended in CalledProcessError's traceback, after the runs before."""
    (tmp_path / "local").mkdir()
    monkeypatch.setattr(ray_overhead, "run_mode", never)
    status, error = status_and_error(
        lambda: ray_overhead.main(["--runs-dir", str(tmp_path)]), "ray_overhead.py", capsys
    )
    assert status == 2 and f"{tmp_path / 'local'} already exist(s); give another --runs-dir" in error
    monkeypatch.undo()
    import subprocess
    from types import SimpleNamespace

    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: SimpleNamespace(returncode=1))
    argv = ["--runs-dir", str(tmp_path / "new"), "--modes", "local", "--iterations", "2", "--warmup", "0"]
    status, error = status_and_error(lambda: ray_overhead.main(argv), "ray_overhead.py", capsys)
    assert status == 2 and f"the local run {tmp_path / 'new' / 'local'} failed (exit 1); see above" in error


# gpu_check


@pytest.fixture(scope="module")
def gpu_check():
    load_benchmark("gpu_perf")  # gpu_check imports these as top-level modules, from its own folder
    load_benchmark("weight_broadcast")
    return load_benchmark("gpu_check")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--num-steps", "4", "--selected", "10"], "--selected (K=10) must be <= --num-steps - 1 (T=4)"),
        (["--num-steps", "4", "--selected", "4"], "--selected (K=4) must be <= --num-steps - 1 (T=4)"),
        (["--only", "tiny,nccl,sclae"], "argument --only: unknown check(s) 'sclae'; choose from tiny, nccl, scale"),
        (["--device", "gpu"], "argument --device: expected cuda, cuda:N or cpu, got 'gpu'"),
        (["--device", "meta"], "argument --device: expected cuda, cuda:N or cpu, got 'meta'"),
        (["--num-steps", "0"], "argument --num-steps: must be >= 1, got 0"),
        (["--selected", "0"], "argument --selected: must be >= 1, got 0"),
        (["--tiny-iterations", "0"], "argument --tiny-iterations: must be >= 1, got 0"),
        (["--group-size", "0"], "argument --group-size: must be >= 1, got 0"),
        (["--broadcast-repeats", "0"], "argument --broadcast-repeats: must be >= 1, got 0"),
        (["--broadcast-timeout", "0"], "argument --broadcast-timeout: must be > 0, got 0.0"),
        (["--prompts", "5"], "--prompts must be at most 4 (the scale check's prompts), got 5"),
    ],
)
def test_gpu_check_refuses_bad_options_before_any_check(gpu_check, capsys, args, message):
    assert message in refused(gpu_check.parse_args, capsys, args)


def test_gpu_check_takes_k_below_t_and_any_k_when_scale_is_not_run(gpu_check):
    args = gpu_check.parse_args(["--num-steps", "4", "--selected", "3", "--device", "cpu"])
    assert (args.num_steps, args.selected, args.only, args.device.type) == (4, 3, list(gpu_check.CHECKS), "cpu")
    assert gpu_check.parse_args(["--only", "tiny,nccl", "--num-steps", "4"]).only == ["tiny", "nccl"]


@pytest.mark.parametrize(("json", "message"), [(".", "is a folder"), ("file/out.json", "so the folder cannot be made")])
def test_gpu_check_refuses_a_json_path_it_cannot_write_before_any_check(
    gpu_check, tmp_path, monkeypatch, capsys, json, message
):
    (tmp_path / "file").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(gpu_check, "init_process_group", never)
    argv = ["--device", "cpu", "--json", json]
    status, error = status_and_error(lambda: gpu_check.main(argv), "gpu_check.py", capsys)
    assert status == 2 and error.startswith(f"gpu_check.py: error: --json {json}: ") and message in error


def test_gpu_check_without_cuda_is_one_error(gpu_check, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "init_process_group", never)
    status, error = status_and_error(lambda: gpu_check.main([]), "gpu_check.py", capsys)
    assert (status, error) == (2, "gpu_check.py: error: no CUDA device: run with --device cpu for a dry run\n")


# learner_autocast


@pytest.mark.parametrize("option", ["--batch", "--repeats"])
def test_learner_autocast_refuses_counts_below_one(monkeypatch, capsys, option):
    learner_autocast = load_benchmark("learner_autocast")
    monkeypatch.setattr(learner_autocast, "load_generator", never)
    assert f"argument {option}: must be >= 1, got 0" in refused(learner_autocast.main, capsys, [option, "0"])


def test_learner_autocast_times_its_passes_after_an_untimed_warm_up(monkeypatch):
    """A compiled module compiles in its first pass: with --repeats 1 the compile was the measurement (3.8 s against
    0.08 s eager; benchmarks walkthrough)."""
    import torch

    learner_autocast = load_benchmark("learner_autocast")
    passes = iter([10.0, 1.0, 3.0])  # the first pass is slow, as a compile is
    clock = {"now": 0.0}

    def fake_logits(inputs, condition, steps, num_steps, module):
        clock["now"] += next(passes)
        return torch.zeros(1, 2, 3, requires_grad=True)

    monkeypatch.setattr(learner_autocast.time, "perf_counter", lambda: clock["now"])
    model = type("Model", (), {"logits": staticmethod(fake_logits)})()
    tokens = torch.zeros(1, 2, dtype=torch.long)
    seconds, _ = learner_autocast.timed_pass(model, None, None, tokens, None, None, False, repeats=2)
    assert seconds == 2.0  # the median of the two timed passes, the warm-up's 10 s left out


# positional_base and relation_finetune: both replace OUT, and read a model folder


def fake_model_folder(folder):
    """A folder with a generator's parts (empty but the transformer's class): enough for the folder check, loaded by
    nothing here."""
    for part in ("vqvae", "transformer", "text_encoder", "tokenizer", "scheduler"):
        (folder / part).mkdir(parents=True)
    (folder / "transformer" / "config.json").write_text('{"_class_name": "UVit2DModel"}')
    return folder


SCRIPTS = [("positional_base", "--base"), ("relation_finetune", "--model")]


@pytest.fixture(scope="module", params=SCRIPTS, ids=[name for name, _ in SCRIPTS])
def trainer_script(request):
    name, model_option = request.param
    return load_benchmark(name), name, model_option


def run_trainer(trainer_script, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The script run with ARGS, its model loading and training stubbed to fail the test: (status, stderr)."""
    module, name, _ = trainer_script
    monkeypatch.setattr(module, "load_generator", never)
    monkeypatch.setattr(module, "train_generator", never)
    monkeypatch.setattr("sys.argv", [f"{name}.py", *args])
    return status_and_error(module.main, f"{name}.py", capsys)


@pytest.mark.parametrize(
    "out", ["base", ".", "base/vqvae"], ids=["the model folder", "a folder above it", "a part of it"]
)
def test_an_out_overlapping_the_model_folder_is_refused(trainer_script, tmp_path, monkeypatch, capsys, out):
    _, name, model_option = trainer_script
    base = fake_model_folder(tmp_path / "base")
    monkeypatch.chdir(tmp_path)
    status, error = run_trainer(trainer_script, monkeypatch, capsys, out, model_option, str(base))
    assert status == 2
    assert error.startswith(f"{name}.py: error: OUT {(tmp_path / out).resolve()}: overlaps {model_option} {base}")
    assert sorted(path.name for path in base.iterdir()) == [
        "scheduler",
        "text_encoder",
        "tokenizer",
        "transformer",
        "vqvae",
    ]


def test_an_out_holding_a_run_is_refused_before_training_and_kept(trainer_script, tmp_path, monkeypatch, capsys):
    """The script deletes OUT before writing the model there: a run folder given by mistake was lost after the
    training."""
    _, name, model_option = trainer_script
    base = fake_model_folder(tmp_path / "base")
    (run := tmp_path / "run" / "model" / "transformer").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    status, error = run_trainer(trainer_script, monkeypatch, capsys, str(tmp_path / "run"), model_option, str(base))
    assert status == 2 and error.startswith(f"{name}.py: error: OUT {tmp_path / 'run'}: holds something other than")
    assert run.is_dir() and (tmp_path / "run" / "metrics.jsonl").is_file()


def test_an_out_that_cannot_be_made_is_refused(trainer_script, tmp_path, monkeypatch, capsys):
    _, name, model_option = trainer_script
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "out"
    status, error = run_trainer(trainer_script, monkeypatch, capsys, str(out), model_option, "builtin:shapes-tiny")
    assert (status, error) == (
        2,
        f"{name}.py: error: OUT {out}: cannot be made: {tmp_path / 'file'} is a file; give a folder\n",
    )


@pytest.mark.parametrize("model", ["missing", "empty"])
def test_a_model_folder_without_a_generator_is_refused_before_loading(
    trainer_script, tmp_path, monkeypatch, capsys, model
):
    _, name, model_option = trainer_script
    folder = tmp_path / "model"
    if model == "empty":
        folder.mkdir()
    status, error = run_trainer(trainer_script, monkeypatch, capsys, str(tmp_path / "out"), model_option, str(folder))
    assert status == 2 and error.startswith(f"{name}.py: error: ")
    assert (f"model folder not found: {folder}" if model == "missing" else f"{folder} is missing part(s)") in error
    assert not (tmp_path / "out").exists()


def test_steps_below_one_are_refused(trainer_script, tmp_path, monkeypatch, capsys):
    module, name, _ = trainer_script
    monkeypatch.setattr("sys.argv", [f"{name}.py", str(tmp_path / "out"), "--steps", "0"])
    assert "argument --steps: must be >= 1, got 0" in refused(module.main, capsys)


def test_relation_finetune_checks_a_trusted_folder_as_meissonic(tmp_path, monkeypatch, capsys):
    module = load_benchmark("relation_finetune")
    (tmp_path / "model").mkdir()
    args = (str(tmp_path / "out"), "--model", str(tmp_path / "model"), "--trust-checkpoint-code")
    status, error = run_trainer((module, "relation_finetune", "--model"), monkeypatch, capsys, *args)
    assert status == 2 and "(a Meissonic folder needs" in error


def test_positional_base_refuses_a_base_without_a_scheduler_before_training(tmp_path, monkeypatch, capsys):
    """positional_base.py copies the base's scheduler/ into the new folder after training: a base without one is
    refused before the training, not after it."""
    module = load_benchmark("positional_base")
    base = fake_model_folder(tmp_path / "base")
    (base / "scheduler").rmdir()
    args = (str(tmp_path / "out"), "--base", str(base))
    status, error = run_trainer((module, "positional_base", "--base"), monkeypatch, capsys, *args)
    assert status == 2
    assert f"{base} is missing part(s) scheduler (a diffusers aMUSEd folder needs vqvae, transformer, " in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("script", "args", "status"),
    [
        ("eval_speed.sh", ["out", "--num-images-per-prompt", "1"], 2),  # ran the full 4-image benchmark anyway
        ("eval_speed.sh", ["--help"], 0),  # gave mkdir's help, then an error of maskfocus eval
        ("gpu_wheels.sh", ["--help"], 0),  # deleted .gpu_wheels/ and started the download
        ("gpu_wheels.sh", ["extra"], 2),
    ],
)
def test_the_shell_scripts_take_only_their_arguments_and_start_nothing_otherwise(script, args, status, tmp_path):
    import subprocess
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / script
    # no maskfocus, pip or python on PATH: a script that went on would fail with "command not found"
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path)
    assert done.returncode == status and done.stderr.startswith(f"usage: benchmarks/{script}"), done.stderr
    assert not (tmp_path / "out").exists()


SEEDED_SCRIPTS = [
    ("ablation", ["--seeds", "-1"]),
    ("ablation", ["--jobs", "critical:-1"]),
    ("caption_sensitivity", ["--seed", "-1"]),
    ("clip_caption_pairs", ["--seed", "-1"]),
    ("clip_reward_agreement", ["--seed", "-1"]),
    ("count_distribution", ["--seed", "-1"]),
    ("failure_reasons", ["--seed", "-1"]),
    ("position_relations", ["--seed", "-1"]),
    ("positional_base", ["--seed", "-1"]),
    ("relation_finetune", ["--seed", "-1"]),
    ("trajectory_grid", ["--seed", "-1"]),
]


@pytest.mark.parametrize(("name", "args"), SEEDED_SCRIPTS)
def test_a_negative_seed_is_refused_by_every_script_before_any_work(name, args, monkeypatch, capsys):
    """Four scripts ended in numpy's "expected non-negative integer" traceback, one after making its log file."""
    import sys

    script = load_benchmark(name)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *args])
    error = refused(script.main, capsys)
    assert "must be >= 0, got -1" in error or "SEED a whole number >= 0" in error


@pytest.mark.parametrize(
    ("name", "args"),
    [
        ("relation_finetune", ["{tmp}/out", "--model", "{model}"]),
        ("position_relations", ["{model}"]),
        ("caption_sensitivity", ["{model}"]),
    ],
)
def test_a_meissonic_format_folder_without_the_flag_is_told_to_give_it(tmp_path, monkeypatch, capsys, name, args):
    """The loader's message named the config key model.kind, which these scripts do not take (benchmarks
    walkthrough)."""
    module = load_benchmark(name)
    model = fake_model_folder(tmp_path / "positional")
    (model / "transformer" / "config.json").write_text('{"_class_name": "PositionalUVit2DModel"}')
    for stub in ("load_generator", "load_evaluated_generator", "train_generator", "detect_tag_rows"):
        if hasattr(module, stub):
            monkeypatch.setattr(module, stub, never)
    argv = [arg.format(tmp=tmp_path, model=model) for arg in args]
    monkeypatch.setattr("sys.argv", [f"{name}.py", *argv])
    status, error = status_and_error(module.main, f"{name}.py", capsys)
    assert status == 2
    assert (
        f"{model}: a Meissonic-format folder (its transformer is a PositionalUVit2DModel, with its own code)" in error
    )
    assert "give --trust-checkpoint-code to load it" in error


HELPED_SCRIPTS = sorted(
    path.stem
    for path in (Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py")
    if "RawDescriptionHelpFormatter" in path.read_text()
)


SCRIPT_IMPORTS = {"gpu_check": ("gpu_perf", "weight_broadcast")}
"""Scripts that import others of benchmarks/ as top-level modules (from their own folder, as `python benchmarks/X.py`
runs them)."""


@pytest.mark.parametrize("name", HELPED_SCRIPTS)
def test_a_scripts_help_carries_its_whole_docstring(name, monkeypatch, capsys):
    """--help showed only the docstring's first line: not the usage, the results it writes or where RESULTS.md
    records them (benchmarks walkthrough)."""
    import inspect

    for needed in SCRIPT_IMPORTS.get(name, ()):
        load_benchmark(needed)
    module = load_benchmark(name)
    monkeypatch.setattr("sys.argv", [f"{name}.py", "--help"])
    takes_argv = bool(inspect.signature(module.main).parameters)
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"]) if takes_argv else module.main()
    shown = " ".join(capsys.readouterr().out.split())
    assert exited.value.code == 0
    last_paragraph = module.__doc__.strip().split("\n\n")[-1]
    assert " ".join(last_paragraph.split()) in shown
