"""A `torch.compile`d copy of a generator's transformer, for sampling (`sampler.compile: true`) and for the
learner's forwards and backwards (`train.compile_learner: true`).

On two CPU cores the tiny model's forward is dominated by small element-wise ops (GELU, the ConvNeXt
response norm, residual adds) that inductor fuses: the compiled forward of the shipped transformer runs about
twice as fast, after roughly half a minute of compiling per batch size. The importance ratio at the first
update of a batch stays exactly 1 with a compiled learner: the old log-probs of the steps scored before the
first optimizer step are taken from their own training forward (maskfocus.update).

Each distinct batch size costs a compile, so batches are padded up to the largest size compiled so far (the
padding rows are dropped from the output): a benchmark's last, smaller batch reuses the full batch's kernels.
Only the inputs the module declares per-sample (`declare_per_sample_inputs`, done by each adapter) are padded:
Meissonic's img_ids (N, 3) and txt_ids (S, 3) serve the whole batch and must pass unchanged even when N or S
happens to equal the batch. The compiled module shares the transformer's parameters, so weights loaded in place
(a new policy version) are used by the next call.
"""

from __future__ import annotations

import logging
import shutil
import warnings
import weakref
from collections.abc import Iterable
from typing import Any, Literal

import torch
from torch import nn


def quiet_cuda_home_notice() -> None:
    """Without a CUDA runtime, inductor's CPU compile logs "No CUDA runtime is found, using CUDA_HOME=..." once per
    process (a CUDA build of torch on a CPU machine): true, and no concern of a CPU run, so that logger is raised
    to errors there."""
    if not torch.cuda.is_available():
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


def missing_cpp_compiler() -> str | None:
    """Why inductor cannot build CPU kernels on this machine (it finds no C++ compiler), or None.

    Without one the first compiled call failed deep inside inductor, minutes into a run."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler
        from torch._inductor.exc import InvalidCxxCompiler
    except ImportError:  # an older torch: look for its default compiler
        return None if shutil.which("g++") else "no C++ compiler (g++) found"
    try:
        get_cpp_compiler()
    except InvalidCxxCompiler as error:
        return f"no C++ compiler found ({error})"
    return None


def compile_or_eager(module: nn.Module, backend: Literal["inductor", "aot_eager"]) -> nn.Module:
    """`torch.compile(module, dynamic=False, backend=backend)`, or `module` itself, with a warning, where inductor
    would need a C++ compiler for CPU kernels and the machine has none."""
    on_cpu = all(parameter.device.type == "cpu" for parameter in module.parameters())
    if backend == "inductor" and on_cpu and (why := missing_cpp_compiler()) is not None:
        warnings.warn(
            f"torch.compile skipped, the model runs eagerly (about half the speed on a CPU): {why}; install g++ "
            "(apt-get install g++), or set sampler.compile=false and train.compile_learner=false to silence this",
            RuntimeWarning,
            stacklevel=3,
        )
        return module
    return torch.compile(module, dynamic=False, backend=backend)


PER_SAMPLE_ATTRIBUTE = "maskfocus_per_sample_inputs"
"""Attribute of a module holding its declared per-sample inputs (positional indices and keyword names)."""


def declare_per_sample_inputs(module: nn.Module, inputs: Iterable[int | str]) -> None:
    """Record which inputs of `module`'s forward carry one row per sample: positional indices and keyword names.

    A plain attribute, so it survives what the learner does to the module in place (FSDP2 `fully_shard`, weight
    loads) and `copy.deepcopy` (the frozen reference)."""
    setattr(module, PER_SAMPLE_ATTRIBUTE, frozenset(inputs))


def per_sample_inputs(module: nn.Module) -> frozenset[int | str] | None:
    """What `declare_per_sample_inputs` recorded on `module`, or on the module a DDP-style wrapper holds as
    `.module`; None when nothing was declared."""
    while isinstance(module, nn.Module):
        declared = getattr(module, PER_SAMPLE_ATTRIBUTE, None)
        if declared is not None:
            return declared
        module = getattr(module, "module", None)
    return None


def is_per_sample(key: int | str, declared: frozenset[int | str] | None) -> bool:
    """Whether input `key` (a positional index or a keyword name) is padded: the declared inputs, or, for a module
    that declares none (a bare layer), its positional inputs."""
    return key in declared if declared is not None else isinstance(key, int)


class PaddedCompiled(nn.Module):
    """`torch.compile(module, dynamic=False, backend=backend)` (`compile_or_eager`), called with every batch padded
    to a compiled batch size.

    The per-sample inputs (see `is_per_sample`) are padded by repeating their last row; all other inputs pass
    unchanged whatever their shape. The batch is the first dimension of the first per-sample tensor. The output's
    tensors (alone, in a tuple, or in a diffusers output) are cut back to the batch.
    """

    def __init__(self, module: nn.Module, backend: Literal["inductor", "aot_eager"] = "inductor"):
        super().__init__()
        self.module = module
        self.per_sample = per_sample_inputs(module)
        """Declared per-sample inputs; None = the positional ones."""
        quiet_cuda_home_notice()
        self.compiled = compile_or_eager(module, backend)
        self.batch_sizes: list[int] = []
        """Batch sizes compiled so far."""

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        keyed = [*enumerate(args), *kwargs.items()]
        rows = [v for k, v in keyed if is_per_sample(k, self.per_sample) and isinstance(v, torch.Tensor) and v.dim()]
        if not rows:
            raise ValueError(
                f"PaddedCompiled: none of the inputs {[key for key, _ in keyed]} is a per-sample tensor; declare the "
                "module's per-sample inputs with maskfocus.compiled.declare_per_sample_inputs"
            )
        batch = rows[0].shape[0]
        padded = min((size for size in self.batch_sizes if size >= batch), default=None)
        if padded is None:
            padded = batch
            self.batch_sizes.append(batch)
        if padded != batch:
            args = tuple(self._pad(index, value, batch, padded) for index, value in enumerate(args))
            kwargs = {name: self._pad(name, value, batch, padded) for name, value in kwargs.items()}
        return _cut_rows(self.compiled(*args, **kwargs), batch)

    def _pad(self, key: int | str, value: Any, batch: int, padded: int) -> Any:
        """A per-sample tensor (B, ...) -> (padded, ...), its last row repeated; anything else unchanged."""
        if not is_per_sample(key, self.per_sample) or not isinstance(value, torch.Tensor) or value.dim() == 0:
            return value
        assert value.shape[0] == batch, f"per-sample input {key!r} has shape {tuple(value.shape)}, batch {batch}"
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


COMPILE_PAYS_OFF_IMAGES = 400
"""Below this many images `maskfocus sample`, `maskfocus eval` and the pretraining's measurement sample eagerly:
the compile costs more than it saves. Break-even, measured on a 2-core machine with the shipped model at T 12:
`maskfocus eval --limit 100 --no-clip` (400 images) took 84 s eager and 90 s compiled; 4 images by
`maskfocus sample` 7 s against 30 s."""


def compile_notice(sampler_compile: bool, learner_compile: bool) -> str | None:
    """What `maskfocus train` says before a first iteration that compiles, which otherwise looks stalled."""
    parts = [name for name, on in (("sampler", sampler_compile), ("learner", learner_compile)) if on]
    if not parts:
        return None
    return (
        f"the first iteration compiles the {' and the '.join(parts)} (torch.compile; measured on 2 CPU cores: about "
        "1.5-3 min with an empty compile cache, under 1 min with a warm one); later iterations take seconds"
    )
