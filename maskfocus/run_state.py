"""Where a run (re)starts: the state its latest checkpoint recorded (checkpoints/iter_XXXXXX/state.json), read
strictly, so that a damaged checkpoint is one message naming it rather than a traceback mid-resume."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskfocus.config_base import ConfigError


def complete_checkpoints(folder: Path) -> list[Path]:
    """The run folder's complete checkpoints, oldest first (one being written is named *.partial until it is
    whole)."""
    return sorted((folder / "checkpoints").glob("iter_[0-9]*[0-9]"))


def latest_checkpoint(folder: Path) -> Path | None:
    """The run folder's newest complete checkpoint."""
    checkpoints = complete_checkpoints(folder)
    return checkpoints[-1] if checkpoints else None


@dataclass(frozen=True)
class RunState:
    """Where a run (re)starts: the next iteration, the prompt cursor before it, and the learner's counters."""

    iteration: int = 0
    prompt_cursor: int = 0
    policy_version: int = 0
    num_updates: int = 0
    checkpoint: str | None = None
    """The checkpoint folder to load weights and optimizer state from (None: the base model)."""


def resume_state(run_dir: Path, resume: bool) -> RunState:
    """The state after the latest checkpoint of `run_dir` (a fresh start when not resuming or none exists)."""
    checkpoint = latest_checkpoint(run_dir) if resume else None
    if checkpoint is None:
        return RunState()
    state = read_checkpoint_state(checkpoint)
    return RunState(
        iteration=state["iteration"] + 1,
        prompt_cursor=state["prompt_cursor"],
        policy_version=state["policy_version"],
        num_updates=state["num_updates"],
        checkpoint=str(checkpoint),
    )


CHECKPOINT_STATE_KEYS = ("iteration", "prompt_cursor", "policy_version", "num_updates")


def read_checkpoint_state(checkpoint: Path) -> dict[str, Any]:
    """A checkpoint's state.json, with a whole number for each of CHECKPOINT_STATE_KEYS; a damaged one is a
    ConfigError that names it and how to fall back to the checkpoint before."""
    path = checkpoint / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise damaged_checkpoint(checkpoint, f"{path.name}: {error}") from None
    bad = [key for key in CHECKPOINT_STATE_KEYS if not isinstance(state, dict) or type(state.get(key)) is not int]
    if bad:
        raise damaged_checkpoint(checkpoint, f"{path.name} lacks a whole number for {', '.join(bad)}")
    return state


def damaged_checkpoint(checkpoint: Path, problem: str) -> ConfigError:
    return ConfigError(
        f"checkpoint {checkpoint} is damaged ({problem}); move it out of checkpoints/ to resume from the one before "
        "it, or start a new run"
    )
