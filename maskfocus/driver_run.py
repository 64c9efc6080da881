"""`train_ray`: a Ray run from start to finish (the executor of `maskfocus train --executor ray`).

It joins or starts Ray, makes the batch queue and the weight store on the driver's node, starts the learner group
and the worker pools, runs maskfocus.driver's event loop (RayRun), and takes every way out: a stop on request
(Ctrl-C, SIGTERM: the queued batches are learned and checkpointed), a diverged loss (no checkpoint of non-finite
weights), any other failure (a checkpoint of the last learned iteration, the traceback in error.log), a stop while
starting or finishing; the actors go in every case.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import ray
from ray.util.queue import Queue

from maskfocus.actors.cluster import check_supported, connect, on_driver_node
from maskfocus.config import RunConfig
from maskfocus.divergence import Diverged, NonFiniteWatch
from maskfocus.driver import RayRun
from maskfocus.learner.group import LearnerGroup
from maskfocus.learner.weight_store import WeightStore
from maskfocus.learner.weight_transport import WeightGroup
from maskfocus.models.base import MaskedGenerator
from maskfocus.run_io import float32_final_model, resume_hint
from maskfocus.run_state import resume_state
from maskfocus.stopping import (
    RunFailed,
    RunStopped,
    StopRequest,
    append_error_log,
    stop_named,
)
from maskfocus.trainer import finish_run


def finish_or_stop(run: RayRun, learner: LearnerGroup, run_dir: Path) -> MaskedGenerator:
    """`run.finish`, where a SIGTERM (`ray job stop`) or Ctrl-C ended the driver with no word: every iteration is
    learned by then, so a stop names the checkpoint to resume from, which finishes the run."""
    with stop_named("finishing, after the last iteration", lambda: resume_hint(run_dir)):
        return run.finish(learner)


def train_ray(
    config: RunConfig, run_dir: Path, resume: bool = False, address: str | None = None, show_progress: bool = True
) -> dict:
    """Run the RL loop on Ray; returns the final summary (with the evaluation if enabled)."""
    check_supported(config)
    starting, hint = "the Ray run started, before its first iteration", lambda: resume_hint(run_dir)
    ray_was_up = ray.is_initialized()
    try:  # a stop or a failure before the actors exist: a Ray this call started goes (ray.init may have run)
        with stop_named(starting, hint):
            connect(config.ray, address)
            start = resume_state(run_dir, resume)
            (run_dir / "images").mkdir(parents=True, exist_ok=True)
    except BaseException:
        if not ray_was_up and ray.is_initialized():
            ray.shutdown()
        raise
    batches: Queue | None = None
    store = None
    learner: LearnerGroup | None = None
    run: RayRun | None = None
    try:  # whatever fails, from here on, the actors go, and so does a Ray this call started
        with stop_named(starting, hint):  # RunStopped: the actors made so far go (finally)
            batches = Queue(maxsize=config.ray.queue_capacity, actor_options=on_driver_node())
            store = ray.remote(WeightStore).options(**on_driver_node()).remote()
            group = None
            if config.ray.weight_transport == "collective":
                group = WeightGroup.for_run(config, f"maskfocus-weights-{run_dir.name}-{uuid.uuid4().hex[:8]}")
            learner = LearnerGroup(config, run_dir, start, batches, store, group)
            learner.start()
            run = RayRun(config, run_dir, start, batches, store, show_progress, group)
        stop = StopRequest()
        with stop:
            run.run(learner, stop)
        if stop.requested:
            run.stop_early(learner)
            raise RunStopped(
                f"stopped on {stop.requested} with {run.progress_words()}; {resume_hint(run_dir)}", stop.requested
            )
        model = finish_or_stop(run, learner, run_dir)
    except RunStopped:
        raise
    except Diverged as error:  # resuming from the latest checkpoint would not help: say what would
        run.nonfinite = NonFiniteWatch(None)  # the queued records are logged, not stopped again
        run.stop_early(learner, checkpoint=error.weights_finite)  # NaN rewards leave the weights finite
        raise RunFailed(str(error), None) from error
    except Exception as error:
        if run is not None and learner is not None:
            run.stop_early(learner)
        message = f"the Ray run stopped: {error}; {resume_hint(run_dir)}"
        raise RunFailed(message, append_error_log(run_dir, error)) from error
    finally:
        if run is not None:
            run.close()
        for actor in (store, batches.actor if batches is not None else None):  # a learner waiting on one ends
            if actor is not None:
                ray.kill(actor)
        if not ray_was_up:
            ray.shutdown()
    config = run.driver_config  # the float32 weights are read inside finish_run's stop and failure handling
    return finish_run(
        config, run_dir, model, final_model=lambda published: float32_final_model(config, run_dir, published)
    )
