"""The learner group: one long-running Ray Train TorchTrainer.fit() whose workers run learner/loop.py.

fit() costs ~12 s of start-up (DESIGN.md), so it runs once per run, in a background thread of the driver;
batches reach it through the queue and results come back through the WeightStore. `error` holds the
exception that ended fit() early, so the driver stops with that message instead of waiting.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ray.actor import ActorHandle
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train import RunConfig as TrainRunConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.util.queue import Queue

from maskfocus.actors.metrics import run_tag
from maskfocus.config import RayConfig, RunConfig
from maskfocus.learner.checkpoint import RunState
from maskfocus.learner.loop import train_loop_per_worker
from maskfocus.learner.weight_transport import WeightGroup


def scaling_config(ray_config: RayConfig) -> ScalingConfig:
    resources = {"CPU": ray_config.learner_cpus}
    if ray_config.learner_gpus > 0:
        resources["GPU"] = ray_config.learner_gpus
    return ScalingConfig(
        num_workers=ray_config.num_learner_workers,
        use_gpu=ray_config.learner_gpus > 0,
        resources_per_worker=resources,
    )


def torch_config(ray_config: RayConfig) -> TorchConfig:
    """The process group's collective timeout outlasts rank 0's wait for a batch (ray.timeout_s) plus a margin for
    one step: the other ranks wait for rank 0's message in a broadcast meanwhile, and with Ray Train's default
    (1800 s, the GPU configs' ray.timeout_s) theirs timed out first, so a stalled run's ranks could not join the
    checkpoint of the last learned iteration."""
    return TorchConfig(timeout_s=int(2 * ray_config.timeout_s) + 600)


REPORT_BARRIER_ENV = "RAY_TRAIN_COLLECTIVE_TIMEOUT_S"
"""Ray Train's timeout of its own barriers (`ray.train.report`, which every checkpoint passes); unset, they wait
forever: a rank 0 stuck writing to a hung network disk held every rank. Ray passes it from the driver's environment
to the Train controller and its workers."""

USER_REPORT_BARRIER_S = os.environ.get(REPORT_BARRIER_ENV)
"""A value the user set before maskfocus started: kept."""


def bound_report_barrier(ray_config: RayConfig) -> None:
    """Unless the user set one, Ray Train's barriers time out with the process group's collectives."""
    if USER_REPORT_BARRIER_S is None:
        os.environ[REPORT_BARRIER_ENV] = str(torch_config(ray_config).timeout_s)


def no_restarts() -> FailureConfig:
    """Ray Train must never rerun the learner loop on its own: a rerun starts from the run's first state (not the
    last checkpoint), moves the driver's policy version back, and loses the queue items rank 0 held. A failed or
    preempted learner ends the run (with its last checkpoint), and `maskfocus train --resume` continues it. Ray
    Train 2.60 retries preemptions and controller failures without limit by default, apart from max_failures."""
    return FailureConfig(max_failures=0, max_preemption_failures=0, controller_failure_limit=0)


class LearnerGroup:
    """Starts the TorchTrainer in a thread; `alive` / `error` tell the driver how it is doing."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        start: RunState,
        batches: Queue,
        store: ActorHandle,
        weight_group: WeightGroup | None = None,
    ):
        """`weight_group`: rank 0 broadcasts every version in it (ray.weight_transport: collective)."""
        loop_config = {
            "config": config,
            "start": start,
            "run_dir": str(run_dir.resolve()),
            "run_tag": run_tag(run_dir, config.train.out_dir),  # the driver's: its paths resolve from its folder
            "batches": batches,
            "store": store,
            "weight_group": weight_group,
        }
        bound_report_barrier(config.ray)
        self.trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            torch_config=torch_config(config.ray),
            scaling_config=scaling_config(config.ray),
            run_config=TrainRunConfig(
                name="learner",
                storage_path=str((run_dir / "ray_train").resolve()),
                checkpoint_config=CheckpointConfig(num_to_keep=1),
                failure_config=no_restarts(),
            ),
        )
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._fit, name="learner-group", daemon=True)

    def _fit(self) -> None:
        try:
            self.trainer.fit()
        except BaseException as error:  # reported by the driver's loop, which must not hang on a dead learner
            self.error = error

    def start(self) -> None:
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
