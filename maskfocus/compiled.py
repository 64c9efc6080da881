"""A `torch.compile`d copy of a generator's transformer, for sampling (`sampler.compile: true`) and for the
learner's forwards and backwards (`train.compile_learner: true`).

On two CPU cores the tiny model's forward is dominated by small element-wise ops (GELU, the ConvNeXt
response norm, residual adds) that inductor fuses: the compiled forward of the shipped transformer runs about
twice as fast, after roughly half a minute of compiling per batch size. The importance ratio at the first
update of a batch stays exactly 1 with a compiled learner: the old log-probs of the steps scored before the
first optimizer step are taken from their own training forward (maskfocus.update).

Each distinct batch size costs a compile, so batches are padded up to the largest size compiled so far (the
padding rows are dropped from the output): a benchmark's last, smaller batch reuses the full batch's kernels.
The compiled module shares the transformer's parameters, so weights loaded in place (a new policy version)
are used by the next call.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import torch
from torch import nn


def quiet_cuda_home_notice() -> None:
    """Without a CUDA runtime, inductor's CPU compile logs "No CUDA runtime is found, using CUDA_HOME=..." once per
    process (a CUDA build of torch on a CPU machine): true, and no concern of a CPU run, so that logger is raised
    to errors there."""
    if not torch.cuda.is_available():
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


class PaddedCompiled(nn.Module):
    """`torch.compile(module, dynamic=False)`, called with every batch padded to a compiled batch size.

    Tensor arguments whose first dimension is the batch (that of the first tensor argument, positional or
    keyword) are padded by repeating their last row; others pass unchanged. The output's tensors (alone, in a
    tuple, or in a diffusers output) are cut back to the batch.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        quiet_cuda_home_notice()
        self.compiled = torch.compile(module, dynamic=False)
        self.batch_sizes: list[int] = []
        """Batch sizes compiled so far."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        batch = next(v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor)).shape[0]
        padded = min((size for size in self.batch_sizes if size >= batch), default=None)
        if padded is None:
            padded = batch
            self.batch_sizes.append(batch)
        if padded != batch:
            args = tuple(_pad_rows(value, batch, padded) for value in args)
            kwargs = {key: _pad_rows(value, batch, padded) for key, value in kwargs.items()}
        return _cut_rows(self.compiled(*args, **kwargs), batch)


def _pad_rows(value: Any, batch: int, padded: int) -> Any:
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != batch:
        return value
    filler = value[-1:].expand(padded - batch, *value.shape[1:])
    return torch.cat([value, filler])


def _cut_rows(output: Any, batch: int) -> Any:
    if isinstance(output, torch.Tensor):
        return output[:batch]
    if isinstance(output, tuple | list):
        return type(output)(_cut_rows(value, batch) for value in output)
    if isinstance(output, dict):  # diffusers' BaseOutput is an OrderedDict dataclass
        return type(output)(**{key: _cut_rows(value, batch) for key, value in output.items()})
    return output


_SAMPLING_MODULES: weakref.WeakKeyDictionary[Any, PaddedCompiled] = weakref.WeakKeyDictionary()


def sampling_module(model: Any) -> PaddedCompiled:
    """The compiled sampling copy of `model.trainable_module()`, built once per model object."""
    module = _SAMPLING_MODULES.get(model)
    if module is None or module.module is not model.trainable_module():
        module = PaddedCompiled(model.trainable_module())
        _SAMPLING_MODULES[model] = module
    return module


def compile_notice(sampler_compile: bool, learner_compile: bool) -> str | None:
    """What `maskfocus train` says before a first iteration that compiles, which otherwise looks stalled."""
    parts = [name for name, on in (("sampler", sampler_compile), ("learner", learner_compile)) if on]
    if not parts:
        return None
    return (
        f"the first iteration compiles the {' and the '.join(parts)} (torch.compile; measured on 2 CPU cores: about "
        "1.5-3 min with an empty compile cache, under 1 min with a warm one); later iterations take seconds"
    )
