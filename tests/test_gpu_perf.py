"""The non-GPU logic of benchmarks/gpu_check.py: FLOP counting, MFU arithmetic, peak lookup, the stand-in size, and a
CPU dry run of its scale check."""

from __future__ import annotations

import pytest
import torch
from support import load_benchmark


@pytest.fixture(scope="module")
def perf():
    return load_benchmark("gpu_perf")


def test_count_flops_of_a_linear_layer_is_two_multiply_adds_per_weight_and_row(perf):
    layer = torch.nn.Linear(16, 8, bias=False)
    assert perf.count_flops(layer, torch.zeros(5, 16)) == 2 * 5 * 16 * 8


def test_learner_and_rollout_flops_count_every_pass(perf):
    # K=6 steps x B=2 samples x (old logp + reference + forward/backward = 5 forwards)
    # per step: K x (reference + forward/backward) + (K - 1) old-log-prob forwards; accumulate: no old forwards
    assert perf.learner_flops(10.0, num_samples=2, num_selected=6, use_reference=True) == 10.0 * 2 * (6 * 4 + 5)
    assert perf.learner_flops(10.0, num_samples=2, num_selected=6, use_reference=False) == 10.0 * 2 * (6 * 3 + 5)
    assert perf.learner_flops(10.0, 2, 6, use_reference=False, update="accumulate") == 10.0 * 2 * 6 * 3
    assert perf.rollout_flops(10.0, num_images=2, num_steps=64, use_cfg=True) == 10.0 * 2 * 64 * 2
    assert perf.rollout_flops(10.0, num_images=2, num_steps=64, use_cfg=False) == 10.0 * 2 * 64


def test_mfu_is_achieved_over_peak(perf):
    assert perf.mfu(989.4e12 * 3, 6.0, 989.4) == pytest.approx(0.5)
    assert perf.mfu(1e12, 1.0, None) is None


def test_peak_lookup_prefers_the_pcie_entry(perf):
    assert perf.peak_tflops("NVIDIA H100 80GB HBM3") == 989.4
    assert perf.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert perf.peak_tflops("NVIDIA H200") == 989.4
    assert perf.peak_tflops("Some Card") is None


def test_meissonic_stand_in_has_about_a_billion_parameters(perf):
    assert 0.9e9 < perf.parameter_count(perf.MEISSONIC) < 1.2e9


def test_the_scale_check_runs_on_the_cpu_with_the_small_stand_in(tmp_path):
    """A dry run of gpu_check's scale path (sampling with the router, the FSDP2-wrapped learner's update, the weight
    gather) on the CPU, so that the script a GPU session runs once has run somewhere; in a subprocess, since it
    starts its own process group."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
    out = tmp_path / "gpu_check.json"
    args = ["--device", "cpu", "--only", "scale", "--scale", "small", "--num-steps", "4", "--selected", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(script), *args, "--prompts", "1", "--json", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())["scale"]
    assert (report["T"], report["K"], report["images_per_iteration"], report["device"]) == (4, 2, 2, "cpu")
    assert report["transformer_parameters"] > 0 and report["forward_tflop_per_image"] > 0
    assert report["rollout_s"] > 0 and report["learner_s"] > 0
    assert report["peak_tflops"] is None and report["learner_mfu"] is None  # no peak for a CPU
    assert report["mfu_basis"].endswith("learner in float32")
    assert "all checks passed: scale" in done.stdout
