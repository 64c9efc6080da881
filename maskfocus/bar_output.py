"""Lines printed while a progress bar is shown go above it, whole, instead of onto the bar's line.

A Ray run's driver prints its workers' log lines (Ray Train's "Checkpoint successfully created", a worker's
warnings) from a thread of its own, straight to sys.stdout and sys.stderr: they landed in the middle of the
training bar (`train[ray]: 40%|...| 100/250 [...](RayTrainWorker pid=...) Checkpoint ...`). While installed,
`LinesAboveBar` stands in for both streams: it collects each thread's text until a line is complete (`print` writes
the text and its newline in two calls, and two threads may print at once), then, under tqdm's lock, clears the bar,
writes the line to the real stream and draws the bar again below it, so the main thread's bar updates and the log
thread's lines take turns. A partial line waits for its newline (a flush does not write it: it would stand on the
bar's line), and is written at `restore`.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from typing import Any, TextIO

from tqdm import tqdm


class _LineStream:
    """A text stream that writes whole lines to `real` with `bar` cleared; each thread's partial line waits for its
    end."""

    def __init__(self, real: TextIO, bar: tqdm):
        self.real, self.bar = real, bar
        self.pending: dict[int, str] = {}
        """Thread id -> the text it wrote after its last newline."""

    def write(self, text: str) -> int:
        with tqdm.get_lock():  # one lock for the buffers and the writes: lines keep the order they were completed in
            thread = threading.get_ident()
            lines, newline, rest = (self.pending.pop(thread, "") + text).rpartition("\n")
            if rest:
                self.pending[thread] = rest
            if newline:
                self._above_bar(lines + newline)
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.real.flush()

    def finish(self) -> None:
        """Write the lines left without their newline."""
        with tqdm.get_lock():
            rests, self.pending = list(self.pending.values()), {}
            for rest in rests:
                self._above_bar(rest + "\n")

    def _above_bar(self, lines: str) -> None:
        """Under tqdm's lock: the bar cleared, `lines` written, the bar drawn again below them."""
        self.bar.clear(nolock=True)
        self.real.write(lines)
        self.real.flush()
        self.bar.refresh(nolock=True)

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, buffer, ...: the real stream's
        return getattr(self.real, name)


class LinesAboveBar:
    """Installs line streams for sys.stdout and sys.stderr around `bar` until `restore` (idempotent).

    The bar must have been made before (it writes to the real stream); nothing is installed for a disabled bar."""

    def __init__(self, bar: tqdm):
        self.installed: list[tuple[str, TextIO, _LineStream]] = []
        """(sys attribute, the real stream, its line stream)."""
        if bar.disable:
            return
        for name in ("stdout", "stderr"):
            real = getattr(sys, name)
            stream = _LineStream(real, bar)
            setattr(sys, name, stream)
            self.installed.append((name, real, stream))

    def restore(self) -> None:
        """Write what waits for a newline and put each real stream back, unless something replaced ours since."""
        for name, real, stream in self.installed:
            stream.finish()
            if getattr(sys, name) is stream:
                setattr(sys, name, real)
        self.installed = []
