"""The reward role: task rewards, step gains, critical-step selection and advantages -> TrainBatch.

A plain class made a Ray actor by the driver. Of the model it loads only the VQ image tokenizer (codebook, decoder)
that the step embeddings use, not the transformer or the text encoder; its random stream is
seeded_generator(seed, iteration, SELECT).
It records the dashboard metrics reward latency and mean reward (actors/metrics.py).
"""

from __future__ import annotations

import math

from maskfocus.actors.metrics import RunMetrics
from maskfocus.actors.setup import on_device, start_role
from maskfocus.config import RunConfig
from maskfocus.models.image_codec import load_image_codec
from maskfocus.rewards.combined import build_rewards
from maskfocus.sampling import seeded_generator
from maskfocus.scoring import score_trajectory
from maskfocus.trainer import SELECT, clip_image_embed
from maskfocus.types import TrainBatch, Trajectory


class RewardWorker:
    """Scores rollouts into TrainBatches."""

    def __init__(self, config: RunConfig, run_name: str = "", worker: int = 0):
        start_role(config)
        self.config = config
        self.metrics = RunMetrics(run_name)
        self.worker = str(worker)
        """This worker's index in its pool: the `worker` tag of its per-worker gauge."""
        self.codec = load_image_codec(config.model)
        self.reward_fn = build_rewards(config.rewards, device=config.model.device)
        self.image_embed = clip_image_embed(self.reward_fn) if config.selection.embedding == "clip" else None

    def score(self, trajectory: Trajectory) -> TrainBatch:
        """The TrainBatch of `trajectory` (scored on this worker's device, returned on the CPU)."""
        batch = score_trajectory(
            on_device(trajectory, self.codec.device),
            self.reward_fn,
            self.codec,
            self.config.selection,
            self.config.grpo,
            seeded_generator(self.config.seed, trajectory.iteration, SELECT),
            self.image_embed,
        )
        self.metrics.record("maskfocus_reward_latency_seconds", batch.stats["perf/reward_seconds"])
        if math.isfinite(batch.stats["reward/mean"]):
            self.metrics.record("maskfocus_reward_mean", batch.stats["reward/mean"], worker=self.worker)
        return on_device(batch, "cpu")

    def score_split(self, trajectory: Trajectory) -> tuple[dict[str, float], TrainBatch]:
        """`score`, with the batch's small stats returned apart (call with num_returns=2) so that the driver
        learns of success or failure without fetching the batch, which goes to the learner by reference."""
        batch = self.score(trajectory)
        return {**batch.stats, "policy_version": float(batch.policy_version)}, batch
