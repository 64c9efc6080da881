"""Output paths are checked before the work: a folder, or a suffix the writer does not know, is a clear error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from support import cli_error

from maskfocus.config_base import ConfigError
from maskfocus.outputs import check_output_file, figure_suffixes, image_suffixes


def test_the_writers_suffixes_include_the_usual_ones_and_not_text():
    assert {".png", ".jpg", ".webp"} <= set(image_suffixes())
    assert {".png", ".pdf", ".svg"} <= set(figure_suffixes())
    assert ".txt" not in image_suffixes() and ".txt" not in figure_suffixes()


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("grid.xyz", "image", "--out {path}: cannot write images of type '.xyz'; use .png, .jpg, .pdf, or another"),
        ("grid", "image", "--out {path}: cannot write images of type none (no suffix); use .png"),
        ("compare.txt", "figure", "--out {path}: cannot write figures of type '.txt'; use .png, .jpg, .pdf, .svg, or"),
        # types the writers list but cannot write here: found only after the work, in a traceback
        ("grid.xbm", "image", "--out {path}: cannot write images of type '.xbm'; use .png"),  # no RGB
        ("grid.h5", "image", "--out {path}: cannot write images of type '.h5'; use .png"),  # no handler installed
        pytest.param(
            "compare.pgf",
            "figure",
            "--out {path}: cannot write figures of type '.pgf'; use .png",
            marks=pytest.mark.skipif(shutil.which("xelatex") is not None, reason="xelatex installed: pgf writes"),
        ),
        ("folder", "file", "--out {path}: is a folder; give a file path"),
        ("folder", "image", "--out {path}: is a folder; give a file path"),
        ("afile/below/r.jsonl", "file", "--out {path}: {tmp}/afile is a file, so the folder cannot be made"),
    ],
)
def test_a_bad_output_path_names_the_option_the_path_and_what_is_allowed(tmp_path, name, kind, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("a file")
    path = tmp_path / name
    with pytest.raises(ConfigError) as raised:
        check_output_file("--out", path, kind)
    assert str(raised.value).startswith(message.format(path=path, tmp=tmp_path))


def test_a_folder_with_a_file_or_a_dangling_link_in_its_way_is_named(tmp_path):
    from maskfocus.outputs import check_output_folder, file_in_the_way

    (tmp_path / "afile").write_text("a file")
    (tmp_path / "link").symlink_to(tmp_path / "gone")
    assert file_in_the_way(tmp_path / "new" / "deeper") is None and file_in_the_way(tmp_path) is None
    assert file_in_the_way(tmp_path / "afile" / "x") == tmp_path / "afile"
    assert file_in_the_way(tmp_path / "link") == tmp_path / "link"
    with pytest.raises(ConfigError, match=r"^--out .*afile: is a file; give a folder$"):
        check_output_folder("--out", tmp_path / "afile")
    with pytest.raises(ConfigError, match=rf"^--out .*link/x: cannot be made: {tmp_path / 'link'} is a file"):
        check_output_folder("--out", tmp_path / "link" / "x")


@pytest.mark.parametrize(
    ("name", "kind"), [("grid.PNG", "image"), ("c.svg", "figure"), ("r.jsonl", "file"), (None, "file")]
)
def test_a_writable_output_path_passes_and_the_check_makes_nothing(tmp_path, name, kind):
    check_output_file("--out", None if name is None else tmp_path / "new" / name, kind)  # raises if refused
    assert not (tmp_path / "new").exists()


def test_sample_and_eval_refuse_a_bad_output_before_loading_the_model(tmp_path, capsys):
    """Both would load a missing model first, were the output not checked before it."""
    missing = str(tmp_path / "no-model")
    error = cli_error(capsys, "sample", "--prompt", "a photo of a circle", "--model", missing, "--out", str(tmp_path))
    assert error.strip().endswith(f"--out {tmp_path}: is a folder; give a file path")
    error = cli_error(capsys, "eval", "--model", missing, "--no-clip", "--grid", str(tmp_path / "grid.txt"))
    assert "--grid" in error and "cannot write images of type '.txt'" in error


@pytest.mark.parametrize(
    ("first", "second"), [("--out", "--summary"), ("--metadata", "--out"), ("--summary", "--metadata")]
)
def test_eval_refuses_two_options_naming_one_file_before_loading_the_model(tmp_path, capsys, first, second):
    """`--out X --summary X` replaced the per-image records with the summary; `--out` = `--metadata` overwrote the
    prompt file with the results."""
    metadata = tmp_path / "prompts.jsonl"
    row = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
    metadata.write_text(json.dumps(row) + "\n")
    paths = {"--metadata": str(metadata), "--out": str(tmp_path / "out.jsonl"), "--summary": str(tmp_path / "s.json")}
    paths[second] = paths[first]
    args = [arg for option, path in paths.items() for arg in (option, path)]
    error = cli_error(capsys, "eval", "--model", str(tmp_path / "no-model"), "--no-clip", *args)
    ordered = sorted((first, second), key=["--metadata", "--out", "--summary"].index)
    assert f"{ordered[0]} and {ordered[1]} name the same file {paths[first]}; give each its own" in error
    assert json.loads(metadata.read_text()) == row


def test_an_output_file_that_cannot_be_written_is_refused_before_the_work(tmp_path, monkeypatch):
    """trajectory_grid.py and gpu_check.py --json sampled for minutes, then lost it all to a read-only folder."""
    import maskfocus.outputs

    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = maskfocus.outputs.os.access
    monkeypatch.setattr(maskfocus.outputs.os, "access", lambda path, mode: path != locked and real_access(path, mode))
    with pytest.raises(ConfigError, match=r"^--out .*locked/sub/t.png: .*locked cannot be written \(permissions or a"):
        check_output_file("--out", locked / "sub" / "t.png", "image")
    check_output_file("--out", tmp_path / "free" / "t.png", "image")


def test_a_model_output_replaces_only_an_empty_folder_or_an_earlier_model_folder(tmp_path):
    """relation_finetune.py and positional_base.py delete OUT before writing it: given a run folder or `.` by
    mistake, they deleted it after minutes of training."""
    from maskfocus.outputs import check_replaceable_model_folder

    check_replaceable_model_folder("OUT", tmp_path / "new")  # not there yet
    (model := tmp_path / "model" / "transformer").mkdir(parents=True)
    check_replaceable_model_folder("OUT", model.parent)  # an earlier model folder
    (run := tmp_path / "run" / "model" / "transformer").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    for kept in (tmp_path / "run", tmp_path):
        with pytest.raises(ConfigError, match=r"^OUT .*: holds something other than a model folder, and writing it"):
            check_replaceable_model_folder("OUT", kept)
    (run.parent / "config.yaml").write_text("seed: 0\n")  # a transformer/ beside a run's config: still refused
    with pytest.raises(ConfigError, match="holds something other than a model folder"):
        check_replaceable_model_folder("OUT", run.parent)


def test_a_folder_that_refuses_new_files_is_found_even_where_os_access_says_yes(tmp_path):
    """As root, os.access allowed /proc, and the results of `sample`, `eval --summary` and `compare --markdown` were
    lost after the work, in a bare "[Errno 2]" or a PermissionError traceback."""
    import os

    from maskfocus.outputs import check_writable

    if not Path("/proc").is_dir() or not os.access("/proc", os.W_OK):
        pytest.skip("needs a /proc that os.access calls writable (Linux, as root)")
    with pytest.raises(ConfigError, match=r"--out /proc/x.png: cannot be made: /proc cannot be written"):
        check_writable("--out", Path("/proc/x.png"))
    check_writable("--out", tmp_path / "new" / "x.png")
    (tmp_path / "kept.txt").write_text("text")
    check_writable("--out", tmp_path / "kept.txt")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["kept.txt"]  # the probe left nothing
    assert (tmp_path / "kept.txt").read_text() == "text"


def test_replace_folder_swaps_a_complete_folder_in_and_a_failed_write_leaves_the_old_one(tmp_path):
    """Pretraining wrote its weights straight over the old ones: a stop or a full disk mid-save tore them."""
    from maskfocus.outputs import replace_folder

    target = tmp_path / "vqvae"
    target.mkdir()
    (target / "weights").write_text("old")

    def failing(folder):
        folder.mkdir()
        (folder / "weights").write_text("half")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        replace_folder(target, failing)
    assert (target / "weights").read_text() == "old"
    replace_folder(target, lambda folder: (folder.mkdir(), (folder / "weights").write_text("new")))
    assert (target / "weights").read_text() == "new"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["vqvae"]  # the failed .partial was cleared too


def test_replace_folder_puts_back_an_old_folder_a_crash_left_between_the_renames(tmp_path):
    from maskfocus.outputs import replace_folder

    (old := tmp_path / ".vqvae.old").mkdir()
    (old / "weights").write_text("old")  # the crash came after `target -> .old`, before `.partial -> target`

    def failing(folder):
        raise OSError("disk full")

    with pytest.raises(OSError):
        replace_folder(tmp_path / "vqvae", failing)
    assert (tmp_path / "vqvae" / "weights").read_text() == "old"


def test_a_stale_old_folder_beside_the_new_one_is_not_put_back(tmp_path):
    """A crash after the swap, before the old folder was deleted, leaves `.NAME.old` beside the new folder: the new
    one stays (only a missing target means the old folder is the only copy)."""
    from maskfocus.outputs import replace_folder, restore_interrupted_swap

    (tmp_path / "vqvae").mkdir()
    (tmp_path / "vqvae" / "weights").write_text("new")
    (tmp_path / ".vqvae.old").mkdir()
    (tmp_path / ".vqvae.old" / "weights").write_text("old")
    assert not restore_interrupted_swap(tmp_path / "vqvae")
    assert (tmp_path / "vqvae" / "weights").read_text() == "new"
    replace_folder(tmp_path / "vqvae", lambda folder: (folder.mkdir(), (folder / "weights").write_text("newer")))
    assert (tmp_path / "vqvae" / "weights").read_text() == "newer" and not (tmp_path / ".vqvae.old").exists()


@pytest.mark.parametrize("at", ["rename", "on_swapped"])
def test_a_stop_during_the_swap_lands_after_its_record(tmp_path, at):
    """A SIGTERM between `partial -> target` and `on_swapped` left the new folder beside the old record (a
    pretraining's report and card then credited new weights to old settings). It waits and lands once the record is
    written, as the handler in place before would have had it."""
    import os
    import signal

    import maskfocus.outputs as outputs
    from maskfocus.stopping import StopAtOnce, StopSignal

    (tmp_path / "vqvae").mkdir()
    recorded = []

    def on_swapped():
        if at == "on_swapped":
            os.kill(os.getpid(), signal.SIGTERM)
        recorded.append((tmp_path / "vqvae" / "weights").read_text())

    real_rename = outputs.Path.rename

    def rename(self, target):
        result = real_rename(self, target)
        if at == "rename" and self.name == ".vqvae.partial":
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    write = lambda folder: (folder.mkdir(), (folder / "weights").write_text("new"))  # noqa: E731
    with StopAtOnce() as stop_at_once, pytest.MonkeyPatch.context() as patch:
        patch.setattr(outputs.Path, "rename", rename)
        with pytest.raises(StopSignal, match="SIGTERM"):
            outputs.replace_folder(tmp_path / "vqvae", write, on_swapped)
        assert signal.getsignal(signal.SIGTERM) == stop_at_once._handle  # the handler before it is back
    assert recorded == ["new"]  # the record came before the stop
    assert (tmp_path / "vqvae" / "weights").read_text() == "new" and not (tmp_path / ".vqvae.old").exists()


def test_a_stop_held_during_a_failing_swap_leaves_the_failure_to_report(tmp_path):
    """The held signal is dropped when the guarded steps fail: the failure is what ends the run, not a stop."""
    import os
    import signal

    import maskfocus.outputs as outputs
    from maskfocus.stopping import StopAtOnce

    def on_swapped():
        os.kill(os.getpid(), signal.SIGTERM)
        raise OSError("the report could not be written")

    write = lambda folder: (folder.mkdir(), (folder / "weights").write_text("new"))  # noqa: E731
    with StopAtOnce(), pytest.raises(OSError, match="the report could not be written"):
        outputs.replace_folder(tmp_path / "vqvae", write, on_swapped)
