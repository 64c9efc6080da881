"""maskfocus/bar_output.py: lines printed while the training bar shows go above it, whole, in the order they were
completed, and the bar is drawn again below them."""

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


def terminal_for(monkeypatch) -> io.StringIO:
    """One stream for stdout and stderr, as a terminal shows both. Set in the test's body: pytest's capture puts its
    own streams back between a fixture's setup and the test."""
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stdout", screen)
    monkeypatch.setattr(sys, "stderr", screen)
    return screen


def train_bar(screen: io.StringIO) -> tqdm:
    bar = tqdm(total=10, desc="train[ray]", file=screen, mininterval=0, ascii=True)
    bar.update(4)
    return bar


def test_a_worker_line_printed_during_the_bar_gets_a_line_of_its_own(monkeypatch):
    """Ray's log thread printed worker lines straight onto the bar's line (new-user walkthrough)."""
    terminal = terminal_for(monkeypatch)
    bar = train_bar(terminal)
    lines = LinesAboveBar(bar)
    printer = threading.Thread(target=lambda: print(WORKER_LINE))  # as Ray's log thread does
    printer.start()
    printer.join(timeout=10)
    *_, above, last = screen_lines(terminal.getvalue())
    assert above == WORKER_LINE and last.startswith("train[ray]:  40%|####      | 4/10")  # the bar drawn again below
    print("first half of a line", end="", file=sys.stderr)
    bar.update(1)
    print(" and its end", file=sys.stderr)
    lines.restore()
    bar.close()
    shown = screen_lines(terminal.getvalue())
    assert shown[:2] == [WORKER_LINE, "first half of a line and its end"]  # neither glued onto the bar
    assert shown[2].startswith("train[ray]:  50%|#####     | 5/10") and shown[3:] == [""]  # the bar, last
    assert sys.stdout is terminal and sys.stderr is terminal


def test_two_threads_printing_at_once_keep_their_lines_apart(monkeypatch):
    """`print` writes its text and its newline in two calls: with one buffer for all threads, a note of the main
    thread and a worker line between its two calls came out as one line (diff review)."""
    terminal = terminal_for(monkeypatch)
    bar = train_bar(terminal)
    lines = LinesAboveBar(bar)
    text_written, worker_done = threading.Event(), threading.Event()

    def main_thread_note() -> None:
        sys.stdout.write("divergence note")
        text_written.set()
        worker_done.wait(timeout=10)
        sys.stdout.write("\n")

    def worker() -> None:
        text_written.wait(timeout=10)
        print(WORKER_LINE)
        worker_done.set()

    threads = [threading.Thread(target=main_thread_note), threading.Thread(target=worker)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    lines.restore()
    bar.close()
    assert screen_lines(terminal.getvalue())[:2] == [WORKER_LINE, "divergence note"]  # in the order completed


class CountingLock:
    """A stand-in for tqdm's lock that counts how deep it is held."""

    def __init__(self):
        self.lock, self.depth = threading.RLock(), 0

    def acquire(self, *args, **kwargs):
        self.lock.acquire()
        self.depth += 1
        return True

    def release(self):
        self.depth -= 1
        self.lock.release()

    __enter__ = acquire

    def __exit__(self, *exc_info):
        self.release()


def test_the_real_stream_is_written_only_under_tqdms_lock_and_the_bar_drawn_again(monkeypatch):
    """The main thread's bar updates take the same lock: a worker line written outside it could land mid-bar."""
    lock = CountingLock()
    original = tqdm.get_lock()
    tqdm.set_lock(lock)
    try:
        writes: list[tuple[str, int]] = []

        class Real(io.StringIO):
            def write(self, text: str) -> int:
                writes.append((text, lock.depth))
                return super().write(text)

        real = Real()
        monkeypatch.setattr(sys, "stdout", real)
        bar = tqdm(total=10, desc="train[ray]", file=io.StringIO(), mininterval=0)
        refreshed = []
        monkeypatch.setattr(bar, "refresh", lambda nolock=False: refreshed.append(lock.depth))
        lines = LinesAboveBar(bar)
        print(WORKER_LINE)
        lines.restore()
        bar.close()
    finally:
        tqdm.set_lock(original)
    assert writes == [(WORKER_LINE + "\n", 1)] and refreshed == [1]  # the bar drawn again, still under the lock


def test_a_partial_line_is_written_at_restore_and_the_streams_keep_their_attributes(monkeypatch):
    real = io.StringIO()
    monkeypatch.setattr(sys, "stdout", real)
    bar = tqdm(total=2, file=io.StringIO())
    lines = LinesAboveBar(bar)
    assert sys.stdout is not real and sys.stdout.getvalue() == ""  # other attributes are the real stream's
    sys.stdout.writelines(["no newline ", "yet"])
    sys.stdout.flush()  # a flush does not put a partial line on the bar's line
    assert real.getvalue() == ""
    lines.restore()
    lines.restore()  # twice: nothing more
    assert real.getvalue() == "no newline yet\n" and sys.stdout is real
    bar.close()


def test_each_stream_is_put_back_unless_something_replaced_it_since(monkeypatch):
    real_out, real_err, theirs = io.StringIO(), io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", real_out)
    monkeypatch.setattr(sys, "stderr", real_err)
    bar = tqdm(total=2, file=io.StringIO())
    lines = LinesAboveBar(bar)
    sys.stdout = theirs  # e.g. a library's redirect, still in force
    lines.restore()
    assert sys.stdout is theirs and sys.stderr is real_err
    bar.close()


def test_nothing_is_installed_for_a_disabled_bar(monkeypatch):
    real = io.StringIO()
    monkeypatch.setattr(sys, "stdout", real)
    lines = LinesAboveBar(tqdm(total=2, disable=True))
    assert sys.stdout is real
    lines.restore()
    assert sys.stdout is real
