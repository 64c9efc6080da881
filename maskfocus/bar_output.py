"""Lines printed while a progress bar is shown go above it, whole, instead of onto the bar's line.

A Ray run's driver prints its workers' log lines (Ray Train's "Checkpoint successfully created", a worker's
warnings) from a thread of its own, straight to sys.stdout and sys.stderr: they landed in the middle of the
training bar (`train[ray]: 40%|...| 100/250 [...](RayTrainWorker pid=...) Checkpoint ...`). While installed,
`LinesAboveBar` stands in for both streams: it collects each complete line, clears the bar, writes the line to
the real stream and draws the bar again below it, under tqdm's lock, so the main thread's bar updates and the log
thread's lines take turns.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

from tqdm import tqdm


class _LineStream:
    """A text stream that writes whole lines to `real` with `bar` cleared; a partial line waits for its end."""

    def __init__(self, real: TextIO, bar: tqdm):
        self.real, self.bar = real, bar
        self.pending = ""
        self.pending_lock = threading.Lock()

    def write(self, text: str) -> int:
        with self.pending_lock:
            self.pending += text
            lines, newline, self.pending = self.pending.rpartition("\n")
        if newline:
            self._above_bar(lines + newline)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def finish(self) -> None:
        """Write a last line left without its newline."""
        with self.pending_lock:
            rest, self.pending = self.pending, ""
        if rest:
            self._above_bar(rest + "\n")

    def _above_bar(self, lines: str) -> None:
        with tqdm.get_lock():
            self.bar.clear(nolock=True)
            self.real.write(lines)
            self.real.flush()
            self.bar.refresh(nolock=True)

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...: the real stream's
        return getattr(self.real, name)


class LinesAboveBar:
    """Installs line streams for sys.stdout and sys.stderr around `bar` until `restore` (idempotent).

    The bar must have been made before (it writes to the real stream); nothing is installed for a disabled bar."""

    def __init__(self, bar: tqdm):
        self.saved: tuple[TextIO, TextIO] | None = None
        if bar.disable:
            return
        self.saved = (sys.stdout, sys.stderr)
        self.streams = (_LineStream(sys.stdout, bar), _LineStream(sys.stderr, bar))
        sys.stdout, sys.stderr = self.streams

    def restore(self) -> None:
        if self.saved is None:
            return
        for stream in self.streams:
            stream.finish()
        if (sys.stdout, sys.stderr) == self.streams:  # else someone swapped them since: leave theirs
            sys.stdout, sys.stderr = self.saved
        self.saved = None
