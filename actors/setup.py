"""What every Ray role (rollout, reward, learner worker) does first in its process, and how its records travel."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import torch

from maskfocus.config import RunConfig
from maskfocus.types import TrainBatch, Trajectory

Record = TypeVar("Record", Trajectory, TrainBatch)


def start_role(config: RunConfig) -> None:
    """Seed torch from the run seed, and set the torch threads when `ray.torch_threads` asks for a number.

    Ray gives an actor as many threads as its whole CPUs (at least 1), which suits roles that run at the same
    time; with `max_staleness: 0` on a small machine the roles take turns, and each may use every core."""
    torch.manual_seed(config.seed)
    if config.ray.torch_threads is not None:
        torch.set_num_threads(config.ray.torch_threads)


def on_device(record: Record, device: torch.device | str) -> Record:
    """`record` with every tensor on `device` (other fields shared). Records travel between roles on the CPU: a CUDA
    tensor unpickles onto the same index (cuda:0) in the receiving process, whichever GPU that process uses, and
    fails to unpickle in a process without one. Each role moves what it takes to its own device."""
    tensors = {
        field.name: value.to(device)
        for field in dataclasses.fields(record)
        if isinstance(value := getattr(record, field.name), torch.Tensor)
    }
    return dataclasses.replace(record, **tensors)
