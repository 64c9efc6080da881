"""The Ray run's previews (actors/previews.py): drawn by a rollout worker and written by the driver, named
by the iteration its weights learned last; a failed one is a note, and says whether the worker lost its weights;
previews that fall behind collapse into the newest. tests/test_driver.py checks a whole Ray run's preview files
against the in-process run's, tests/test_driver_steps.py which worker the driver gives a preview."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from PIL import Image
from ray_fixture import RAY_TIMEOUT_S

from maskfocus.actors.previews import RemotePreviews


class Drawer:
    """A rollout worker's `preview`: version 3's images of two prompts, or an error."""

    def __init__(self, fail: bool = False):
        self.fail = fail

    def preview(self):
        if self.fail:
            raise RuntimeError("out of memory")
        return 3, np.full((4, 8, 8, 3), 200, dtype=np.uint8), ["a red circle", "two squares"]


def finished(ray, previews: RemotePreviews) -> tuple[int, bool]:
    """`finish` of the one preview in flight, once it is done."""
    [ref] = previews.drawing
    ray.wait([ref], timeout=RAY_TIMEOUT_S)
    return previews.finish(ref)


def wait_until_dead(ray, actor) -> None:
    """Until the killed `actor` refuses calls (at most RAY_TIMEOUT_S)."""
    from ray.exceptions import RayActorError

    deadline = time.monotonic() + RAY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=RAY_TIMEOUT_S)
        except RayActorError:
            return
        time.sleep(0.1)
    pytest.fail("the killed actor still answers")


def test_a_worker_draws_the_newest_due_preview_and_a_failed_one_is_a_note(ray_session, tmp_path, capsys):
    ray = ray_session
    (tmp_path / "images").mkdir()
    previews = RemotePreviews(tmp_path, RAY_TIMEOUT_S)
    previews.request()
    previews.request()  # behind already: one preview, drawn with the newest weights
    assert previews.wanted() and previews.due
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import this test module
    actor = ray.remote(Drawer).options(num_cpus=0)
    drawer, failing = actor.remote(), actor.remote(fail=True)
    try:
        previews.start(0, drawer, 3, load=None)
        assert not previews.wanted() and not previews.due
        previews.request()
        assert not previews.wanted()  # one preview at a time
        assert finished(ray, previews) == (0, False) and previews.wanted()
        grid = Image.open(tmp_path / "images" / "iter_000002.png")  # version 3 = after iteration 2
        assert grid.width > 2 * 8 * 2 and grid.height > 2 * 8 * 2  # two rows of two images, scaled 2x, labelled
        previews.start(1, failing, 3, load=None)
        assert finished(ray, previews) == (1, False)  # raised in `preview`: the worker keeps its weights
        assert "preview skipped: rollout worker 1 did not draw it (RayTaskError" in capsys.readouterr().out
        previews.start(0, drawer, 5, load=None)  # expected version 5, drew with 3: restarted since its load
        assert finished(ray, previews) == (0, True)
        assert "preview skipped: rollout worker 0 was restarted (weights version 3)" in capsys.readouterr().out
        ray.kill(failing)
        wait_until_dead(ray, failing)  # ray.kill returns at once: a call made just after may still run
        previews.start(1, failing, 3, load=None)
        assert finished(ray, previews) == (1, True)  # dead: its weights are unknown
        assert sorted(path.name for path in (tmp_path / "images").iterdir()) == ["iter_000002.png"]
    finally:
        ray.kill(drawer)
        ray.kill(failing)
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
