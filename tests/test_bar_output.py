"""maskfocus/bar_output.py: lines printed while the training bar shows go above it, whole."""

from __future__ import annotations

import io
import sys
import threading

from tqdm import tqdm

from maskfocus.bar_output import LinesAboveBar

WORKER_LINE = "(RayTrainWorker pid=7) Checkpoint successfully created"


def screen_lines(terminal: str) -> list[str]:
    """What a terminal shows of `terminal` (text with carriage returns): each line's text after its last \\r."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in terminal.split("\n")]


def test_a_worker_line_printed_during_the_bar_gets_a_line_of_its_own(monkeypatch):
    """Ray's log thread printed worker lines straight onto the bar's line (new-user walkthrough)."""
    terminal = io.StringIO()  # stdout and stderr share a terminal
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = tqdm(total=10, desc="train[ray]", file=terminal, mininterval=0, ascii=True)
    bar.update(4)
    lines = LinesAboveBar(bar)
    printer = threading.Thread(target=lambda: print(WORKER_LINE))  # as Ray's log thread does
    printer.start()
    printer.join(timeout=10)
    print("first half of a line", end="", file=sys.stderr)
    bar.update(1)
    print(" and its end", file=sys.stderr)
    lines.restore()
    bar.close()
    shown = screen_lines(terminal.getvalue())
    assert shown[:2] == [WORKER_LINE, "first half of a line and its end"]  # neither glued onto the bar
    assert shown[2].startswith("train[ray]:  50%|#####     | 5/10") and shown[3:] == [""]  # the bar, last
    assert sys.stdout is terminal and sys.stderr is terminal


def test_a_partial_line_is_written_at_restore_and_the_streams_keep_their_attributes(monkeypatch):
    real = io.StringIO()
    monkeypatch.setattr(sys, "stdout", real)
    bar = tqdm(total=2, file=io.StringIO())
    lines = LinesAboveBar(bar)
    assert sys.stdout is not real and sys.stdout.getvalue() == ""  # other attributes are the real stream's
    sys.stdout.write("no newline yet")
    assert real.getvalue() == ""
    lines.restore()
    lines.restore()  # twice: nothing more
    assert real.getvalue() == "no newline yet\n" and sys.stdout is real
    bar.close()


def test_nothing_is_installed_for_a_disabled_bar(monkeypatch):
    real = io.StringIO()
    monkeypatch.setattr(sys, "stdout", real)
    lines = LinesAboveBar(tqdm(total=2, disable=True))
    assert sys.stdout is real
    lines.restore()
    assert sys.stdout is real
