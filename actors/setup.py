"""What every Ray role (rollout, reward, learner worker) does first in its process."""

from __future__ import annotations

import torch

from maskfocus.config import RunConfig


def start_role(config: RunConfig) -> None:
    """Seed torch from the run seed, and set the torch threads when `ray.torch_threads` asks for a number.

    Ray gives an actor as many threads as its whole CPUs (at least 1), which suits roles that run at the same
    time; with `max_staleness: 0` on a small machine the roles take turns, and each may use every core."""
    torch.manual_seed(config.seed)
    if config.ray.torch_threads is not None:
        torch.set_num_threads(config.ray.torch_threads)
