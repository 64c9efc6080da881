"""benchmarks/checkpoint_ema.py: the EMA of saved checkpoints against the per-iteration recursion."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from support import load_benchmark

from maskfocus.config_base import ConfigError
from maskfocus.script_args import run_script

ema = load_benchmark("checkpoint_ema")


def states(count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        {"w": torch.randn(3, 2, generator=generator), "b": torch.randn(4, generator=generator)} for _ in range(count)
    ]


def recursion(sequence: list[dict[str, torch.Tensor]], decay: float) -> dict[str, torch.Tensor]:
    """The textbook EMA, one update per iteration, started at the first state."""
    average = {name: tensor.double().clone() for name, tensor in sequence[0].items()}
    for weights in sequence[1:]:
        for name in average:
            average[name] = decay * average[name] + (1 - decay) * weights[name].double()
    return average


def test_every_iteration_checkpointed_is_the_textbook_ema():
    sequence = states(7)
    got = ema.ema_of_checkpoints(list(enumerate(sequence)), 0.8)
    want = recursion(sequence, 0.8)
    for name in want:
        torch.testing.assert_close(got[name], want[name])


def test_a_checkpoint_stands_for_the_iterations_since_the_previous_one():
    first, second, third = states(3, seed=1)
    got = ema.ema_of_checkpoints([(0, first), (5, second), (10, third)], 0.9)
    want = recursion([first] + [second] * 5 + [third] * 5, 0.9)
    for name in want:
        torch.testing.assert_close(got[name], want[name])


def test_decay_zero_is_the_last_state_and_a_constant_stays():
    sequence = states(4, seed=2)
    last = ema.ema_of_checkpoints(list(enumerate(sequence)), 0.0)
    torch.testing.assert_close(last["w"], sequence[-1]["w"].double())
    constant = ema.ema_of_checkpoints([(i, sequence[0]) for i in range(0, 20, 5)], 0.95)
    torch.testing.assert_close(constant["b"], sequence[0]["b"].double())


@pytest.mark.parametrize(
    ("pairs", "decay", "message"),
    [
        ([(0, {"w": torch.zeros(1)})], 1.0, "decay must be in"),
        ([(5, {"w": torch.zeros(1)}), (5, {"w": torch.ones(1)})], 0.5, "iterations must increase"),
        ([], 0.5, "no state dict"),
    ],
)
def test_bad_input_says_what_is_wrong(pairs, decay, message):
    with pytest.raises(ValueError, match=message):
        ema.ema_of_checkpoints(pairs, decay)


def test_model_folder_holds_the_ema_and_skips_unfinished_checkpoints(tmp_path):
    (tmp_path / "model" / "transformer").mkdir(parents=True)
    (tmp_path / "model" / "vqvae").mkdir()
    (tmp_path / "model" / "vqvae" / "config.json").write_text("{}")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    for iteration, value in [(4, 1.0), (9, 3.0)]:
        folder = tmp_path / "checkpoints" / f"iter_{iteration:06d}"
        folder.mkdir(parents=True)
        save_file({"w": torch.full((2,), value)}, str(folder / "transformer.safetensors"))
    (tmp_path / "checkpoints" / "iter_000014.partial").mkdir()
    (tmp_path / "checkpoints" / "iter_000019").mkdir()  # no weights yet: skipped
    found = ema.checkpoint_iterations(tmp_path)
    assert [iteration for iteration, _ in found] == [4, 9]
    loaded = [(iteration, load_file(str(folder / "transformer.safetensors"))) for iteration, folder in found]
    average = ema.ema_of_checkpoints(loaded, 0.5)
    target = ema.write_model(tmp_path, average, loaded[-1][1], tmp_path / "ema" / "decay0.5")
    written = load_file(str(target / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert written["w"].dtype == torch.float32
    torch.testing.assert_close(written["w"], torch.full((2,), 1.0 * 0.5**5 + 3.0 * (1 - 0.5**5)))
    assert (target / "vqvae" / "config.json").is_file()


def test_a_run_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(ConfigError, match="no checkpoint"):
        ema.checkpoint_iterations(tmp_path)


def fake_run(folder, model_weights: bool = True):
    """A run folder with two checkpoints and (when `model_weights`) a final model/ holding transformer weights."""
    (folder / "model" / "transformer").mkdir(parents=True)
    if model_weights:
        save_file({"w": torch.zeros(2)}, str(folder / "model" / "transformer" / "diffusion_pytorch_model.safetensors"))
    for iteration in (4, 9):
        checkpoint = folder / "checkpoints" / f"iter_{iteration:06d}"
        checkpoint.mkdir(parents=True)
        save_file({"w": torch.full((2,), float(iteration))}, str(checkpoint / "transformer.safetensors"))
    return folder


def run_command(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`checkpoint_ema.py ARGS` as its `__main__` runs it: (exit status, stderr)."""
    monkeypatch.setattr("sys.argv", ["checkpoint_ema.py", *args])
    capsys.readouterr()
    status = run_script(ema.main, "checkpoint_ema.py")
    return status, capsys.readouterr().err


def parse_error(monkeypatch, capsys, *args: str) -> str:
    """argparse's message for `checkpoint_ema.py ARGS`, which must exit with status 2."""
    monkeypatch.setattr("sys.argv", ["checkpoint_ema.py", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        ema.main()
    assert exited.value.code == 2
    return capsys.readouterr().err


def test_last_below_one_is_refused_by_the_command_line(tmp_path, monkeypatch, capsys):
    assert "argument --last: must be >= 1, got 0" in parse_error(monkeypatch, capsys, str(tmp_path), "--last", "0")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("1", "must be in (0, 1), got 1.0"),
        ("1.5", "must be in (0, 1), got 1.5"),
        ("0", "must be in (0, 1), got 0.0"),
        ("-0.5", "must be in (0, 1), got -0.5"),
        ("nan", "expected a finite number, got 'nan'"),
        ("inf", "expected a finite number, got 'inf'"),
    ],
)
def test_decays_outside_zero_one_are_refused_before_any_folder_is_written(tmp_path, monkeypatch, capsys, bad, message):
    run = fake_run(tmp_path / "run")
    error = parse_error(monkeypatch, capsys, str(run), "--decays", "0.9", bad)
    assert f"argument --decays: {message}" in error
    assert not (run / "ema").exists()


@pytest.mark.parametrize("model", ["empty", "missing"])
def test_a_run_without_its_final_model_is_one_error_naming_the_folder(tmp_path, monkeypatch, capsys, model):
    run = fake_run(tmp_path / "run", model_weights=False)
    if model == "missing":
        shutil.rmtree(run / "model")
    status, error = run_command(monkeypatch, capsys, str(run))
    assert status == 2
    assert error == (
        f"checkpoint_ema.py: error: {run / 'model'}: no transformer/*.safetensors; "
        "the run has not saved its final model folder\n"
    )
    assert not (run / "ema").exists()


def test_a_missing_run_folder_is_one_error(tmp_path, monkeypatch, capsys):
    status, error = run_command(monkeypatch, capsys, str(tmp_path / "nope"))
    assert (status, error) == (2, f"checkpoint_ema.py: error: run folder not found: {tmp_path / 'nope'}\n")


def test_a_file_or_a_part_of_the_run_given_as_the_run_is_named_so(tmp_path, monkeypatch, capsys):
    """RUN/model said `RUN/model/model: no transformer ...`; a file said "run folder not found"."""
    run = fake_run(tmp_path / "run")
    (tmp_path / "file").write_text("")
    for given, message in (
        (run / "model", f"{run / 'model'}: give the run folder above it, {run}"),
        (run / "checkpoints", f"{run / 'checkpoints'}: give the run folder above it, {run}"),
        (tmp_path / "file", f"{tmp_path / 'file'}: is a file; give the run folder"),
    ):
        status, error = run_command(monkeypatch, capsys, str(given))
        assert status == 2 and error.startswith(f"checkpoint_ema.py: error: {message}"), error


def test_a_file_where_a_decay_folder_goes_is_refused_before_any_is_written(tmp_path, monkeypatch, capsys):
    """It ended in NotADirectoryError from rmtree, after the first decay's folder was written."""
    run = fake_run(tmp_path / "run")
    (tmp_path / "ema").mkdir()
    (tmp_path / "ema" / "decay0.9").write_text("")
    args = (str(run), "--decays", "0.5", "0.9", "--out", str(tmp_path / "ema"))
    status, error = run_command(monkeypatch, capsys, *args)
    assert status == 2 and f"{tmp_path / 'ema' / 'decay0.9'} is a file, where the EMA model folder" in error
    assert sorted(path.name for path in (tmp_path / "ema").iterdir()) == ["decay0.9"]


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("run/model", "which every EMA folder copies"),
        ("run/model/ema", "which every EMA folder copies"),
        ("file", "is a file; give a folder"),
        ("file/ema", "cannot be made"),
    ],
)
def test_an_out_that_would_replace_the_run_or_cannot_be_made_is_refused(tmp_path, monkeypatch, capsys, out, message):
    run = fake_run(tmp_path / "run")
    (tmp_path / "file").write_text("")
    monkeypatch.chdir(tmp_path)
    status, error = run_command(monkeypatch, capsys, "run", "--out", out)
    assert status == 2 and error.startswith("checkpoint_ema.py: error: --out ") and message in error
    assert sorted(path.name for path in run.iterdir()) == ["checkpoints", "model"]
    assert sorted(path.name for path in (run / "model").iterdir()) == ["transformer"]


def test_the_command_writes_one_model_folder_per_decay(tmp_path, monkeypatch, capsys):
    run = fake_run(tmp_path / "run")
    status, _ = run_command(monkeypatch, capsys, str(run), "--decays", "0.5", "0.9", "--out", str(tmp_path / "ema"))
    assert status == 0
    written = load_file(str(tmp_path / "ema" / "decay0.5" / "transformer" / "diffusion_pytorch_model.safetensors"))
    torch.testing.assert_close(written["w"], torch.full((2,), 4.0 * 0.5**5 + 9.0 * (1 - 0.5**5)))
    assert (tmp_path / "ema" / "decay0.9").is_dir()


def test_an_out_that_holds_the_run_is_fine_unless_a_decay_folder_is_the_run(tmp_path, monkeypatch, capsys):
    """The script replaces OUT/decayD, never OUT: `--out RUN_DIR` or a folder above it deletes nothing."""
    fake_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    for out in ("run", "."):
        assert run_command(monkeypatch, capsys, "run", "--decays", "0.5", "--out", out)[0] == 0
        assert (tmp_path / out / "decay0.5" / "transformer").is_dir() and (tmp_path / "run" / "model").is_dir()
    fake_run(tmp_path / "decay0.5")  # a run whose folder is what --out . --decays 0.5 would replace
    status, error = run_command(monkeypatch, capsys, "decay0.5", "--decays", "0.5", "--out", ".")
    assert status == 2 and "its decay0.5 would replace decay0.5" in error and (tmp_path / "decay0.5" / "model").is_dir()


def test_an_earlier_decay_folder_is_replaced_with_a_word_and_any_other_folder_is_kept(tmp_path, monkeypatch, capsys):
    """A decayD folder was replaced silently, whatever it held."""
    run = fake_run(tmp_path / "run")
    args = (str(run), "--decays", "0.5", "--out", str(tmp_path / "ema"))
    assert run_command(monkeypatch, capsys, *args)[0] == 0
    monkeypatch.setattr("sys.argv", ["checkpoint_ema.py", *args])
    assert run_script(ema.main, "checkpoint_ema.py") == 0
    assert f"replacing the earlier {tmp_path / 'ema' / 'decay0.5'}" in capsys.readouterr().out
    kept = tmp_path / "ema" / "decay0.9"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    status, error = run_command(monkeypatch, capsys, str(run), "--decays", "0.9", "--out", str(tmp_path / "ema"))
    assert status == 2 and f"--out {kept}: holds something other than a model folder" in error
    assert (kept / "notes.txt").read_text() == "mine"
