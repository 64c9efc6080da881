"""The Ray run's preview grids (images/iter_XXXXXX.png), drawn by an idle rollout worker with the weights it holds.

The driver runs on the head node, which on a cluster may have no GPU: sampling a large model's preview there took
longer than ray.timeout_s and stalled the run, since the driver dispatched nothing meanwhile. The next idle rollout
worker draws it instead, before its next rollout (with `max_staleness: 0` while the learner learns, when it would
idle anyway), and the driver (maskfocus/driver.py) only writes the file.
"""

from __future__ import annotations

from pathlib import Path

import ray
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.exceptions import ActorUnavailableError, RayActorError, RayError
from tqdm import tqdm

from maskfocus.trainer import save_preview_grid


class RemotePreviews:
    """At most one preview due and one being drawn: previews that fall behind collapse into the newest."""

    def __init__(self, run_dir: Path, timeout_s: float):
        self.folder = run_dir / "images"
        self.timeout_s = timeout_s
        self.due = False
        """A preview is wanted and not yet being drawn. It shows the weights its worker holds when it starts, so
        requests that pile up meanwhile are one."""
        self.drawing: dict[ObjectRef, tuple[int, int, ObjectRef | None]] = {}
        """The preview call in flight -> (its rollout worker's index, the weights version it should hold, the weight
        load queued before it)."""

    def request(self) -> None:
        self.due = True

    def wanted(self) -> bool:
        return self.due and not self.drawing

    def start(self, index: int, actor: ActorHandle, version: int, load: ObjectRef | None) -> None:
        """Rollout worker `index` draws the preview with weights `version`, after `load` (its calls run in order)."""
        self.drawing[actor.preview.remote()] = (index, version, load)
        self.due = False

    def finish(self, ref: ObjectRef) -> tuple[int, bool]:
        """Write the grid of a finished preview call, named by the iteration its weights learned last; returns (the
        rollout worker's index, whether its weights are now unknown: it died and was restarted). A failed preview is
        a note, not the end of the run: a dead worker fails its next rollout too, which the driver redoes."""
        index, expected, load = self.drawing.pop(ref)
        try:
            if load is not None:
                ray.get(load, timeout=self.timeout_s)
            version, images, prompts = ray.get(ref, timeout=self.timeout_s)
        except (RayActorError, ActorUnavailableError) as error:
            self._skipped(index, error)
            return index, True
        except RayError as error:  # raised in `preview` (out of memory, say): the worker and its weights are fine
            self._skipped(index, error)
            return index, False
        if version != expected:  # restarted between its load and the preview: the base model's images
            tqdm.write(f"preview skipped: rollout worker {index} was restarted (weights version {version})")
            return index, True
        save_preview_grid(self.folder / f"iter_{version - 1:06d}.png", images, prompts)
        return index, False

    @staticmethod
    def _skipped(index: int, error: BaseException) -> None:
        tqdm.write(f"preview skipped: rollout worker {index} did not draw it ({type(error).__name__}: {error})")
