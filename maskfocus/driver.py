"""The Ray executor of `maskfocus train` (train.executor: ray): rollout and reward pools, the batch queue,
the learner group, run until the configured iterations (DESIGN.md, Data flow).

The loop is event driven: a rollout for iteration i starts once the learner's version is at least
i - max_staleness (0 = strictly on-policy), on an idle rollout worker that first loads the newest weights;
a finished rollout is scored on an idle reward worker; scored batches enter the bounded queue in
iteration order; every learner record (metrics, new weights) is logged. A failed rollout or score is
redone (the dead actor is restarted by Ray); a batch the learner drops as too stale is redone too; each
iteration is learned from exactly once. Every random stream is the in-process trainer's, keyed by
(seed, iteration, role), so with one worker per role and max_staleness 0 the run equals train_local.
"""

from __future__ import annotations

import os
import queue as queue_lib
import time
from pathlib import Path
from typing import Any

import ray
from ray import ObjectRef
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.queue import Queue
from tqdm import tqdm

from maskfocus.actors.pool import WorkerPool, make_actors
from maskfocus.actors.reward_worker import RewardWorker
from maskfocus.actors.rollout_worker import RolloutWorker
from maskfocus.config import ConfigError, RayConfig, RunConfig
from maskfocus.learner.checkpoint import RunState, resume_state
from maskfocus.learner.group import LearnerGroup
from maskfocus.learner.loop import QueuedBatch
from maskfocus.learner.weight_store import WeightStore
from maskfocus.models.amused import AmusedGenerator
from maskfocus.run_io import MetricsLog, latest_checkpoint, plot_reward_curve, read_metrics
from maskfocus.trainer import PromptStream, finish_run, save_preview

POLL_S = 1.0
RECOVERABLE = (RayActorError, ActorUnavailableError)


def connect(ray_config: RayConfig, address: str | None) -> bool:
    """Join the cluster at `address` / ray.address / RAY_ADDRESS, else start a local Ray; True if we called init."""
    if ray.is_initialized():
        return False
    address = address or ray_config.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=ray_config.num_cpus, object_store_memory=ray_config.object_store_memory)
    return True


class RayRun:
    """The driver's state between events: what is sampling, scoring, queued, learned."""

    def __init__(self, config: RunConfig, run_dir: Path, start: RunState, batches: Queue, store, show_progress: bool):
        self.config, self.run_dir, self.batches, self.store = config, run_dir, batches, store
        ray_config = config.ray
        self.rollouts = WorkerPool(
            make_actors(
                RolloutWorker,
                ray_config.num_rollout_workers,
                config,
                num_cpus=ray_config.rollout_cpus,
                num_gpus=ray_config.rollout_gpus,
                max_restarts=ray_config.max_restarts,
            )
        )
        self.rewards = WorkerPool(
            make_actors(
                RewardWorker,
                ray_config.num_reward_workers,
                config,
                num_cpus=ray_config.reward_cpus,
                num_gpus=ray_config.reward_gpus,
                max_restarts=ray_config.max_restarts,
            )
        )
        self.prompts = PromptStream(config.seed, config.rollout.tags, start.prompt_cursor)
        self.metadata: dict[int, tuple[list[dict[str, Any]], int]] = {}
        self.next_iteration, self.end = start.iteration, config.train.num_iterations
        self.version, self.weights = start.policy_version, None
        self.redo: list[int] = []
        self.rolling: dict[ObjectRef, tuple[int, int, ObjectRef | None]] = {}
        self.sampled: list[tuple[int, int, ObjectRef, ObjectRef | None]] = []
        self.scoring: dict[ObjectRef, tuple[int, int, int, ObjectRef, ObjectRef | None]] = {}
        self.scored: dict[int, tuple[QueuedBatch, float]] = {}
        self.load_seconds: dict[int, float] = {}
        self.attempts: dict[int, int] = {}
        self.counts = {"sync/dropped_stale": 0, "sync/redone": 0}
        self.backpressure_seconds = 0.0
        self.learned = 0
        self.last_event = self.last_update = time.perf_counter()
        self.log = MetricsLog(run_dir / "metrics.jsonl")
        self.total = self.end - start.iteration
        self.progress = tqdm(total=self.total, desc="train[ray]", unit="iter", disable=not show_progress)
        self.model: AmusedGenerator | None = None

    # -- named steps of one turn of the loop ---------------------------------------------------------------

    def in_flight(self) -> list[int]:
        return (
            self.redo
            + [it for it, _, _ in self.rolling.values()]
            + [it for it, _, _, _ in self.sampled]
            + [it for it, _, _, _, _ in self.scoring.values()]
        )

    def dispatch_rollouts(self) -> None:
        limit = self.config.ray.queue_capacity + len(self.rollouts) + len(self.rewards)
        while len(self.in_flight()) + len(self.scored) < limit:
            iteration = min(self.redo) if self.redo else self.next_iteration
            if iteration >= self.end or iteration - self.config.ray.max_staleness > self.version:
                return
            index = self.rollouts.acquire()
            if index is None:
                return
            load = None
            if self.rollouts.versions[index] != self.version:
                if self.weights is None:  # resuming: the learner has not published its weights yet
                    self.rollouts.release(index)
                    return
                load = self.rollouts.actors[index].load_weights.remote(self.version, self.weights[0])
                self.rollouts.versions[index] = self.version
            if iteration in self.redo:
                self.redo.remove(iteration)
            else:
                self.next_iteration += 1
                metadata = self.prompts.take(self.config.rollout.prompts_per_iteration)
                self.metadata[iteration] = (metadata, self.prompts.cursor)
            ref = self.rollouts.actors[index].sample.remote(self.metadata[iteration][0], iteration)
            self.rolling[ref] = (iteration, index, load)

    def dispatch_scores(self) -> None:
        while self.sampled and (index := self.rewards.acquire()) is not None:
            iteration, rollout_index, trajectory, load = self.sampled.pop(0)
            score = self.rewards.actors[index].score_split.options(num_returns=2)
            stats_ref, batch_ref = score.remote(trajectory)
            self.scoring[stats_ref] = (iteration, index, rollout_index, batch_ref, load)

    def enqueue(self) -> None:
        """Scored batches enter the queue in iteration order; a full queue holds them here (backpressure)."""
        while self.scored:
            iteration = min(self.scored)
            if any(other < iteration for other in self.in_flight()):
                return
            item, _ = self.scored[iteration]
            start = time.perf_counter()
            try:
                self.batches.put(item, block=False)
            except queue_lib.Full:
                self.backpressure_seconds += time.perf_counter() - start
                return
            del self.scored[iteration]

    def on_sampled(self, ref: ObjectRef) -> None:
        iteration, index, load = self.rolling.pop(ref)
        self.rollouts.release(index)
        self.sampled.append((iteration, index, ref, load))

    def on_scored(self, stats_ref: ObjectRef) -> None:
        iteration, index, rollout_index, batch_ref, load = self.scoring.pop(stats_ref)
        self.rewards.release(index)
        try:
            ray.get(stats_ref, timeout=self.config.ray.timeout_s)
            if load is not None:
                self.load_seconds[iteration] = ray.get(load, timeout=self.config.ray.timeout_s)
        except RECOVERABLE as error:
            self._redo_after_failure(iteration, rollout_index, error)
            return
        self.scored[iteration] = (QueuedBatch(iteration, self.metadata[iteration][1], [batch_ref]), time.perf_counter())

    def _redo_after_failure(self, iteration: int, rollout_index: int, error: BaseException) -> None:
        """A worker died: Ray restarts it; its weights are unknown until reloaded; the iteration is redone."""
        self.rollouts.forget(rollout_index)
        self.attempts[iteration] = self.attempts.get(iteration, 0) + 1
        if self.attempts[iteration] > self.config.ray.max_restarts:
            raise RuntimeError(
                f"iteration {iteration} failed {self.attempts[iteration]} times (ray.max_restarts="
                f"{self.config.ray.max_restarts}); last error: {type(error).__name__}: {error}"
            )
        self.counts["sync/redone"] += 1
        self.redo.append(iteration)

    def on_update(self, update: tuple[int, list[ObjectRef] | None, dict[str, Any]] | None) -> None:
        if update is None:
            return
        version, weights, record = update
        if record.get("ready"):
            self.version, self.weights = version, weights
            return
        if record.get("dropped"):
            self.counts["sync/dropped_stale"] += 1
            self.redo.append(record["iteration"])
            return
        self.version, self.weights = version, weights
        self.learned += 1
        self.progress.update(1)
        self.write_record(record)

    def write_record(self, record: dict[str, Any]) -> None:
        iteration, now = record["iteration"], time.perf_counter()
        record = {
            **record,
            **self.counts,
            "perf/rollout_seconds": record.get("rollout/seconds", 0.0),
            "perf/weight_load_seconds": self.load_seconds.pop(iteration, 0.0),
            "perf/backpressure_seconds": self.backpressure_seconds,
            "perf/iteration_seconds": now - self.last_update,
        }
        self.last_update = now
        train = self.config.train
        last = iteration == train.num_iterations - 1
        if iteration % train.log_every == 0 or last:
            self.log.write(record)
        if iteration % train.image_every == 0 or last:
            save_preview(self.current_model(), self.config, self.run_dir / "images" / f"iter_{iteration:06d}.png")
            plot_reward_curve(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "reward_curve.png")

    def current_model(self) -> AmusedGenerator:
        """The driver's copy of the generator with the newest published weights (previews, final model)."""
        if self.model is None:
            self.model = AmusedGenerator.from_folder(self.config.model.path, device=self.config.model.device)
        if self.weights is not None:
            self.model.transformer.load_state_dict(ray.get(self.weights[0], timeout=self.config.ray.timeout_s))
        return self.model

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self, learner: LearnerGroup) -> None:
        update_ref = self.store.next_update.remote(POLL_S)
        while self.learned < self.total:
            self.dispatch_rollouts()
            self.dispatch_scores()
            self.enqueue()
            waiting = [*self.rolling, *self.scoring, update_ref]
            ready, _ = ray.wait(waiting, num_returns=1, timeout=POLL_S, fetch_local=False)
            for ref in ready:
                self.last_event = time.perf_counter()
                if ref in self.rolling:
                    self.on_sampled(ref)
                elif ref in self.scoring:
                    self.on_scored(ref)
                else:
                    self.on_update(ray.get(ref, timeout=self.config.ray.timeout_s))
                    update_ref = self.store.next_update.remote(POLL_S)
            self.check_health(learner)

    def check_health(self, learner: LearnerGroup) -> None:
        if not learner.alive:
            raise RuntimeError(f"the learner group stopped: {learner.error!r}")
        idle = time.perf_counter() - self.last_event
        if idle > self.config.ray.timeout_s:
            raise RuntimeError(f"no rollout, score or update finished for {idle:.0f} s (ray.timeout_s)")

    def close(self) -> None:
        self.progress.close()
        self.log.close()
        self.rollouts.kill()
        self.rewards.kill()


def _check_supported(config: RunConfig) -> None:
    if config.ray.weight_transport != "object_store":
        raise ConfigError("ray.weight_transport: only 'object_store' is implemented so far (allowed: object_store)")


def train_ray(
    config: RunConfig, run_dir: Path, resume: bool = False, address: str | None = None, show_progress: bool = True
) -> dict:
    """Run the RL loop on Ray; returns the final summary (with the evaluation if enabled)."""
    _check_supported(config)
    started = connect(config.ray, address)
    start = resume_state(run_dir, resume)
    (run_dir / "images").mkdir(parents=True, exist_ok=True)
    batches = Queue(maxsize=config.ray.queue_capacity, actor_options={"num_cpus": 0})
    store = ray.remote(WeightStore).options(num_cpus=0).remote()
    learner = LearnerGroup(config, run_dir, start, batches, store)
    learner.start()
    run = RayRun(config, run_dir, start, batches, store, show_progress)
    try:
        run.run(learner)
        model = run.current_model()
        batches.put(None, timeout=config.ray.timeout_s)
        learner.join(config.ray.timeout_s)
    except Exception as error:
        checkpoint = latest_checkpoint(run_dir)
        hint = f"resume with `maskfocus train --resume {run_dir}`" if checkpoint else "no checkpoint was written yet"
        raise RuntimeError(f"the Ray run stopped: {error}; {hint}") from error
    finally:
        run.close()
        for actor in (store, batches.actor):
            ray.kill(actor)
        if started:
            ray.shutdown()
    return finish_run(config, run_dir, model, model.transformer)
