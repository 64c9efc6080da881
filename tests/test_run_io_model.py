"""maskfocus/run_io.py's final model folder and checkpoint files: the trained weights replace every weights file of
their part, the run's own text encoder goes in, the folder is swapped in whole, and checkpoints are synced before
older ones are pruned."""

from __future__ import annotations

import pytest
import torch


def test_the_trained_weights_replace_every_weights_file_of_the_part(tmp_path):
    """The Hub's aMUSEd and Meissonic parts ship diffusion_pytorch_model.safetensors beside a .fp16 variant: the
    trained weights went into whichever a glob listed first, and the other kept the base weights."""
    import shutil

    from safetensors.torch import load_file

    from maskfocus.models.loading import resolve_model_path
    from maskfocus.run_io import save_model_folder

    base = tmp_path / "base"
    shutil.copytree(resolve_model_path("builtin:shapes-tiny"), base)
    weights = base / "transformer" / "diffusion_pytorch_model.safetensors"
    shutil.copy(weights, weights.with_name("diffusion_pytorch_model.fp16.safetensors"))
    (weights.with_name("diffusion_pytorch_model.safetensors.index.json")).write_text("{}")
    (weights.with_name("diffusion_pytorch_model.safetensors.index.fp16.json")).write_text("{}")
    trained = {name: torch.full_like(value, 0.5) for name, value in load_file(weights).items()}

    class Trained(torch.nn.Module):  # what save_model_folder reads of the trained transformer: its state_dict
        def state_dict(self, *args, **kwargs):
            return trained

    saved = save_model_folder(base, Trained(), tmp_path / "model")
    files = sorted(path.name for path in (saved / "transformer").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert all(torch.equal(value, trained[name]) for name, value in load_file(saved / "transformer" / files[1]).items())
    assert (saved / "vqvae" / "diffusion_pytorch_model.safetensors").read_bytes() == (
        base / "vqvae" / "diffusion_pytorch_model.safetensors"
    ).read_bytes()  # untrained parts are copied as they are


def test_a_text_encoder_the_run_used_in_place_of_the_models_goes_into_the_final_model_folder(tmp_path):
    """`model.text_encoder` (Meissonic's reference CLIP) replaces the folder's text_encoder/ when the run loads it;
    the final model folder kept the base's, so `maskfocus eval --model RUN/model` without the run's config sampled
    with another text encoder than the one trained against."""
    import shutil

    from maskfocus.models.loading import resolve_model_path
    from maskfocus.run_io import save_model_folder

    base = resolve_model_path("builtin:shapes-tiny")
    replacement = shutil.copytree(base / "text_encoder", tmp_path / "reference_clip")
    (replacement / "MARK").write_text("the run's text encoder")
    saved = save_model_folder(base, torch.nn.Linear(1, 1), tmp_path / "model", text_encoder_folder=replacement)
    assert (saved / "text_encoder" / "MARK").read_text() == "the run's text encoder"
    assert not (base / "text_encoder" / "MARK").exists()


def test_a_new_checkpoints_rename_is_synced_before_older_checkpoints_are_pruned(tmp_path, monkeypatch):
    """Its files were synced, but not the checkpoints/ folder after the rename: after a power loss on some network
    file systems, with keep_checkpoints 1, neither the new checkpoint nor the pruned one might be there."""
    from maskfocus import run_io

    events = []
    real_fsync_path, real_prune = run_io.fsync_path, run_io.prune_checkpoints
    monkeypatch.setattr(run_io, "fsync_path", lambda path: (events.append(("fsync", path)), real_fsync_path(path)))
    monkeypatch.setattr(run_io, "prune_checkpoints", lambda *a: (events.append(("prune", None)), real_prune(*a)))
    run_io.save_checkpoint(tmp_path, 0, torch.nn.Linear(2, 2), None, {}, keep=1)
    run_io.save_checkpoint(tmp_path, 1, torch.nn.Linear(2, 2), None, {}, keep=1)
    last_prune = max(index for index, event in enumerate(events) if event[0] == "prune")
    assert ("fsync", tmp_path / "checkpoints") in events[last_prune - 1 : last_prune]
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["iter_000001"]


def test_a_final_model_folder_cut_short_leaves_the_one_before(tmp_path, monkeypatch):
    """It was deleted, then copied part by part: a stop or a full disk mid-way left a model/ without its weights."""
    from maskfocus import run_io
    from maskfocus.models.loading import resolve_model_path

    base = resolve_model_path("builtin:shapes-tiny")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MARK").write_text("the model before")

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(run_io, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_io.save_model_folder(base, torch.nn.Linear(1, 1), tmp_path / "model")
    assert (tmp_path / "model" / "MARK").read_text() == "the model before"
