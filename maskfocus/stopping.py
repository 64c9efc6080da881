"""Stopping a run on request without losing work: Ctrl-C (SIGINT) or SIGTERM (a scheduler's preemption, `kill`).

The first signal asks the loop to stop at the end of the current iteration, where the weights, optimizer and prompt
cursor are consistent; the loop then writes a checkpoint and raises `RunStopped`, whose message gives the
`--resume` command. A second Ctrl-C stops at once (KeyboardInterrupt), as without this module.

Work that cannot stop half way and resume (the final evaluation) runs under `StopAtOnce` instead: either signal
raises `StopSignal` at once, so that the caller can say what was saved and how to go on.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Self

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class RunStopped(RuntimeError):
    """The run stopped on request after a checkpoint; the message says where and how to continue."""

    def __init__(self, message: str, signal_name: str):
        super().__init__(message)
        self.exit_code = 128 + signal.Signals[signal_name].value
        """What the command exits with: 128 + the signal's number, as a shell reports a process the signal ended."""


class RunFailed(RuntimeError):
    """The run failed part way, after its folder was made: the message says what failed and how to resume from
    what was saved; `error_log` holds the full traceback (None if it could not be written)."""

    def __init__(self, message: str, error_log: Path | None):
        super().__init__(message)
        self.error_log = error_log


def append_error_log(run_dir: Path, error: BaseException) -> Path | None:
    """Append `error`'s full traceback, with its causes and a time stamp, to RUN/error.log; None if that fails (the
    error being reported matters more than its log)."""
    path = run_dir / "error.log"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    try:
        with path.open("a", encoding="utf-8") as log:
            log.write(f"--- {stamp}\n{''.join(traceback.format_exception(error))}\n")
    except OSError:
        return None
    return path


class _StopSignalHandler:
    """While entered (main thread only; elsewhere nothing changes), SIGINT and SIGTERM call `_handle`; on leaving,
    the previous handlers come back."""

    def __init__(self):
        self._previous: dict[int, object] = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        raise NotImplementedError


class StopRequest(_StopSignalHandler):
    """While entered (main thread only), the first SIGINT or SIGTERM sets `requested` instead of killing the process."""

    def __init__(self, announce: bool = True):
        super().__init__()
        self.requested: str | None = None
        """The name of the signal that asked to stop, or None."""
        self.announce = announce

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if self.announce:
            write_to_stderr_descriptor(
                f"\n{self.requested}: stopping after this iteration, with a checkpoint (Ctrl-C again stops at once)\n"
            )


def write_to_stderr_descriptor(text: str) -> None:
    """Write `text` from a signal handler straight to file descriptor 2: printing through sys.stderr while the code
    the signal interrupted is inside a write to it raises "reentrant call" (Python's buffered writers are not
    reentrant), which turned a Ctrl-C into a failed run."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode())


class StopSignal(KeyboardInterrupt):
    """SIGINT or SIGTERM under `StopAtOnce` (a KeyboardInterrupt, so code that handles Ctrl-C handles both)."""

    def __init__(self, signal_name: str):
        super().__init__(signal_name)
        self.signal_name = signal_name


class StopAtOnce(_StopSignalHandler):
    """While entered (main thread only), SIGINT and SIGTERM raise `StopSignal`; elsewhere SIGTERM would end the
    process with no message (`ray job stop` sends it)."""

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        raise StopSignal(signal.Signals(signum).name)


class SignalsHeld(_StopSignalHandler):
    """While entered (main thread only), SIGINT and SIGTERM wait; on leaving, the first that came goes to the handler
    that was there before (raised again), so a stop lands before or after the guarded steps, never between them (a
    part swapped in, its report not yet written). A block that fails drops it: the failure is what ends the run."""

    def __init__(self):
        super().__init__()
        self.held: int | None = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.held is None:
            self.held = signum

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
        if self.held is not None and exc_info[0] is None:  # a failure in the block is what the run reports
            signal.raise_signal(self.held)


@contextlib.contextmanager
def stop_named(doing: str, hint: Callable[[], str]) -> Iterator[None]:
    """While entered (under StopAtOnce), SIGINT or SIGTERM ends the work as RunStopped: "stopped on SIGTERM while
    {doing}; {hint()}", with the signal's exit code (a default SIGTERM ended the process without a word)."""
    try:
        with StopAtOnce():
            yield
    except StopSignal as stop:
        raise RunStopped(f"stopped on {stop.signal_name} while {doing}; {hint()}", stop.signal_name) from None
