"""Tests for maskfocus.compiled: the compiled sampling copy equals the eager transformer, pads small batches
onto compiled sizes (only the declared per-sample inputs), follows in-place weight updates, and samples the same
images as the eager path."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from maskfocus.compiled import (
    PaddedCompiled,
    declare_per_sample_inputs,
    is_per_sample,
    per_sample_inputs,
    sampling_module,
)
from maskfocus.config import SamplerConfig
from maskfocus.sampling import sample_with_config, seeded_generator

NUM_TABLE_ROWS = 4
"""Rows of TwoInputs' shared table: equal to one of the batches below, as Meissonic's 77 txt_ids could be."""


class TwoInputs(nn.Module):
    """Per-sample tensors (positional and keyword), shared keyword tensors - one whose first dimension can equal
    the batch - and a tuple output."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 8)

    def forward(self, x_BD: torch.Tensor, *, scale_BD: torch.Tensor, shared_D: torch.Tensor, table_ND: torch.Tensor):
        hidden = torch.nn.functional.gelu(self.linear(x_BD)) * scale_BD + shared_D + table_ND.mean(0)
        return hidden, hidden.sum(-1)


@pytest.fixture(scope="module")
def compiled_pair() -> tuple[nn.Module, PaddedCompiled]:
    torch.manual_seed(0)
    module = TwoInputs()
    declare_per_sample_inputs(module, (0, "scale_BD"))
    return module, PaddedCompiled(module)


def call(module: nn.Module, batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x, scale = torch.randn(batch, 8, generator=gen), torch.rand(batch, 8, generator=gen)
    shared, table = torch.randn(8, generator=gen), torch.randn(NUM_TABLE_ROWS, 8, generator=gen)
    with torch.no_grad():
        return module(x, scale_BD=scale, shared_D=shared, table_ND=table)


def test_smaller_batches_are_padded_onto_the_compiled_size(compiled_pair) -> None:
    """Batch 4 = NUM_TABLE_ROWS: the shared table keeps its 4 rows (padded to 6, its mean would change)."""
    eager, compiled = compiled_pair
    for batch in (6, NUM_TABLE_ROWS, 1):
        hidden, total = call(compiled, batch)
        ref_hidden, ref_total = call(eager, batch)
        assert hidden.shape == (batch, 8) and total.shape == (batch,)
        torch.testing.assert_close(hidden, ref_hidden, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(total, ref_total, rtol=1e-5, atol=1e-5)
    assert compiled.batch_sizes == [6]  # 4 and 1 reused the kernels compiled for 6


def test_in_place_weight_updates_reach_the_compiled_copy(compiled_pair) -> None:
    eager, compiled = compiled_pair
    before = call(compiled, 6)[0]
    with torch.no_grad():
        eager.linear.weight.mul_(-2.0)
    after = call(compiled, 6)[0]
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, call(eager, 6)[0], rtol=1e-5, atol=1e-5)


def test_only_declared_inputs_are_per_sample_and_undeclared_modules_pad_positional_ones() -> None:
    declared = frozenset({0, "scale_BD"})
    assert [is_per_sample(key, declared) for key in (0, 1, "scale_BD", "table_ND")] == [True, False, True, False]
    assert [is_per_sample(key, None) for key in (0, 3, "scale_BD")] == [True, True, False]


def test_the_declaration_survives_deepcopy_and_is_found_through_a_wrapper() -> None:
    class Wrapper(nn.Module):  # holds the model as `.module`, like DistributedDataParallel
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self.module = module

    module = nn.Linear(2, 2)
    assert per_sample_inputs(module) is None
    declare_per_sample_inputs(module, ["hidden_states", 1])
    assert per_sample_inputs(copy.deepcopy(module)) == {"hidden_states", 1}
    assert per_sample_inputs(Wrapper(module)) == {"hidden_states", 1}


def test_a_call_without_a_per_sample_tensor_is_a_clear_error() -> None:
    module = TwoInputs()
    declare_per_sample_inputs(module, ["scale_BD"])
    with pytest.raises(ValueError, match=r"none of the inputs \[0, 'shared_D'\] is a per-sample tensor"):
        PaddedCompiled(module)(torch.zeros(2, 8), shared_D=torch.zeros(8))


def test_dict_outputs_are_cut_back_to_the_batch() -> None:
    from maskfocus.compiled import _cut_rows

    output = _cut_rows(OrderedDict(sample=torch.zeros(5, 2), extra=None), 3)
    assert isinstance(output, OrderedDict) and output["sample"].shape == (3, 2) and output["extra"] is None


def test_compiled_sampling_draws_the_eager_images(tiny_model) -> None:
    prompts = ["a photo of a red circle", "a photo of two squares", "a photo of a triangle"]
    eager_config = SamplerConfig(num_steps=4, cfg_scale=3.0, gumbel_temperature=4.0, compile=False)
    compiled_config = eager_config.model_copy(update={"compile": True})
    eager = sample_with_config(tiny_model, prompts, eager_config, seeded_generator(0, 1))
    compiled = sample_with_config(tiny_model, prompts, compiled_config, seeded_generator(0, 1))
    agree = (eager.tokens_BL == compiled.tokens_BL).float().mean().item()
    assert agree > 0.99, f"only {agree:.3f} of the tokens agree"
    assert sampling_module(tiny_model) is sampling_module(tiny_model)  # compiled once per model


def test_cuda_home_notice_is_quiet_only_without_a_cuda_runtime(monkeypatch) -> None:
    import logging

    from maskfocus.compiled import quiet_cuda_home_notice

    logger = logging.getLogger("torch.utils.cpp_extension")
    monkeypatch.setattr(logger, "level", logging.NOTSET)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    quiet_cuda_home_notice()
    assert logger.level == logging.NOTSET
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    quiet_cuda_home_notice()
    assert logger.level == logging.ERROR


def test_compile_notice_names_what_the_first_iteration_compiles() -> None:
    from maskfocus.compiled import compile_notice

    assert compile_notice(False, False) is None
    assert "compiles the sampler and the learner" in compile_notice(True, True)
    assert "compiles the learner (" in compile_notice(False, True)
    assert "compiles the sampler (" in compile_notice(True, False)


def test_a_machine_without_a_cpp_compiler_runs_eagerly_with_a_warning(monkeypatch) -> None:
    """Without g++, inductor's first CPU compile failed deep in torch, minutes into a run."""
    import torch._inductor.config as inductor_config

    from maskfocus.compiled import missing_cpp_compiler

    assert missing_cpp_compiler() is None  # this machine has one: the tests' compiled paths compile
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("maskfocus-no-such-compiler",))
    assert "no C++ compiler found" in missing_cpp_compiler()
    module = TwoInputs()
    declare_per_sample_inputs(module, (0, "scale_BD"))
    with pytest.warns(RuntimeWarning, match=r"torch.compile skipped, the model runs eagerly .* install g\+\+"):
        padded = PaddedCompiled(module)
    assert padded.compiled is module
    for got, want in zip(call(padded, 3), call(module, 3), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert PaddedCompiled(module, backend="aot_eager").compiled is not module  # aot_eager builds no C++
