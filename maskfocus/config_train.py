"""The run's config section (`train:`): length, outputs, executor, checkpoints and the learner's compile.

Part of the one config tree of `maskfocus.config` (which re-exports TrainConfig).
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, field_validator

from maskfocus.config_base import Section


class TrainConfig(Section):
    """The RL run: length, outputs, executor."""

    num_iterations: int = Field(150, ge=1)
    """Rollout -> update iterations."""
    executor: Literal["local", "ray"] = "local"
    """local = the in-process reference trainer; ray = the distributed system."""
    out_dir: str = "runs"
    """Parent folder of run folders; `~` is the home folder, as in the model and prompt paths."""
    log_every: int = Field(1, ge=1)
    """Iterations between metric records."""
    max_nonfinite_iterations: int | None = Field(5, ge=1)
    """Stop the run (exit status 1) after this many iterations in a row whose loss or gradient was non-finite at
    every optimizer step, so that every one was skipped: weights gone non-finite (too high a learning rate, say)
    would otherwise run to the end learning nothing. The same number of iterations in a row whose every group's reward
    was NaN (a reward model or server gone wrong: those groups are skipped) stops it too. The first such iteration
    is reported at once. null = never stop."""
    image_every: int = Field(25, ge=1)
    """Iterations between image grids of the fixed prompts."""
    checkpoint_every: int = Field(50, ge=1)
    """Iterations between checkpoints (the last iteration always saves one)."""
    keep_checkpoints: int | None = Field(None, ge=1)
    """The newest checkpoints kept in the run folder (weights and optimizer state each); older ones are deleted once a
    new one is complete. null = keep every one (benchmarks/checkpoint_ema.py averages them)."""
    final_eval: bool = True
    """Run the GenEval-style evaluation at the end."""
    compile_learner: bool = False
    """Run the learner's forwards and backwards through a `torch.compile`d copy of the transformer
    (maskfocus.compiled): on 2 CPU cores about 1.5x faster per training forward and backward and 2x per
    no-grad forward, after about a minute of compiling. The in-process trainer and each Ray learner rank
    (FSDP2 or DDP) apply it the same way."""
    learner_compile_backend: Literal["inductor", "aot_eager"] = "inductor"
    """The torch.compile backend of `compile_learner`. inductor generates fused kernels: the speed-up, after its
    compile (on 2 CPU cores 74 s for the three learner graphs of the tests' tiny model, one res block a side, with
    an empty cache). aot_eager traces the same forward and backward graphs (dynamo, then AOTAutograd) and runs them
    on eager kernels: no speed-up, a compile of 10 s for the same graphs. Use it to tell a tracing problem from a
    code-generation one; the two-rank learner test runs it (tests/learner/test_learner_group.py)."""

    @field_validator("out_dir")
    @classmethod
    def _expand_home(cls, out_dir: str) -> str:
        """`--set train.out_dir=~/runs` reaches the config unexpanded (the shell expands `~` only at a word's start)."""
        return os.path.expanduser(out_dir)
