"""One run at a time in a run folder: `run.lock` names the process that trains in it.

`ray job submit` keeps a job running when its client stops following it (Ctrl-C), so a user could start
`--resume` on a folder whose job still trains: two drivers would then write one metrics.jsonl, move each other's
model/ and eval/ aside and prune each other's checkpoints. The lock is taken before a run changes its folder and
removed when it ends, however it ends short of being killed. A lock left by a killed process of this machine is
taken over; one of another machine is refused, with the file to delete once that run is known to be gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from maskfocus.config_base import ConfigError

LOCK_FILE = "run.lock"


def _holder() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return holder if isinstance(holder, dict) else None


def _stale(holder: dict[str, Any] | None) -> bool:
    """A lock whose process is gone: of this machine and dead, or unreadable (a write cut short)."""
    if holder is None:
        return True
    same_host = holder.get("host") == socket.gethostname()
    return same_host and isinstance(holder.get("pid"), int) and not _alive(holder["pid"])


def acquire(run_dir: Path) -> Path:
    """Take the run folder's lock (a stale one is taken over); ConfigError naming the holder if a run holds it."""
    path = run_dir / LOCK_FILE
    for _ in range(2):
        try:
            with path.open("x") as handle:
                json.dump(_holder(), handle)
            return path
        except FileExistsError:
            holder = _read(path)
            if not _stale(holder):
                raise ConfigError(_held_message(run_dir, path, holder)) from None
            path.unlink(missing_ok=True)
    raise ConfigError(f"{path}: another run took this folder's lock just now; is one starting beside this one?")


def _held_message(run_dir: Path, path: Path, holder: dict[str, Any] | None) -> str:
    who = f"process {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}" if holder else "?"
    return (
        f"{run_dir} is in use by a run ({who}; {path}): two runs in one folder would overwrite each other's "
        "metrics and checkpoints. Wait for it to end, or stop it (`ray job stop ID` for a job); if it is known to be "
        f"gone (its machine lost), delete {path} and start again"
    )


def release(path: Path) -> None:
    """Remove the lock if this process holds it."""
    holder = _read(path)
    if holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def held(run_dir: Path) -> Iterator[None]:
    """The run folder's lock for the duration of the block."""
    path = acquire(run_dir)
    try:
        yield
    finally:
        release(path)
