"""One run at a time in a run folder: `run.lock` names the process that trains in it.

`ray job submit` keeps a job running when its client stops following it (Ctrl-C), so a user could start
`--resume` on a folder whose job still trains: two drivers would then write one metrics.jsonl, move each other's
model/ and eval/ aside and prune each other's checkpoints. The lock is taken before a run changes its folder and
removed when it ends, however it ends short of being killed. A lock left by a killed process of this machine and
container (or from before a reboot) is taken over; any other is refused, with the file to delete once that run is
known to be gone.
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


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22): with the pid, it names one
    process, where a pid alone may be reused by another (a restarted container)."""
    stat = _read_text(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat else None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _holder() -> dict[str, Any]:
    """This process, as a lock names it: host, boot, pid namespace, pid and start time."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "boot_id": _read_text("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": _pid_namespace(),
        "pid": pid,
        "start_time": _start_time(pid),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


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
    """Whether the lock's process is known to be gone. Only a lock of this host can be judged: one from before a
    reboot is stale; one from another pid namespace (another container) is not judged, so it is held; in this
    namespace its process must be alive with the start time it wrote. An unreadable lock is no one's."""
    if holder is None:
        return True
    mine = _holder()
    if holder.get("host") != mine["host"]:
        return False
    if None not in (holder.get("boot_id"), mine["boot_id"]) and holder["boot_id"] != mine["boot_id"]:
        return True
    if holder.get("pid_namespace") != mine["pid_namespace"] or not isinstance(holder.get("pid"), int):
        return False
    if not _alive(holder["pid"]):
        return True
    return holder.get("start_time") is not None and _start_time(holder["pid"]) != holder["start_time"]


def _create(path: Path) -> bool:
    """Write this process's lock at `path` whole (a hard link of a finished file), unless one is there."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(_holder()))
    try:
        os.link(temporary, path)
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)


def acquire(run_dir: Path) -> Path:
    """Take the run folder's lock (a stale one is taken over); ConfigError naming the holder if a run holds it."""
    path = run_dir / LOCK_FILE
    if _create(path):
        return path
    with _takeover_turn(run_dir):  # two starters that both find a stale lock: the second then finds the first's
        holder = _read(path)
        if not _stale(holder):
            raise ConfigError(_held_message(run_dir, path, holder))
        path.unlink(missing_ok=True)
        if _create(path):
            return path
    raise ConfigError(f"{path}: another run took this folder's lock just now; is one starting beside this one?")


TURN_FILE = ".run.lock.turn"
"""Kept beside run.lock (empty): its exclusive lock is the turn to judge a stale run.lock."""

LOCK_FILES = (LOCK_FILE, TURN_FILE)
"""What the lock leaves in a folder: a folder holding nothing else is empty."""


@contextlib.contextmanager
def _takeover_turn(run_dir: Path) -> Iterator[None]:
    """One process at a time judges and replaces a stale lock: an exclusive flock on `TURN_FILE`, opened for
    writing (stale locks are judged only on their own host, where flock holds). A file, not the folder: an NFS
    client emulates flock with fcntl locks, whose exclusive kind needs a descriptor open for writing, which a folder
    cannot have."""
    import fcntl

    turn = run_dir / TURN_FILE
    try:
        descriptor = os.open(turn, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ConfigError(f"cannot open {turn} to take over {run_dir / LOCK_FILE}: {error}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        except OSError as error:  # a file system without locks
            raise ConfigError(
                f"cannot lock {turn} ({error.strerror}) to judge the lock {run_dir / LOCK_FILE} that a run left; if "
                f"that run is known to be gone, delete {run_dir / LOCK_FILE} and start again"
            ) from None
        yield
    finally:
        os.close(descriptor)  # releases the flock


def held_note(run_dir: Path) -> str | None:
    """`--check`'s word on the folder's lock: who holds it, or None when no live run does."""
    path = run_dir / LOCK_FILE
    holder = _read(path) if path.exists() else None
    if not path.exists() or _stale(holder):
        return None
    return _held_message(run_dir, path, holder)


def held_here(run_dir: Path) -> bool:
    """Whether this process holds the folder's lock."""
    holder = _read(run_dir / LOCK_FILE)
    return holder is not None and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _held_message(run_dir: Path, path: Path, holder: dict[str, Any] | None) -> str:
    who = f"process {holder.get('pid')} on {holder.get('host')}, since {holder.get('since')}" if holder else "?"
    return (
        f"{run_dir} is in use by a run ({who}; {path}): two runs in one folder would overwrite each other's "
        "metrics and checkpoints. Wait for it to end, or stop it (`ray job stop ID` for a job); if it is known to be "
        f"gone (its machine or container lost, or restarted), delete {path} and start again"
    )


def release(path: Path) -> None:
    """Remove the lock if this process holds it."""
    if held_here(path.parent):
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def held(run_dir: Path) -> Iterator[None]:
    """The run folder's lock for the duration of the block."""
    path = acquire(run_dir)
    try:
        yield
    finally:
        release(path)
