"""actors/receives.py: the driver's book of the rollout workers' weight receives (collective transport)."""

from __future__ import annotations

import time

import pytest
from ray_fixture import RAY_TIMEOUT_S


def test_a_failed_receive_is_raised_at_once_and_the_slowest_of_each_update_is_kept(ray_session):
    """A failed receive (a layout mismatch) was raised only when the next update was learned; after a resume's first
    broadcast none ever was, and the run ended on an idle timeout."""
    from maskfocus.actors.receives import WeightReceives

    class Receiver:  # defined here: Ray ships it by value (a test module is not importable on its workers)
        """Stands in for a rollout worker's receive_weights: takes `seconds`, fails when told to."""

        def __init__(self, seconds: float, fails: bool = False):
            self.seconds, self.fails = seconds, fails

        def receive_weights(self, version: int) -> float:
            time.sleep(self.seconds)
            if self.fails:
                raise ValueError(f"weight layout mismatch in group g (version {version})")
            return self.seconds

    ray = ray_session
    remote = ray.remote(Receiver).options(num_cpus=0)
    quick, slow, failing = remote.remote(0.5), remote.remote(3.0), remote.remote(0.0, fails=True)
    try:
        receives = WeightReceives()
        receives.start([quick, slow], version=3, iteration=2)
        time.sleep(1.0)  # the quick one has finished
        start = time.monotonic()
        receives.check(RAY_TIMEOUT_S)  # one finished well, one still running: nothing to say, and no wait
        assert time.monotonic() - start < 1.5 and len(receives.pending) == 2
        assert receives.collect(RAY_TIMEOUT_S) == {2: 3.0} and not receives.pending  # the slowest, not the sum
        receives.start([quick], version=0, iteration=-1)  # the starting weights: no update's record to time
        assert receives.collect(RAY_TIMEOUT_S) == {}
        receives.start([failing], version=4, iteration=3)
        ray.wait([receives.pending[0][1]], timeout=RAY_TIMEOUT_S)
        with pytest.raises(ray.exceptions.RayTaskError, match=r"weight layout mismatch in group g \(version 4\)"):
            receives.check(RAY_TIMEOUT_S)
        # the driver's stop then collects the learner's last records: raised again there, it kept the learner's stop
        # item from being queued
        assert not receives.pending and receives.collect(RAY_TIMEOUT_S) == {}
    finally:
        for actor in (quick, slow, failing):
            ray.kill(actor)
