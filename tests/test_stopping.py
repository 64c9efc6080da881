"""A stop request: the first SIGINT or SIGTERM only sets a flag, a second SIGINT interrupts, handlers come back;
under StopAtOnce either signal raises StopSignal at once."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from maskfocus.stopping import RunStopped, StopAtOnce, StopRequest, StopSignal


def test_first_signal_sets_the_request_and_a_second_ctrl_c_interrupts():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest(announce=False) as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before


def test_the_announcement_goes_to_the_descriptor_not_through_sys_stderr(capfd, monkeypatch):
    """A signal that lands while the main thread writes to sys.stderr: printing through it from the handler raised
    "reentrant call" (Python's buffered writers), which turned a Ctrl-C into a failed run."""
    import sys

    class Busy:
        def write(self, text):
            raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

        def flush(self):
            raise RuntimeError("reentrant call")

    monkeypatch.setattr(sys, "stderr", Busy())
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.undo()
    assert stop.requested == "SIGINT"
    assert "SIGINT: stopping after this iteration, with a checkpoint" in capfd.readouterr().err


def test_sigterm_sets_the_request_and_is_restored_afterwards():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest(announce=False) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
        os.kill(os.getpid(), signal.SIGTERM)  # a repeated SIGTERM keeps waiting for the iteration's end
        assert stop.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before


def test_outside_the_main_thread_no_handler_is_installed():
    seen = {}

    def enter():
        with StopRequest(announce=False) as stop:
            seen["handler"] = signal.getsignal(signal.SIGINT)
            seen["requested"] = stop.requested

    before = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=enter)
    thread.start()
    thread.join(timeout=10)
    assert seen == {"handler": before, "requested": None}


def test_the_exit_code_is_what_a_shell_reports_for_the_signal():
    assert RunStopped("m", "SIGINT").exit_code == 130
    assert RunStopped("m", "SIGTERM").exit_code == 143


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_at_once_raises_the_signal_by_name_and_restores_the_handlers(signum):
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    with pytest.raises(StopSignal) as raised, StopAtOnce():
        os.kill(os.getpid(), signum)
    assert raised.value.signal_name == signal.Signals(signum).name
    assert isinstance(raised.value, KeyboardInterrupt)  # what code that handles Ctrl-C already catches
    assert {sig: signal.getsignal(sig) for sig in before} == before
