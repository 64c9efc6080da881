"""`load_generator` dispatches on `model.kind` and passes the config's options to the adapter."""

from __future__ import annotations

import pytest
import torch

from maskfocus.config import ConfigError, ModelConfig, config_from_dict
from maskfocus.models import load_generator
from maskfocus.models.amused import AmusedGenerator
from maskfocus.models.meissonic import MeissonicGenerator


def test_amused_kind_loads_the_aMUSEd_adapter_with_overrides(amused_folder):
    model = load_generator(ModelConfig(path=str(amused_folder), resolution=32), device="cpu", dtype="bfloat16")
    assert isinstance(model, AmusedGenerator) and model.image_size == 32
    assert next(model.transformer.parameters()).dtype == torch.bfloat16 and model.transformer.dtype == torch.bfloat16
    assert model.blocks() == [
        model.transformer.down_block,
        *model.transformer.transformer_layers,
        model.transformer.up_block,
    ]


def test_meissonic_kind_loads_the_meissonic_adapter(meissonic_folder):
    config = ModelConfig(path=str(meissonic_folder), kind="meissonic", trust_checkpoint_code=True, resolution=32)
    assert isinstance(load_generator(config), MeissonicGenerator)


@pytest.mark.parametrize("kind", ["amused", "meissonic"])
def test_a_folder_holding_only_the_fp16_variant_files_loads_them(kind, request):
    """What `from_pretrained(..., variant="fp16")` downloads: every part's weights as `*.fp16.safetensors`, which the
    libraries read only when asked for the variant (it was "no file named diffusion_pytorch_model.bin")."""
    import torch

    folder = request.getfixturevalue(f"{kind}_copy")
    config = ModelConfig(path=str(folder), kind=kind, trust_checkpoint_code=kind == "meissonic", resolution=32)
    plain = load_generator(config)
    for weights in list(folder.rglob("*.safetensors")):
        weights.rename(weights.with_name(weights.name.replace(".safetensors", ".fp16.safetensors")))
    if kind == "meissonic":
        (folder / "transformer" / "IMPORTED").unlink(missing_ok=True)
    variant = load_generator(config)
    for part in ("transformer", "text_encoder", "vqvae"):
        loaded, expected = getattr(variant, part).state_dict(), getattr(plain, part).state_dict()
        assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], expected[k]) for k in expected), part


def test_unknown_kind_and_dtype_are_config_errors():
    with pytest.raises(ConfigError, match="model.kind"):
        config_from_dict({"model": {"kind": "maskgit"}})
    with pytest.raises(ConfigError, match="model.dtype"):
        config_from_dict({"model": {"dtype": "fp8"}})


def test_a_device_torch_cannot_parse_is_a_config_error_and_cuda_without_a_gpu_a_load_error(monkeypatch):
    import torch

    from maskfocus.models import check_device
    from maskfocus.models.base import ModelLoadError

    with pytest.raises(
        ConfigError, match=r"model.device: not a torch device \(e.g. cpu, cuda, cuda:1\) \(got 'tpu9'\)"
    ):
        config_from_dict({"model": {"device": "tpu9", "dtype": "auto"}})  # auto: resolved from the device
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match=r"^model.device cuda:1: torch sees no CUDA device on this machine"):
        load_generator(config_from_dict({"model": {"device": "cuda:1"}}).model)
    check_device("cpu")


def test_loading_is_quiet_and_leaves_the_transformers_bar_as_it_was(capfd):
    from transformers.utils import logging as transformers_logging

    from maskfocus.config import ModelConfig
    from maskfocus.models import load_generator

    assert transformers_logging.is_progress_bar_enabled()
    load_generator(ModelConfig())
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert "accelerate" not in captured.err + captured.out
    assert transformers_logging.is_progress_bar_enabled()  # restored for the caller's own loads


def test_a_file_given_as_the_model_folder_is_named_as_a_file(tmp_path):
    """It read "model folder not found" for a path that exists."""
    from maskfocus.models.base import ModelLoadError
    from maskfocus.models.loading import check_generator_folder

    (path := tmp_path / "model.safetensors").touch()
    with pytest.raises(ModelLoadError, match=r"model.safetensors is a file, not a model folder; "):
        check_generator_folder(path, "amused")
    with pytest.raises(ModelLoadError, match=r"model folder not found: "):
        check_generator_folder(tmp_path / "missing", "amused")


def test_a_folder_holding_the_model_one_level_down_is_named_in_the_error(tmp_path):
    """`--model runs/NAME` for runs/NAME/model, or the package's pretrained/ for pretrained/shapes-tiny."""
    from maskfocus.models.base import ModelLoadError
    from maskfocus.models.loading import GENERATOR_PARTS, check_generator_folder

    for part in GENERATOR_PARTS:
        (tmp_path / "run" / "model" / part).mkdir(parents=True)
    (tmp_path / "run" / "images").mkdir()
    with pytest.raises(ModelLoadError, match=rf"; did you mean {tmp_path / 'run' / 'model'}, which has them\?$"):
        check_generator_folder(tmp_path / "run", "amused")
    with pytest.raises(ModelLoadError, match=r"; check the folder against the README"):  # no model inside: the hint
        check_generator_folder(tmp_path / "run" / "images", "amused")


def test_an_unknown_built_in_name_is_refused_with_the_known_ones():
    """`builtin:shapes-tinny` was read as missing weights, with the hint to rebuild them (about 30 minutes)."""
    from maskfocus.models.base import ModelLoadError
    from maskfocus.models.loading import BUILTIN_MODELS, builtin_folder, resolve_model_path

    with pytest.raises(ModelLoadError, match="^builtin:shapes-tinny: no such built-in model; the built-in ones are"):
        resolve_model_path("builtin:shapes-tinny")
    assert all(resolve_model_path(f"builtin:{name}") == builtin_folder(name) for name in BUILTIN_MODELS)


def test_a_training_checkpoint_given_as_a_model_names_the_runs_model_folder(tmp_path):
    """`--model RUN/checkpoints/iter_X` pointed to the README, as for any folder."""
    from maskfocus.models.base import ModelLoadError
    from maskfocus.models.loading import check_generator_folder

    checkpoint = tmp_path / "run" / "checkpoints" / "iter_000009"
    checkpoint.mkdir(parents=True)
    (checkpoint / "transformer.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=rf"it is a training checkpoint of the run {tmp_path / 'run'}, which"):
        check_generator_folder(checkpoint, "amused")


def _drop_weight(folder, part: str, key: str, file: str) -> None:
    from safetensors.torch import load_file, save_file

    weights = load_file(folder / part / file)
    del weights[key]
    save_file(weights, folder / part / file)


def test_a_text_encoder_missing_weights_is_refused_not_started_random(amused_copy):
    """The libraries only warn and start missing weights random: a text encoder without text_projection gave a
    random pooled condition."""
    from maskfocus.models.base import ModelLoadError

    _drop_weight(amused_copy, "text_encoder", "text_projection.weight", "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"text_encoder: the checkpoint lacks 1 weight\(s\) .*\(text_projection"):
        load_generator(ModelConfig(path=str(amused_copy)))
    with pytest.raises(ModelLoadError, match="must be a CLIPTextModelWithProjection"):
        load_generator(ModelConfig(path=str(amused_copy)))


def test_a_transformer_missing_weights_is_refused_not_started_random(meissonic_copy):
    """A transformer without a layer failed at `.to(device)` with "Cannot copy out of meta tensor"."""
    from maskfocus.models.base import ModelLoadError

    weights = "diffusion_pytorch_model.safetensors"
    _drop_weight(meissonic_copy, "transformer", "up_block.weight", weights)
    config = ModelConfig(path=str(meissonic_copy), kind="meissonic", trust_checkpoint_code=True, resolution=32)
    with pytest.raises(ModelLoadError, match=r"transformer: the checkpoint lacks 1 weight\(s\) .*up_block.weight"):
        load_generator(config)


def test_a_meissonic_folder_given_as_amused_is_named_before_any_weight_loads(meissonic_folder):
    """UVit2DModel took the Meissonic config without complaint, started every weight random and failed later at a
    width check; `maskfocus train --check` runs the same check (check_generator_folder)."""
    from maskfocus.models.base import ModelLoadError
    from maskfocus.models.loading import check_generator_folder

    message = r"is not an aMUSEd folder: its transformer is a \w+ .*transformer.py, needs model.kind: meissonic"
    with pytest.raises(ModelLoadError, match=message):
        check_generator_folder(meissonic_folder, "amused")
    with pytest.raises(ModelLoadError, match=message):
        load_generator(ModelConfig(path=str(meissonic_folder), kind="amused"))


def test_a_resolution_the_vq_cannot_tile_is_refused_not_floored(amused_folder):
    """500 px with a downscale of 16 sampled 496-px images without a word."""
    from maskfocus.models.base import ModelLoadError

    with pytest.raises(
        ModelLoadError, match=r"model.resolution 33 is not a multiple of the VQ's downscale 2: use 32 or 34"
    ):
        load_generator(ModelConfig(path=str(amused_folder), resolution=33))
    assert load_generator(ModelConfig(path=str(amused_folder), resolution=34)).image_size == 34
