"""`model.dtype: auto`: bfloat16 only where the hardware computes in it, resolved once when the config loads."""

from __future__ import annotations

from pathlib import Path
from typing import get_args

import pytest
import torch
import yaml

from maskfocus import hardware
from maskfocus.config import ConfigError, ModelConfig, dump_config, load_config


@pytest.fixture(params=[False, True], ids=["avx2-only", "avx512-bf16"])
def native_bf16(request, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bfloat16", lambda: request.param)
    return request.param


def test_auto_on_cpu_is_bfloat16_only_with_bfloat16_instructions(native_bf16):
    assert hardware.native_sampling_dtype("cpu") == ("bfloat16" if native_bf16 else "float32")
    assert ModelConfig(dtype="auto").dtype == ("bfloat16" if native_bf16 else "float32")


def test_auto_on_cuda_is_bfloat16_whatever_the_cpu(native_bf16, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a head node without GPUs resolves it
    assert ModelConfig(dtype="auto", device="cuda:1").dtype == "bfloat16"


def test_a_gpu_that_cannot_be_opened_here_is_taken_as_current(monkeypatch):
    """An exclusive-mode GPU, or a failed driver init: left unresolved, `auto` passed as a dtype name."""

    def cannot_open(index):
        raise RuntimeError("CUDA error: all CUDA-capable devices are busy or unavailable")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", cannot_open)
    assert ModelConfig(dtype="auto", device="cuda").dtype == "bfloat16"


@pytest.mark.parametrize(
    ("capability", "device", "expected"),
    [
        ((9, 0), "cuda", "bfloat16"),
        ((8, 0), "cuda:1", "bfloat16"),
        ((7, 0), "cuda", "float32"),
        ((7, 5), "cuda:1", "float32"),
    ],
)
def test_auto_on_a_gpu_this_process_sees_is_bfloat16_only_from_compute_capability_8(
    monkeypatch, capability, device, expected
):
    """A V100 (7.0) or T4 (7.5) has no bfloat16 arithmetic; a GPU the process does not see (the head node resolves a
    cluster run's config) is taken as current."""
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index: asked.append(index) or capability)
    assert ModelConfig(dtype="auto", device=device).dtype == expected
    assert asked == [torch.device(device).index]
    assert ModelConfig(dtype="auto", device="cuda:2").dtype == "bfloat16"  # not one of this process's 2 GPUs
    assert len(asked) == 1


def test_waiting_for_a_device_synchronizes_cuda_only(monkeypatch):
    synchronized = []
    monkeypatch.setattr(torch.cuda, "synchronize", synchronized.append)
    hardware.wait_for_device(torch.device("cpu"))
    assert synchronized == []
    hardware.wait_for_device(torch.device("cuda", 1))
    assert synchronized == [torch.device("cuda", 1)]


CONCRETE_DTYPES = [name for name in get_args(ModelConfig.model_fields["dtype"].annotation) if name != "auto"]


@pytest.mark.parametrize("name", CONCRETE_DTYPES)
def test_a_concrete_dtype_is_kept_on_any_machine(native_bf16, name):
    assert ModelConfig(dtype=name).dtype == name


def test_the_cpu_check_agrees_with_the_kernels_cpu_flags():
    """Against an independent source: Linux's /proc/cpuinfo flags (avx512_bf16, amx_tile)."""
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo (not Linux)")
    flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags") for flag in line.split()}
    assert hardware.cpu_has_native_bfloat16() == bool({"avx512_bf16", "amx_tile"} & flags)


def test_the_loaded_config_and_its_dump_hold_the_resolved_dtype(tmp_path, native_bf16):
    """A run's config.yaml is a dump of the loaded config: a resume samples in what the run chose."""
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  dtype: auto\n")
    config = load_config(path)
    expected = "bfloat16" if native_bf16 else "float32"
    assert config.model.dtype == expected
    dump_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model"]["dtype"] == expected


def test_a_misspelt_dtype_lists_auto_among_the_allowed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  dtype: bf16\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert "model.dtype" in str(error.value) and "'auto'" in str(error.value)


def test_the_drivers_model_falls_back_to_the_cpu_when_cuda_is_configured_and_it_has_no_gpu(capsys):
    """Under deploy/submit.sh the driver runs on a CPU-only head node while a GPU config says model.device: cuda."""
    from maskfocus.config import default_run_config
    from maskfocus.hardware import driver_model_config

    for device in ("cuda", "cuda:1"):
        config = default_run_config({"model": {"device": device}})
        local = driver_model_config(config, cuda_available=False)
        assert local.model.device == "cpu"
        assert local.model_copy(update={"model": config.model}) == config  # nothing else changes
        assert capsys.readouterr().out.count(f"model.device is {device} but the driver has no GPU") == 1
        assert driver_model_config(config, cuda_available=True) is config
    on_cpu = default_run_config()
    assert driver_model_config(on_cpu, cuda_available=False) is on_cpu
    assert capsys.readouterr().out == ""
