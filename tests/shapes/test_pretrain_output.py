"""`maskfocus pretrain`'s output folder: parts swapped in whole, the card and measurements retired by a new stage,
`--stages measure`, what a stop leaves and says, and the folders and reports it refuses."""

from __future__ import annotations

import json

from maskfocus.shapes.pretrain import PretrainConfig, run_pretraining
from maskfocus.shapes.pretrain_clip import ClipPretrainConfig
from maskfocus.shapes.pretrain_generator import GeneratorPretrainConfig
from maskfocus.shapes.pretrain_vq import VQPretrainConfig
from maskfocus.stopping import RunStopped

TINY_STAGES = {
    "vq": VQPretrainConfig(num_steps=2, batch_size=4, table_scenes=300),
    "generator": GeneratorPretrainConfig(num_scenes=16, num_steps=2, batch_size=4),
    "clip": ClipPretrainConfig(num_steps=2, batch_size=4),
}


def test_a_new_stage_retires_the_old_card_and_measurements_and_measure_alone_writes_them_anew(tmp_path):
    """A stop after a new stage was saved left the old MODEL_CARD.md and measurements, describing other weights;
    a stop during the measurement left no way to measure without retraining a stage."""
    import pytest

    import maskfocus.shapes.pretrain_clip

    config = PretrainConfig(**TINY_STAGES, eval_images_per_prompt=1, measure_rows=3)
    run_pretraining(tmp_path, ["vq", "generator", "clip"], config=config, command="first")
    assert "measurements" in json.loads((tmp_path / "pretrain_report.json").read_text())

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    real_train_clip = maskfocus.shapes.pretrain_clip.train_clip
    maskfocus.shapes.pretrain_clip.train_clip = stopped
    try:
        with pytest.raises(RunStopped, match="this run saved generator in"):
            run_pretraining(tmp_path, ["generator", "clip"], config=config.model_copy(update={"seed": 4}))
    finally:
        maskfocus.shapes.pretrain_clip.train_clip = real_train_clip
    report = json.loads((tmp_path / "pretrain_report.json").read_text())
    assert "measurements" not in report and report["stage_seeds"]["generator"] == 4
    assert not (tmp_path / "MODEL_CARD.md").exists() and (tmp_path / "MODEL_CARD.stale.md").is_file()
    report = run_pretraining(tmp_path, ["measure"], config=config.model_copy(update={"measure_rows": 2}))
    assert report["measurements"]["base_model"]["num_images"] == 2 and report["stage_seeds"]["generator"] == 4
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert "only the first 2 prompt rows (a partial measurement)" in card and "vq 0, generator 4, clip 0" in card
    assert not (tmp_path / "MODEL_CARD.stale.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no .partial or .old left


def test_an_out_that_is_not_a_pretraining_output_or_a_damaged_report_is_refused_before_training(tmp_path):
    """A run folder or a folder of other things was written into (a MODEL_CARD.md of the user's overwritten); a
    damaged report ended in a traceback, after the first stage for a list."""
    import pytest

    from maskfocus.config import ConfigError

    (run := tmp_path / "run").mkdir()
    (run / "config.yaml").write_text("seed: 0\n")
    (other := tmp_path / "other").mkdir()
    (other / "MODEL_CARD.md").write_text("mine")
    (damaged := tmp_path / "damaged").mkdir()
    (damaged / "pretrain_report.json").write_text("[]")
    for out, message in (
        (run, "is a training run's folder"),
        (other, "holds other things and none of pretrain_report.json, pretrain_log.jsonl, shapes-tiny, shapes-clip"),
        (damaged, "pretrain_report.json: not a pretraining report"),
    ):
        with pytest.raises(ConfigError, match=message):
            run_pretraining(out, ["vq"], config=PretrainConfig(**TINY_STAGES))
    assert (other / "MODEL_CARD.md").read_text() == "mine" and not (damaged / "shapes-tiny").exists()
    with pytest.raises(ConfigError, match="generator.train_text_encoder false keeps a given text encoder frozen"):
        run_pretraining(
            tmp_path / "new", ["vq", "generator"], config=PretrainConfig(generator={"train_text_encoder": False})
        )
    with pytest.raises(ConfigError, match="--stages measure: .* lacks shapes-tiny/transformer, shapes-clip"):
        run_pretraining(tmp_path / "new", ["measure"], config=PretrainConfig())


def test_sigterm_during_a_stage_stops_like_ctrl_c_with_its_exit_status(tmp_path, monkeypatch):
    """SIGTERM ended the process with no message and no cleanup."""
    import pytest

    import maskfocus.shapes.pretrain_vq
    from maskfocus.stopping import StopSignal

    def terminated(*args, **kwargs):
        raise StopSignal("SIGTERM")

    monkeypatch.setattr(maskfocus.shapes.pretrain_vq, "train_vqvae", terminated)
    with pytest.raises(RunStopped) as stopped:
        run_pretraining(tmp_path, ["vq"], config=PretrainConfig(**TINY_STAGES))
    assert stopped.value.exit_code == 143 and "finish with the same command and --stages vq" in str(stopped.value)


def test_a_stop_before_any_stage_saved_can_be_rerun_with_the_same_command(tmp_path, monkeypatch):
    """The log written at the start was "other things": the rerun the stop message asked for was refused."""
    import pytest

    import maskfocus.shapes.pretrain_vq

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(maskfocus.shapes.pretrain_vq, "train_vqvae", interrupted)
    for _ in range(2):
        with pytest.raises(RunStopped, match="this run saved nothing"):
            run_pretraining(tmp_path / "out", ["vq"], config=PretrainConfig(**TINY_STAGES))
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["pretrain_log.jsonl"]


def test_a_second_pretraining_into_an_out_in_use_is_refused_and_the_lock_goes_at_the_end(tmp_path):
    """Two pretrainings into one --out clobbered each other's parts and report (train has its run lock)."""
    import json
    import subprocess

    import pytest

    from maskfocus import run_lock
    from maskfocus.config import ConfigError

    out = tmp_path / "out"
    out.mkdir()
    other = subprocess.Popen(["sleep", "60"])  # a live process of this host and container holds the lock
    try:
        holder = {**run_lock._holder(), "pid": other.pid, "start_time": run_lock._start_time(other.pid)}
        (out / run_lock.LOCK_FILE).write_text(json.dumps(holder))
        with pytest.raises(ConfigError, match=rf"{out} is in use by a run \(process {other.pid} "):
            run_pretraining(out, ["vq"], config=PretrainConfig(**TINY_STAGES))
        assert sorted(path.name for path in out.iterdir()) == sorted(run_lock.LOCK_FILES)  # nothing trained, written
    finally:
        other.kill()
        other.wait()
    run_pretraining(out, ["vq"], config=PretrainConfig(**TINY_STAGES))  # the dead holder's lock is taken over
    assert (out / "shapes-tiny" / "vqvae").is_dir() and not (out / run_lock.LOCK_FILE).exists()


def test_the_vq_alone_left_aside_by_a_killed_swap_is_put_back_too(tmp_path, capsys):
    """The VQ is swapped alone (as shapes-tiny/.vqvae.old) into a folder without a generator: only whole parts were
    put back, and the next `--stages generator` said to retrain the VQ."""
    import shutil

    from maskfocus.models.amused import builtin_folder
    from maskfocus.shapes.pretrain import restore_swapped_parts

    (tmp_path / "shapes-tiny").mkdir()
    shutil.copytree(builtin_folder() / "vqvae", tmp_path / "shapes-tiny" / ".vqvae.old")
    restore_swapped_parts(tmp_path)
    assert f"put back {tmp_path / 'shapes-tiny' / 'vqvae'} from .vqvae.old" in capsys.readouterr().out
    assert (tmp_path / "shapes-tiny" / "vqvae" / "config.json").is_file()
    assert not (tmp_path / "shapes-tiny" / ".vqvae.old").exists()


def test_measure_puts_back_a_part_a_killed_swap_left_aside_and_cards_weights_trained_elsewhere(tmp_path, capsys):
    """Model folders copied in (no report: `--stages measure` crashed on the card's missing commands), one of them
    left as .shapes-tiny.old by a pretraining killed between the two renames of its swap (the checks then said to
    retrain it)."""
    import shutil

    from maskfocus.models.amused import builtin_folder

    shipped = builtin_folder().parent
    shutil.copytree(shipped / "shapes-tiny", tmp_path / ".shapes-tiny.old")
    shutil.copytree(shipped / "shapes-clip", tmp_path / "shapes-clip")
    config = PretrainConfig(**TINY_STAGES, eval_images_per_prompt=1, measure_rows=2)
    report = run_pretraining(tmp_path, ["measure"], config=config)
    assert f"put back {tmp_path / 'shapes-tiny'} from .shapes-tiny.old" in capsys.readouterr().out
    assert (tmp_path / "shapes-tiny" / "transformer").is_dir() and not (tmp_path / ".shapes-tiny.old").exists()
    assert report["measurements"]["base_model"]["num_images"] == 2
    card = (tmp_path / "MODEL_CARD.md").read_text()
    assert card.count("not recorded: these weights were trained elsewhere and copied into this folder") == 2
