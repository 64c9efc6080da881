"""The rollout role: sample P prompts x G images with the entropy router and record the trajectory.

A plain class (DESIGN.md, "Roles are plain classes first"); the driver makes it a Ray actor, one per
inference GPU. Its random stream is seeded_generator(seed, iteration, ROLLOUT), as in the in-process
trainer, so a batch depends only on (weights, iteration), never on which worker sampled it. Weights arrive by
object-store reference (`load_weights`) or, with `ray.weight_transport: collective`, from the learner's broadcast
(`join_weight_group` once, then `receive_weights` per version). It records the dashboard metrics rollout images per
second and weight-load seconds (actors/metrics.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from maskfocus.actors.metrics import RunMetrics
from maskfocus.actors.setup import on_device, start_role
from maskfocus.config import RunConfig
from maskfocus.learner.weight_transport import WeightGroup, WeightReceiver
from maskfocus.models import load_generator
from maskfocus.rollout import rollout
from maskfocus.sampling import check_negative_prompt, seeded_generator
from maskfocus.trainer import ROLLOUT, preview_images
from maskfocus.types import Trajectory


class RolloutWorker:
    """Holds one generator; loads published weights by version and samples training rollouts."""

    def __init__(self, config: RunConfig, run_name: str = "", worker: int = 0):
        start_role(config)
        self.config = config
        self.metrics = RunMetrics(run_name)
        self.worker = str(worker)
        """This worker's index in its pool: the `worker` tag of its per-worker gauge."""
        self.model = load_generator(config.model)
        check_negative_prompt(self.model, config.sampler)  # else the first rollout fails, after the workers started
        self.policy_version = 0
        """Version of the weights now loaded: 0 = the base model, v = after the learner's v-th update."""
        self.receiver: WeightReceiver | None = None

    def load_weights(self, version: int, state_dict: dict[str, torch.Tensor]) -> float:
        """Load the full transformer weights of `version`; returns the seconds it took."""
        start = time.perf_counter()
        self.model.transformer.load_state_dict(state_dict)
        self.policy_version = version
        return self._loaded(start)

    def join_weight_group(self, group: WeightGroup, rank: int) -> None:
        """Become receiver `rank` of the learner's weight broadcast (ray.weight_transport: collective)."""
        self.receiver = WeightReceiver(group, rank)

    def receive_weights(self, version: int) -> float:
        """Take part in the learner's broadcast of `version`; returns the seconds it took (waiting for the sender
        included)."""
        assert self.receiver is not None, "join_weight_group first"
        start = time.perf_counter()
        self.policy_version = self.receiver.receive(self.model.transformer, expect_version=version)
        return self._loaded(start)

    def _loaded(self, start: float) -> float:
        seconds = time.perf_counter() - start
        self.metrics.record("maskfocus_weight_sync_seconds", seconds, stage="load")
        return seconds

    def sample(self, metadata: Sequence[dict[str, Any]], iteration: int) -> Trajectory:
        """One iteration's rollout, tagged with the version of the weights that sampled it."""
        trajectory = rollout(
            self.model,
            metadata,
            self.config.rollout.group_size,
            self.config.rollout_sampler(),
            self.config.router,
            seeded_generator(self.config.seed, iteration, ROLLOUT, device=self.model.device),
            policy_version=self.policy_version,
            iteration=iteration,
        )
        num_images = trajectory.tokens_BL.shape[0]
        self.metrics.record("maskfocus_rollout_images", num_images)
        images_per_second = num_images / max(trajectory.seconds, 1e-9)
        self.metrics.record("maskfocus_rollout_images_per_second", images_per_second, worker=self.worker)
        return on_device(trajectory, "cpu")

    def sample_split(self, metadata: Sequence[dict[str, Any]], iteration: int) -> tuple[int, Trajectory]:
        """`sample`, with the version of the weights that sampled it returned apart (call with num_returns=2), so
        that the driver learns of a failed rollout without fetching the trajectory, which goes to a reward worker
        by reference: it used to learn of it only when that score failed, having handed the worker new work."""
        trajectory = self.sample(metadata, iteration)
        return trajectory.policy_version, trajectory

    def preview(self) -> tuple[int, np.ndarray, list[str]]:
        """(the weights version, the images, the prompts) of a preview grid drawn with the weights now loaded: on the
        worker's device, so that the driver, on a head node that may have no GPU, never samples."""
        images, prompts = preview_images(self.model, self.config)
        return self.policy_version, images, prompts

    def version(self) -> int:
        return self.policy_version
