"""maskfocus/run_lock.py: one run at a time in a run folder (a job still running when its client stopped following
it, and a `--resume` of the same folder, wrote one metrics.jsonl and pruned each other's checkpoints)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest
from support import cli_error

from maskfocus import run_lock
from maskfocus.config import ConfigError, default_run_config, dump_config


def test_a_held_folder_is_refused_naming_its_holder_and_released_at_the_end(tmp_path):
    with run_lock.held(tmp_path):
        holder = json.loads((tmp_path / "run.lock").read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(ConfigError, match=rf"is in use by a run \(process {os.getpid()} on "):
            run_lock.acquire(tmp_path)
    assert not (tmp_path / "run.lock").exists()
    with pytest.raises(RuntimeError), run_lock.held(tmp_path):  # released however the run ends
        raise RuntimeError("the run failed")
    assert not (tmp_path / "run.lock").exists()


def dead_pid() -> int:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(gone.stdout)


def lock_of(tmp_path, **changes) -> None:
    """A lock of this process, with `changes` (another pid, boot, namespace or start time)."""
    (tmp_path / "run.lock").write_text(json.dumps({**run_lock._holder(), **changes}))


def test_a_lock_whose_process_is_gone_is_taken_over(tmp_path):
    """A killed run on this machine and in this container: its pid is dead, or reused by another process (same pid,
    another start time), or the machine rebooted since."""
    for changes in ({"pid": dead_pid()}, {"start_time": "1"}, {"boot_id": "another-boot", "pid_namespace": "x"}):
        lock_of(tmp_path, **changes)
        assert run_lock.held_note(tmp_path) is None
        assert run_lock.acquire(tmp_path) == tmp_path / "run.lock"
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()
        run_lock.release(tmp_path / "run.lock")
    (tmp_path / "run.lock").write_text('{"host": ')  # not written by a run (its writes are whole)
    assert run_lock.acquire(tmp_path) and json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


def test_a_lock_of_another_container_on_this_host_is_refused(tmp_path):
    """A pid of another pid namespace cannot be checked from here (docker --net=host shares the hostname): a live
    job's lock was taken over from the host, and a restarted container's reused pids kept a dead one."""
    lock_of(tmp_path, pid=dead_pid(), pid_namespace="pid:[4026530000]")
    with pytest.raises(ConfigError, match="container lost, or restarted"):
        run_lock.acquire(tmp_path)
    assert "is in use by a run" in run_lock.held_note(tmp_path)


def test_a_lock_of_another_machine_is_refused_with_the_file_to_delete(tmp_path):
    other = {"host": "gpu-node-7", "pid": 1234, "since": "2026-12-01 00:00:00"}
    (tmp_path / "run.lock").write_text(json.dumps(other))
    with pytest.raises(ConfigError) as refused:
        run_lock.acquire(tmp_path)
    message = str(refused.value)
    assert "process 1234 on gpu-node-7, since 2026-12-01 00:00:00" in message
    assert f"delete {tmp_path / 'run.lock'} and start again" in message
    run_lock.release(tmp_path / "run.lock")  # not ours: kept
    assert (tmp_path / "run.lock").exists()


def test_a_resume_of_a_folder_in_use_is_refused_before_its_config_changes(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dump_config(default_run_config({"train.out_dir": str(tmp_path)}), run / "config.yaml")
    before = (run / "config.yaml").read_text()
    (run / "run.lock").write_text(json.dumps({"host": "head-node", "pid": 99, "since": "now"}))
    for check in ([], ["--check"]):
        error = cli_error(capsys, "train", "--resume", str(run), "--iterations", "300", "--executor", "local", *check)
        assert f"{run} is in use by a run (process 99 on head-node" in error
    assert (run / "config.yaml").read_text() == before and sorted(p.name for p in run.iterdir()) == [
        ".run.lock.turn",  # the turn to judge the lock, which it took (empty)
        "config.yaml",
        "run.lock",
    ]


def test_a_new_run_in_a_folder_where_a_run_is_starting_is_refused_before_its_config_is_written(tmp_path, capsys):
    """A run writes metrics.jsonl only once its model loaded (minutes on Ray): a second `train --name X` in that
    window overwrote the first run's config.yaml and was refused only afterwards, by the lock. The live lock is now
    checked first, by `--check` too, and the folder is checked again under this run's own lock."""
    from maskfocus.run_io import new_run_folder

    out = tmp_path / "runs"
    folder = out / "x"
    folder.mkdir(parents=True)
    dump_config(default_run_config({"seed": 1}), folder / "config.yaml")
    parent = subprocess.Popen(["sleep", "60"])  # a live process of this host and container holds the lock
    try:
        lock_of(folder, pid=parent.pid, start_time=run_lock._start_time(parent.pid))
        second = default_run_config({"seed": 7, "train.out_dir": str(out)})
        with pytest.raises(ConfigError, match=r"x is in use by a run \(process \d+ .*or choose another --name"):
            new_run_folder(second, "x")
        with contextlib.ExitStack() as lock, pytest.raises(ConfigError, match=r"x is in use by a run"):
            new_run_folder(second, "x", lock)
        error = cli_error(capsys, "train", "--check", "--set", f"train.out_dir={out}", "--name", "x")
        assert f"{folder} is in use by a run" in error
        assert "seed: 1" in (folder / "config.yaml").read_text()  # the starting run's settings, untouched
    finally:
        parent.kill()
        parent.wait()


def test_two_starters_that_find_one_stale_lock_do_not_both_take_it(tmp_path, monkeypatch):
    """Both read the dead run's lock and judge it stale; without taking turns the later one deleted the lock the
    earlier had just written and both trained in the folder. Now one takes it and the other is refused."""
    import threading
    import time

    dead = dead_pid()
    lock_of(tmp_path, pid=dead)
    real_stale, judging = run_lock._stale, threading.Event()

    def slow_to_judge(holder):  # the dead run's lock takes a while to judge: the other starter comes meanwhile
        if holder is not None and holder.get("pid") == dead:
            judging.set()
            time.sleep(0.5)
        return real_stale(holder)

    monkeypatch.setattr(run_lock, "_stale", slow_to_judge)
    outcomes: list[str] = []

    def start() -> None:
        try:
            run_lock.acquire(tmp_path)
            outcomes.append("took it")
        except ConfigError as refused:
            outcomes.append(f"refused: {refused}")

    first = threading.Thread(target=start)
    first.start()
    assert judging.wait(timeout=30)
    start()
    first.join(timeout=30)
    assert sorted(outcome.split(":")[0] for outcome in outcomes) == ["refused", "took it"], outcomes
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == os.getpid()


def test_the_takeover_turn_locks_a_file_open_for_writing_and_a_failed_lock_says_what_to_do(tmp_path, monkeypatch):
    """An NFS client emulates flock with fcntl locks, whose exclusive kind needs a descriptor open for writing: the
    turn was a lock on the run folder opened read-only, so a stale lock on a shared out_dir ended in a traceback."""
    import errno
    import fcntl

    modes, real_flock = [], fcntl.flock

    def record_mode(descriptor, operation):
        modes.append(fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_ACCMODE)
        return real_flock(descriptor, operation)

    monkeypatch.setattr(fcntl, "flock", record_mode)
    lock_of(tmp_path, pid=dead_pid())
    assert run_lock.acquire(tmp_path) == tmp_path / "run.lock"
    assert modes == [os.O_RDWR] and (tmp_path / run_lock.TURN_FILE).is_file()
    run_lock.release(tmp_path / "run.lock")

    def no_locks(descriptor, operation):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    lock_of(tmp_path, pid=dead_pid())
    with pytest.raises(
        ConfigError, match=r"cannot lock .*\.run\.lock\.turn \(No locks available\) .* delete .*run.lock"
    ):
        run_lock.acquire(tmp_path)
