"""Checkpoints of the Ray learner in the run folder's layout (maskfocus.run_io), and the resume state.

checkpoints/iter_XXXXXX/ holds transformer.safetensors (full weights gathered from the shards),
optimizer.pt (the full, parameter-name-keyed optimizer state from torch.distributed.checkpoint, so it
loads into any world size and either strategy; the in-process trainer's index-keyed one loads too, and so does
torch's index-keyed state of an optimizer that has taken no step yet) and
state.json (iteration, prompt cursor, number of optimizer steps, policy version, seed). Every random stream
is derived from (seed, iteration, role), so the iteration is the whole RNG state.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from maskfocus.learner.parallelize import unwrap
from maskfocus.run_io import read_optimizer_state, save_checkpoint
from maskfocus.run_state import RunState as RunState  # re-exported: the learner's resume state
from maskfocus.run_state import resume_state as resume_state


class _StateOnly:
    """Hands an already gathered state dict to run_io.save_checkpoint, which only calls `.state_dict()`."""

    def __init__(self, state: dict[str, Any]):
        self.state = state

    def state_dict(self) -> dict[str, Any]:
        return self.state


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Collective (every rank calls it): the full optimizer state on rank 0, an empty dict elsewhere. An optimizer
    that has taken no step yet (every update so far skipped: no scored tokens, a non-finite gradient) has no state
    to gather, and torch's getter would make one by a step at learning rate 0, which starts Adam's step count at 1
    in the live optimizer: every rank has taken the same steps, so each returns torch's own state dict, with no
    per-parameter state and its param_groups (index-keyed, as the in-process trainer saves it)."""
    if not optimizer.state:
        return optimizer.state_dict()
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_optimizer_state_dict(module, optimizer, options=options)


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Path) -> None:
    """Collective where several ranks learn: rank 0 reads the full state (onto the CPU) and torch broadcasts it one
    tensor at a time, each rank keeping its shard (every rank reading it held one full copy per rank in host memory:
    about 8 GB of AdamW state each at 1B parameters). A state saved before any optimizer step is empty: the
    optimizer stays as made (torch's setter would first step it at learning rate 0)."""
    ranks = dist.get_world_size() if dist.is_initialized() else 1
    state, failure = {}, None
    if ranks == 1 or dist.get_rank() == 0:
        try:
            state = read_optimizer_state(checkpoint)
            state = name_keyed(state, unwrap(module)) if state["state"] else state
        except Exception as error:  # every rank must hear of it: the others wait in the broadcast below
            failure = error
    outcome = [bool(state.get("state")), None if failure is None else f"{type(failure).__name__}: {failure}"]
    if ranks > 1:  # the other ranks learn from rank 0 whether there is a state to load, or why it failed
        dist.broadcast_object_list(outcome, src=0)
    if outcome[1] is not None:  # the same message on every rank
        raise RuntimeError(
            f"learner rank 0 could not load the optimizer state of {checkpoint}: {outcome[1]}"
        ) from failure
    if not outcome[0]:
        return
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=ranks > 1)
    set_optimizer_state_dict(module, optimizer, state, options=options)


def name_keyed(state: dict[str, Any], module: nn.Module) -> dict[str, Any]:
    """`state` keyed by parameter name, as set_optimizer_state_dict needs it. The in-process trainer saves torch's
    own format, keyed by the parameter's index in module.parameters() (its optimizer's order), so a run started
    with `--executor local` can be resumed on Ray; a name-keyed state is returned as it is."""
    if all(isinstance(key, str) for key in state["state"]):
        return state
    names = [name for name, _ in module.named_parameters()]
    groups = [{**group, "params": [names[index] for index in group["params"]]} for group in state["param_groups"]]
    return {"state": {names[index]: value for index, value in state["state"].items()}, "param_groups": groups}


def write_checkpoint(
    run_dir: Path,
    iteration: int,
    weights: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    state: dict[str, Any],
    keep: int | None = None,
) -> Path:
    """Rank 0: the checkpoint folder (written to `.partial` first, so it exists only once complete); all but the
    newest `keep` are deleted after it."""
    return save_checkpoint(run_dir, iteration, _StateOnly(weights), _StateOnly(optimizer_state), state, keep)


def report_to_ray_train(folder: Path | None, metrics: dict[str, Any]) -> None:
    """Collective (every rank calls it; rank 0 passes its checkpoint folder): report the checkpoint to Ray Train,
    whose result and dashboard show a run's metrics only with one. Ray Train copies what is reported into its own
    storage (run/ray_train); the weights and optimizer state are in the run folder already, so it gets a marker:
    state.json and the run checkpoint's path, bytes rather than a second copy of every checkpoint."""
    with tempfile.TemporaryDirectory(prefix="maskfocus-report-") as marker:
        checkpoint = None
        if folder is not None:
            shutil.copy(folder / "state.json", marker)
            (Path(marker) / "run_checkpoint.txt").write_text(f"{folder.resolve()}\n")
            checkpoint = ray.train.Checkpoint.from_directory(marker)
        ray.train.report(metrics, checkpoint=checkpoint)  # uploads synchronously, before the folder goes
