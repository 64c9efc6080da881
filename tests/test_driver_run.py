"""maskfocus/driver_run.py: how a Ray run starts and ends, with fakes where a whole run would be slow: a failure
while it is set up, a stop while it starts or finishes, the pools made last (tests/test_driver.py runs whole Ray
runs; tests/test_driver_steps.py the event loop's steps)."""

from __future__ import annotations

import time

import pytest
from ray_fixture import random_model, ray_session, tiny_config  # noqa: F401


def test_a_failure_while_setting_up_stops_the_learner_and_removes_the_runs_actors(
    ray_session,  # noqa: F811
    random_model,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """The learner group starts before the rollout and reward pools; a pool that cannot be built must not leave the
    learner, the batch queue or the weight store behind (the learner waited for its own timeout)."""
    import ray

    import maskfocus.driver as driver
    import maskfocus.driver_run as driver_run

    started: list = []
    learner_group = driver_run.LearnerGroup

    def recorded(*args, **kwargs):
        started.append((learner_group(*args, **kwargs), args))
        return started[-1][0]

    def no_pools(*args, **kwargs):
        raise OSError("no room for the rollout pool")

    monkeypatch.setattr(driver_run, "LearnerGroup", recorded)
    monkeypatch.setattr(driver, "role_pools", no_pools)
    with pytest.raises(
        driver_run.RunFailed, match="the Ray run stopped: no room for the rollout pool; no checkpoint was written yet"
    ) as failed:
        driver_run.train_ray(tiny_config(random_model, tmp_path / "runs"), tmp_path, show_progress=False)
    assert failed.value.error_log == tmp_path / "error.log"  # the traceback `maskfocus train` no longer prints
    assert "OSError: no room for the rollout pool" in failed.value.error_log.read_text()
    learner, (batches, store) = started[0][0], started[0][1][3:5]
    learner.join(120.0)
    assert not learner.alive, "the learner group outlived the failed run"
    for actor_call in (store.next_update.remote(0.1), batches.actor.qsize.remote()):
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor_call, timeout=30)
    assert ray.is_initialized()  # the session's Ray (not started by this call) stays up


def test_a_stop_while_the_run_finishes_names_the_checkpoint_to_resume_from(tmp_path):
    """SIGTERM (`ray job stop`) during `finish` (the last preview, the learner's end, the final model) ended the
    driver without a word: every iteration is learned by then, and a resume finishes the run."""
    import os
    import signal

    import torch

    from maskfocus.driver_run import finish_or_stop
    from maskfocus.run_io import save_checkpoint
    from maskfocus.stopping import RunStopped

    save_checkpoint(tmp_path, 9, torch.nn.Linear(1, 1), None, {})

    class Finishing:
        def finish(self, learner):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the signal arrives here
            raise AssertionError("the stop did not interrupt the finish")

    with pytest.raises(
        RunStopped,
        match=r"^stopped on SIGTERM while finishing, after the last iteration; resume from "
        r"iter_000009",
    ) as stopped:
        finish_or_stop(Finishing(), None, tmp_path)
    assert stopped.value.exit_code == 143


def test_a_sigterm_while_the_ray_run_starts_stops_it_with_a_message_and_its_exit_code(tmp_path, monkeypatch):
    """`ray job stop` during Ray's start-up (ray.init, the learner group, the pools: a minute on a cluster) ended the
    driver with no word: SIGTERM's default action. It now names what was happening and the exit code is 143."""
    import os
    import signal

    import maskfocus.driver_run as driver_run
    from maskfocus.config import default_run_config

    def connect_slowly(ray_config, address):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler raises before this ends
        raise AssertionError("SIGTERM was not turned into a stop")

    monkeypatch.setattr(driver_run, "connect", connect_slowly)
    handler_before = signal.getsignal(signal.SIGTERM)
    start = time.perf_counter()
    with pytest.raises(driver_run.RunStopped) as stopped:
        driver_run.train_ray(default_run_config(), tmp_path / "run", show_progress=False)
    assert time.perf_counter() - start < 20
    assert str(stopped.value) == (
        "stopped on SIGTERM while the Ray run started, before its first iteration; no checkpoint was written yet "
        f"(`maskfocus train --resume {tmp_path / 'run'}` starts the run again from the base model)"
    )
    assert stopped.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is handler_before  # restored: a later SIGTERM acts as before


def test_the_worker_pools_come_last_so_a_failure_before_them_leaves_no_workers(tmp_path, monkeypatch):
    """train_ray kills the pools of a run it got; a failure inside RayRun's constructor after the pools were made
    (a prompt file, the metrics file) left them running until the driver process ended."""
    import maskfocus.driver as driver
    from maskfocus.config import default_run_config
    from maskfocus.run_state import RunState

    built = []
    monkeypatch.setattr(driver, "role_pools", lambda *args: built.append(args) or (None, None))

    def unreadable(config, cursor):
        raise OSError("prompt file gone")

    monkeypatch.setattr(driver.PromptStream, "from_config", unreadable)
    with pytest.raises(OSError, match="prompt file gone"):
        driver.RayRun(default_run_config(), tmp_path, RunState(), None, None, show_progress=False)
    assert built == []
