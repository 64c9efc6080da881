"""benchmarks/weight_broadcast.py: on one GPU only an NCCL invalid-usage refusal counts as the expected failure."""

from __future__ import annotations

from support import load_benchmark


def test_only_an_nccl_invalid_usage_refusal_is_expected_on_one_gpu():
    module = load_benchmark("weight_broadcast")
    refusal = RuntimeError("NCCL error in: init.cc:1040, invalid usage (run with NCCL_DEBUG=WARN for details)")
    assert module.is_duplicate_gpu_refusal(refusal)
    assert module.is_duplicate_gpu_refusal(RuntimeError("Duplicate GPU detected : rank 1 and rank 0 both on CUDA"))
    for real_failure in (
        ModuleNotFoundError("No module named 'cupy'"),
        TimeoutError("weight broadcast of the header: not finished after 120 s"),
        AssertionError("receivers differ from the sender: [1.0, 2.0]"),
    ):
        assert not module.is_duplicate_gpu_refusal(real_failure)
