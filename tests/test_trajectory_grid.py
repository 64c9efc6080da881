"""benchmarks/trajectory_grid.py: every step's x0 prediction, darkened where still masked, then the image."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from support import load_benchmark, run_benchmark_cli

from maskfocus.config import SamplerConfig
from maskfocus.images import to_uint8
from maskfocus.sampling import sample_with_config, seeded_generator


@pytest.fixture(scope="module")
def grid_module():
    return load_benchmark("trajectory_grid")


def test_cells_darken_exactly_the_masked_positions_and_end_with_the_image(grid_module, tiny_model):
    sampler = SamplerConfig(num_steps=4, batch_size=2)
    result = sample_with_config(tiny_model, ["a photo of a circle"] * 2, sampler, seeded_generator(0), record=True)
    cells = grid_module.step_cells(tiny_model, result, 1)
    assert cells.shape == (5, 64, 64, 3)
    assert np.array_equal(cells[-1], to_uint8(tiny_model.decode(result.tokens_BL[1:2]))[0])
    plain = to_uint8(tiny_model.decode(result.x0_BTL[1])).astype(np.float32)
    for step in range(4):
        masked_hw = result.masks_BTL[1, step].view(16, 16).numpy().repeat(4, 0).repeat(4, 1)
        expected = np.where(masked_hw[..., None], plain[step] * grid_module.MASKED_BRIGHTNESS, plain[step])
        assert np.array_equal(cells[step], expected.round().astype(np.uint8))
    assert result.masks_BTL[1, 0].all()  # the first step starts fully masked: its whole cell is dark
    assert cells[0].max() <= round(255 * grid_module.MASKED_BRIGHTNESS)


def test_a_bad_output_path_fails_before_sampling(grid_module, monkeypatch, capsys, tmp_path):
    """It failed after the sampling, with PIL's or the file system's traceback."""
    monkeypatch.setattr(grid_module, "load_generator", lambda *_: pytest.fail("the model was loaded"))
    (tmp_path / "afile").touch()
    for out, message in [
        (tmp_path / "afile" / "t.png", "is a file, so the folder cannot be made"),
        (tmp_path, "is a folder; give a file path"),
        (tmp_path / "t.txt", "cannot write images of type '.txt'"),
    ]:
        assert run_benchmark_cli(grid_module, ["--out", str(out)], monkeypatch) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"trajectory_grid.py: error: --out {out}: ") and message in error


def test_a_short_sampler_is_not_refused_for_the_runs_critical_steps(grid_module, monkeypatch, tmp_path):
    """`--set sampler.num_steps=2` was refused: the run config's K = 3 needs T >= 4, which a grid does not use."""

    class Sampled(Exception):
        pass

    def stop_at_sampling(model, prompts, sampler, *args, **kwargs):
        raise Sampled(sampler.num_steps)

    monkeypatch.setattr(grid_module, "load_generator", lambda model_config: SimpleNamespace(check_prompts=print))
    monkeypatch.setattr(grid_module, "sample_with_config", stop_at_sampling)
    with pytest.raises(Sampled) as sampled:
        run_benchmark_cli(grid_module, ["--out", str(tmp_path / "t.png"), "--set", "sampler.num_steps=2"], monkeypatch)
    assert sampled.value.args == (2,)  # it samples with the 2 steps asked for


def test_every_repeated_set_option_counts(grid_module, monkeypatch, capsys, tmp_path):
    """`--set A --set B` kept only B (as `maskfocus train` users repeat it): an unknown key in A passed unseen."""
    monkeypatch.setattr(grid_module, "load_generator", lambda *_: pytest.fail("the model was loaded"))
    argv = ["--out", str(tmp_path / "t.png"), "--set", "sampler.bogus=1", "--set", "sampler.num_steps=2"]
    assert run_benchmark_cli(grid_module, argv, monkeypatch) == 2
    assert "bogus" in capsys.readouterr().err


def test_settings_a_sampling_script_does_not_read_are_refused(grid_module, monkeypatch, capsys, tmp_path):
    """`--set grpo.remask=trajectory` ran without a word: the grid only samples."""
    monkeypatch.setattr(grid_module, "load_generator", lambda *_: pytest.fail("the model was loaded"))
    argv = ["--out", str(tmp_path / "t.png"), "--set", "grpo.remask=trajectory", "--set", "sampler.num_steps=2"]
    with pytest.raises(SystemExit) as exited:
        run_benchmark_cli(grid_module, argv, monkeypatch)
    assert exited.value.code == 2
    assert "--set grpo.remask: this script only samples; it reads sampler.*" in capsys.readouterr().err
