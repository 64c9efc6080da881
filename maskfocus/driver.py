"""The Ray executor's event loop (`RayRun`; maskfocus/driver_run.py's `train_ray` starts and ends it): rollout and
reward pools, the batch queue, the learner group, run until the configured iterations (DESIGN.md, Data flow).

The loop is event driven: a rollout for iteration i starts once the learner's version is at least
i - max_staleness (0 = strictly on-policy), on an idle rollout worker that first loads the newest weights;
a finished rollout is scored on an idle reward worker; scored batches enter the bounded queue in
iteration order; every learner record (metrics, new weights) is logged. A failed rollout or score is
redone (the dead actor is restarted by Ray, up to ray.max_restarts times, and held out of its pool until it answers,
while the loop goes on: actors/restarts.py; a score whose reward worker failed is redone from the same trajectory);
a batch the learner drops as too stale is redone too; each iteration is learned from exactly once. Every random
stream is the in-process trainer's, keyed by (seed, iteration, role), so with one worker per role and max_staleness
0 the run equals train_local, and a redone batch equals the lost one. A failure that cannot be recovered stops the
run: the learner checkpoints its last learned iteration (`--resume` continues from it) and the error says why. Ctrl-C
or SIGTERM stops the same way, without an error: no new rollouts, the queued batches are learned and checkpointed.

Time breakdown of each metrics record (seconds): perf/rollout_seconds (sampling), perf/reward_seconds
(scoring), perf/backpressure_seconds (a scored batch waiting for room in the queue), perf/queue_wait_seconds
(the learner waiting for a batch), perf/learner_seconds (the update), perf/weight_sync_seconds (gathering and
publishing the new weights), perf/weight_load_seconds (a rollout worker loading them), perf/iteration_seconds
(between two learned iterations). The same values go to the Ray dashboard (actors/metrics.py).

With `ray.weight_transport: collective` (GPU only, see actors/cluster.check_supported) the learner announces each
version before it broadcasts it; the driver then queues a receive on every rollout worker, behind its current call and
before any later rollout, so each worker samples with the version the pool records. The broadcast waits for
all of them, so the learner's record of that version arrives only after every receive has finished;
perf/weight_sync_seconds then covers the broadcast and perf/weight_load_seconds the slowest receive.
"""

from __future__ import annotations

import contextlib
import queue as queue_lib
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import ObjectRef
from ray.exceptions import ObjectLostError
from ray.util.queue import Queue
from tqdm import tqdm

from maskfocus.actors.attempts import RECOVERABLE, Attempt, attempt_workers, fetch_errors, named_workers
from maskfocus.actors.batch_queue import put_now, put_within, queue_size
from maskfocus.actors.cluster import free_resources_note
from maskfocus.actors.metrics import RunMetrics, run_tag
from maskfocus.actors.pool import creation_failure, role_pools
from maskfocus.actors.previews import RemotePreviews
from maskfocus.actors.receives import WeightReceives
from maskfocus.actors.restarts import RestartWatch
from maskfocus.bar_output import LinesAboveBar
from maskfocus.config import RunConfig
from maskfocus.divergence import NonFiniteWatch
from maskfocus.hardware import driver_model_config
from maskfocus.learner.group import LearnerGroup
from maskfocus.learner.loop import ABORT, KEEP_WAITING, QueuedBatch, preview_due
from maskfocus.learner.weight_transport import WeightGroup
from maskfocus.models import load_generator
from maskfocus.models.base import MaskedGenerator
from maskfocus.run_io import (
    MetricsLog,
    RecentReward,
    iteration_progress,
    load_checkpoint_weights,
    plot_reward_curve,
    read_metrics,
    running_counts,
)
from maskfocus.run_state import RunState
from maskfocus.stopping import StopRequest
from maskfocus.trainer import PromptStream

POLL_S = 1.0


class RayRun:
    """The driver's state between events: what is sampling, scoring, queued, learned."""

    def __init__(
        self,
        config: RunConfig,
        run_dir: Path,
        start: RunState,
        batches: Queue,
        store,
        show_progress: bool,
        weight_group: WeightGroup | None = None,
    ):
        self.config, self.run_dir, self.batches, self.store = config, run_dir, batches, store
        self.driver_config = driver_model_config(config, torch.cuda.is_available())
        self.collective = weight_group is not None
        self.prompts = PromptStream.from_config(config, start.prompt_cursor)
        self.metadata: dict[int, tuple[list[dict[str, Any]], int]] = {}
        self.next_iteration, self.end = start.iteration, config.train.num_iterations
        self.version, self.weights = start.policy_version, None
        self.version_offset = start.policy_version - start.iteration
        """The learner learns iteration i at policy version i + version_offset (in order, each once)."""
        self.checkpoint = start.checkpoint
        """The checkpoint the run resumed from: the weights until the learner publishes (it may publish none)."""
        self.redo: list[int] = []
        self.rolling: dict[ObjectRef, Attempt] = {}
        self.sampled: list[Attempt] = []
        self.scoring: dict[ObjectRef, Attempt] = {}
        self.scored: dict[int, tuple[QueuedBatch, float]] = {}
        self.load_seconds: dict[int, float] = {}
        self.receives = WeightReceives()
        """Collective: the rollout workers' receive calls not yet collected."""
        self.enqueue_wait: dict[int, float] = {}
        self.failures: dict[int, int] = {}
        self.restarts = RestartWatch(
            config.ray.timeout_s / 2, config.ray.max_restarts, self.collective, self.keep_learner_waiting
        )
        """The workers held out of their pools after a failure, until they answer again."""
        self.queue_depth = 0
        self.learned = 0
        self.last_event = self.last_update = time.perf_counter()
        self.log = MetricsLog(run_dir / "metrics.jsonl", start.iteration, config.train.log_every)
        self.nonfinite = NonFiniteWatch(config.train.max_nonfinite_iterations)
        self.counts = running_counts(self.log.path, ("sync/dropped_stale", "sync/redone"))
        """Running totals over the whole run: a resume goes on from its last kept record's."""
        tag = run_tag(run_dir, config.train.out_dir)
        self.metrics = RunMetrics(tag)
        self.total = self.end - start.iteration
        """The iterations this call learns (a resume's, not the run's)."""
        # the pools last: what fails before them (a prompt file, the metrics file) leaves no workers behind, as the
        # caller kills the pools only of a run it got (`train_ray`)
        self.rollouts, self.rewards = role_pools(config, tag, weight_group)
        self.progress = iteration_progress(start.iteration, self.end, "train[ray]", show_progress)
        self.recent = RecentReward(earlier=read_metrics(self.log.path))
        self.model: MaskedGenerator | None = None
        self.previews = RemotePreviews(run_dir, config.ray.timeout_s)
        self.preview_loads: dict[int, ObjectRef] = {}
        """Rollout worker -> the weight load queued before its preview: the next rollout there reports its seconds."""
        self.pending_update: ObjectRef | None = None
        """The store's `next_update` call in flight: it takes the next record, so a stop must collect it."""
        self.lines_above_bar = LinesAboveBar(self.progress)  # last: `close` puts the streams back
        """Workers' log lines, which Ray prints from a thread of the driver, go above the bar, not onto it."""

    # -- named steps of one turn of the loop ---------------------------------------------------------------

    def in_flight(self) -> list[int]:
        attempts = [*self.rolling.values(), *self.sampled, *self.scoring.values()]
        return self.redo + [attempt.iteration for attempt in attempts]

    def dispatch_rollouts(self) -> None:
        limit = self.config.ray.queue_capacity + len(self.rollouts) + len(self.rewards)
        # a redo replaces work already counted: held back by the limit, the redone iterations could fill it while
        # every later batch waits behind them (max_staleness + 1 >= the limit deadlocked)
        while self.redo or len(self.in_flight()) + len(self.scored) < limit:
            iteration = min(self.redo) if self.redo else self.next_iteration
            if iteration >= self.end or iteration - self.config.ray.max_staleness > self.version:
                return
            index = self.rollouts.acquire()
            if index is None:
                return
            ready, load = self.load_newest(index)
            if not ready:
                self.rollouts.release(index)
                return
            before_preview = self.preview_loads.pop(index, None)
            load = load or before_preview  # the weights this rollout samples with were loaded for a preview
            if iteration in self.redo:
                self.redo.remove(iteration)
            else:
                self.next_iteration += 1
                metadata = self.prompts.take(self.config.rollout.prompts_per_iteration)
                self.metadata[iteration] = (metadata, self.prompts.cursor)
            sample = self.rollouts.actors[index].sample_split.options(num_returns=2)
            version_ref, trajectory = sample.remote(self.metadata[iteration][0], iteration)
            self.rolling[version_ref] = Attempt(iteration, index, self.rollouts.versions[index], load, trajectory)

    def load_newest(self, index: int) -> tuple[bool, ObjectRef | None]:
        """Rollout worker `index` holds the newest weights, or their load is queued before its next call: (True,
        that load or None); (False, None) when it cannot have them yet (resuming: the learner has not published
        them; collective: not broadcast them yet)."""
        if self.rollouts.versions[index] == self.version:
            return True, None
        if self.weights is None or self.collective:
            return False, None
        load = self.rollouts.actors[index].load_weights.remote(self.version, self.weights[0])
        self.rollouts.versions[index] = self.version
        return True, load

    def dispatch_preview(self) -> None:
        if not self.previews.wanted() or (index := self.rollouts.acquire()) is None:
            return
        ready, load = self.load_newest(index)
        if not ready:
            self.rollouts.release(index)
            return
        if load is not None:
            self.preview_loads[index] = load
        self.previews.start(index, self.rollouts.actors[index], self.rollouts.versions[index], load)

    def on_preview(self, ref: ObjectRef) -> None:
        index, weights_lost = self.previews.finish(ref)
        self.rollouts.release(index)
        if weights_lost and not self.collective:
            # restarted with the base weights: reloaded before its next call. A collective worker is never
            # restarted: a failed call left it dead (its next rollout stops the run) or its weights intact, and
            # forgetting them would leave it waiting for a broadcast that needs the iteration it is to sample.
            self.rollouts.forget(index)

    def dispatch_scores(self) -> None:
        while self.sampled and (index := self.rewards.acquire()) is not None:
            attempt = self.sampled.pop(0)
            score = self.rewards.actors[index].score_split.options(num_returns=2)
            stats_ref, attempt.batch = score.remote(attempt.trajectory)
            attempt.reward_index = index
            self.scoring[stats_ref] = attempt

    def enqueue(self, until: float | None = None) -> None:
        """Scored batches enter the queue in iteration order; a full queue holds them here (backpressure), or, with
        `until` (a stop, when nothing else is left to do: a time.perf_counter() deadline), is waited on for room."""
        while self.scored:
            iteration = min(self.scored)
            if any(other < iteration for other in self.in_flight()):
                return
            item, scored_at = self.scored[iteration]
            try:
                if until is None:
                    put_now(self.batches, item, self.config.ray.timeout_s)
                else:
                    put_within(self.batches, item, max(until - time.perf_counter(), 1.0))
            except queue_lib.Full:
                return
            self.enqueue_wait[iteration] = time.perf_counter() - scored_at
            del self.scored[iteration]
            self.observe_queue()

    def keep_learner_waiting(self) -> None:
        """A worker failed, or is back: the learner starts its wait for the delayed batch again. Best effort: a
        full queue needs no word (the learner has batches to take), and a queue actor that cannot take it fails the
        run at the next batch's put, not here, in the middle of handling the worker's own failure."""
        with contextlib.suppress(Exception):
            put_now(self.batches, KEEP_WAITING, self.config.ray.timeout_s)

    def observe_queue(self) -> None:
        self.queue_depth = queue_size(self.batches, self.config.ray.timeout_s)
        self.metrics.record("maskfocus_queue_depth", self.queue_depth)

    def on_sampled(self, version_ref: ObjectRef) -> None:
        attempt = self.rolling.pop(version_ref)
        self.rollouts.release(attempt.rollout_index)
        try:
            sampled_by = ray.get(version_ref, timeout=self.config.ray.timeout_s)
        except RECOVERABLE as error:
            fetch_errors([attempt.trajectory, attempt.load], self.config.ray.timeout_s)
            self._redo_after_failure(attempt, error)
            return
        if sampled_by != attempt.version:
            # The rollout worker was restarted between its load and this rollout (its weights are the base
            # model's again): reload it next time.
            self.rollouts.forget(attempt.rollout_index)
            if attempt.iteration + self.version_offset - sampled_by > self.config.ray.max_staleness:
                # the learner would drop it as too stale, and every batch queued behind it: redone at once instead,
                # before a score is spent on it
                self.metrics.record("maskfocus_dropped_stale", 1)
                self.redo_dropped(attempt.iteration)
                return
        self.sampled.append(attempt)

    def on_scored(self, stats_ref: ObjectRef) -> None:
        attempt = self.scoring.pop(stats_ref)
        self.rewards.release(attempt.reward_index)
        try:
            ray.get(stats_ref, timeout=self.config.ray.timeout_s)  # small: raises if the score failed
            if attempt.load is not None:
                self.load_seconds[attempt.iteration] = ray.get(attempt.load, timeout=self.config.ray.timeout_s)
        except RECOVERABLE as error:
            fetch_errors([attempt.batch, attempt.load], self.config.ray.timeout_s)
            self._redo_after_failure(attempt, error)
            return
        prompt_cursor = self.metadata[attempt.iteration][1]
        item = QueuedBatch(attempt.iteration, prompt_cursor, [attempt.batch])
        self.scored[attempt.iteration] = (item, time.perf_counter())

    def _redo_after_failure(self, attempt: Attempt, error: BaseException) -> None:
        """A worker died: Ray restarts it; a restarted rollout worker's weights are unknown until reloaded. Once
        the workers of the attempt take calls again, the iteration is redone: scored again from its trajectory
        when only the reward worker failed (the driver owns the trajectory; were it lost after all, that score
        fails with ObjectLostError and the iteration is sampled again, a second failure counted against
        ray.max_restarts), else sampled again."""
        iteration, max_restarts = attempt.iteration, self.config.ray.max_restarts
        workers = attempt_workers(attempt, self.rollouts, self.rewards)
        named = named_workers(error, workers)
        reward_failed = any(role == "reward" for role, _, _ in named)
        rollout_failed = any(role == "rollout" for role, _, _ in named)
        self.failures[iteration] = self.failures.get(iteration, 0) + 1
        if (cause := creation_failure(error)) is not None or self.failures[iteration] > max_restarts:
            self.redo.append(iteration)  # not learned: the stop that follows queues no batch after it
        if cause is not None:
            role, index = ("reward", attempt.reward_index) if reward_failed else ("rollout", attempt.rollout_index)
            raise RuntimeError(f"{role} worker {index} could not start: {cause}")
        if not reward_failed and not self.collective:
            # Only a restarted rollout worker lost its weights. A collective one is never restarted (dead, its
            # readiness probe stops the run; else its weights are intact), and a forgotten one would wait for a
            # broadcast that needs this very iteration.
            self.rollouts.forget(attempt.rollout_index)
        if self.failures[iteration] > max_restarts:
            raise RuntimeError(
                f"iteration {iteration} failed {self.failures[iteration]} times (ray.max_restarts="
                f"{max_restarts}); last error: {type(error).__name__}: {error}"
            )
        # hold the worker the error names (a healthy one may be busy with its next call, which a readiness probe
        # waits behind), both when it names neither (a lost object), until it answers; the loop goes on meanwhile
        for role, pool, index in named or workers:
            self.restarts.watch(role, pool, index)
        self.counts["sync/redone"] += 1
        self.metrics.record("maskfocus_redone", 1)
        if reward_failed and not rollout_failed and not isinstance(error, ObjectLostError):
            attempt.reward_index, attempt.batch = -1, None
            self.sampled.insert(0, attempt)  # scored next (the queue takes iterations in order either way)
            return
        self.redo.append(iteration)

    def on_update(self, update: tuple[int, list[ObjectRef] | None, dict[str, Any]] | None) -> None:
        if update is None:
            return
        version, weights, record = update
        if record.get("ready") or record.get("broadcast"):
            self.version, self.weights = version, weights or self.weights
            if self.collective:
                self.receives.start(self.rollouts.actors, version, record.get("iteration", -1))
                self.rollouts.versions = [version] * len(self.rollouts)
            return
        self.observe_queue()
        if record.get("dropped"):  # the learner recorded the metric
            self.redo_dropped(record["iteration"])
            return
        self.version, self.weights = version, weights or self.weights
        for iteration, seconds in self.receives.collect(self.config.ray.timeout_s).items():
            self.load_seconds[iteration] = max(self.load_seconds.get(iteration, 0.0), seconds)
        self.learned += 1
        self.metadata.pop(record["iteration"], None)  # learned: never redone (kept, 10k iterations held ~200 MB)
        self.progress.set_postfix(self.recent.postfix(record), refresh=False)
        self.progress.update(1)
        self.write_record(record)

    def redo_dropped(self, iteration: int) -> None:
        """A batch dropped (too stale, out of order, lost): its iteration is sampled again."""
        self.counts["sync/dropped_stale"] += 1
        self.redo.append(iteration)

    def write_record(self, record: dict[str, Any]) -> None:
        iteration, now = record["iteration"], time.perf_counter()
        record = {
            **record,
            **self.counts,
            "sync/queue_depth": self.queue_depth,
            "perf/rollout_seconds": record.get("rollout/seconds", 0.0),
            "perf/weight_load_seconds": self.load_seconds.pop(iteration, 0.0),
            "perf/backpressure_seconds": self.enqueue_wait.pop(iteration, 0.0),
            "perf/iteration_seconds": now - self.last_update,
        }
        self.last_update = now
        self.metrics.record("maskfocus_iteration_seconds", record["perf/iteration_seconds"])
        train = self.config.train
        if iteration % train.log_every == 0 or iteration == train.num_iterations - 1:
            self.log.write(record)
        if (note := self.nonfinite.observe(record)) is not None:  # raises Diverged: train_ray stops the run
            tqdm.write(note)
        if preview_due(train, iteration):
            self.previews.request()
            plot_reward_curve(read_metrics(self.run_dir / "metrics.jsonl"), self.run_dir / "reward_curve.png")

    def current_model(self) -> MaskedGenerator:
        """The driver's copy of the generator with the newest published weights (the final model)."""
        if self.model is None:
            self.model = load_generator(self.driver_config.model)
            if self.weights is None and self.checkpoint is not None:
                # resuming a finished run: no weights are published before its end (once some are, the checkpoint
                # resumed from may be gone: train.keep_checkpoints)
                load_checkpoint_weights(Path(self.checkpoint), self.model.trainable_module())
        if self.weights is not None:
            self.model.transformer.load_state_dict(ray.get(self.weights[0], timeout=self.config.ray.timeout_s))
        return self.model

    # -- the loop ------------------------------------------------------------------------------------------

    def run(self, learner: LearnerGroup, stop: StopRequest | None = None) -> None:
        """Until every iteration is learned, or a stop is requested (then `stop_early` finishes the queued ones)."""
        self.pending_update = self.store.next_update.remote(POLL_S)
        while self.learned < self.total and not (stop is not None and stop.requested):
            self.dispatch_preview()  # first: with max_staleness > 0 rollouts would take every idle worker
            self.dispatch_rollouts()
            self.dispatch_scores()
            self.enqueue()
            waiting = [*self.rolling, *self.scoring, *self.previews.drawing, *self.restarts.refs(), self.pending_update]
            ready, _ = ray.wait(waiting, num_returns=1, timeout=POLL_S, fetch_local=False)
            for ref in ready:
                if ref in self.rolling:
                    self.on_sampled(ref)
                elif ref in self.scoring:
                    self.on_scored(ref)
                elif ref in self.previews.drawing:
                    self.on_preview(ref)
                elif ref in self.restarts:
                    self.restarts.on_ready(ref)
                else:
                    self.pending_update = None  # taken here: after a failure below, stop_early must not retake it
                    update = ray.get(ref, timeout=self.config.ray.timeout_s)
                    self.on_update(update)
                    self.pending_update = self.store.next_update.remote(POLL_S)
                    if update is None:  # the poll timed out: nothing finished
                        continue
                self.last_event = time.perf_counter()
            self.receives.check(self.config.ray.timeout_s)
            self.restarts.check()
            self.check_health(learner)

    def check_health(self, learner: LearnerGroup) -> None:
        if not learner.alive:
            raise RuntimeError(f"the learner group stopped: {learner.error!r}")
        idle = time.perf_counter() - self.last_event
        if idle > self.config.ray.timeout_s:
            raise RuntimeError(
                f"no rollout, score or update finished for {idle:.0f} s (ray.timeout_s){free_resources_note()}"
            )

    def finish(self, learner: LearnerGroup) -> MaskedGenerator:
        """After the last iteration: the driver's final model; the learner group takes the stop item and must end
        cleanly (a failure after its last record would otherwise go unseen)."""
        self.draw_last_preview()
        model, timeout = self.current_model(), self.config.ray.timeout_s
        put_within(self.batches, None, timeout)
        learner.join(timeout)
        if learner.alive:
            raise RuntimeError(
                f"the learner group did not stop within {timeout:.0f} s (ray.timeout_s) of the last iteration"
            )
        if learner.error is not None:
            raise RuntimeError(
                f"the learner group failed after the last iteration: {learner.error!r}"
            ) from learner.error
        return model

    def draw_last_preview(self) -> None:
        """After the last iteration: the preview in flight and the one due (the last iteration's) are drawn, within
        half of ray.timeout_s: the learner, waiting for the stop item since its last record, gives up after all of
        it (and the weights it published are gone once it stops, so this comes first)."""
        seconds = self.config.ray.timeout_s / 2
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            self.dispatch_preview()
            if not self.previews.drawing:
                if self.previews.wanted():  # due, but every rollout worker is held after a failure
                    tqdm.write("the last preview was not drawn: no rollout worker takes calls (restarting); skipped")
                return
            ready, _ = ray.wait(list(self.previews.drawing), num_returns=1, timeout=POLL_S)
            for ref in ready:
                self.on_preview(ref)
        tqdm.write(f"the last preview was not drawn within {seconds:.0f} s (half of ray.timeout_s); skipped")

    def progress_words(self) -> str:
        """How far the run got, for a stop's message: "37 of 250 iterations learned"."""
        done = self.end - self.total + self.learned
        return f"{done} of {self.end} iteration{'s' if self.end != 1 else ''} learned"

    def stop_early(self, learner: LearnerGroup, checkpoint: bool = True) -> None:
        """After a failure or a stop request: no new rollouts; the learner learns what is queued (and the scored
        batches next in order that a full queue held here), checkpoints its last iteration and stops, and its
        records are logged (the loop's in-flight poll first, which may hold one), so that the run folder is
        consistent and resumable. Best effort: it gives up once ray.timeout_s passes without a record (a learner
        still learning the queued batches, or writing its checkpoint, is not cut off by a fixed total; a dead
        learner leaves its last periodic checkpoint, and the records it published before it died are logged).
        Collective: the rollout workers stay, to take the learner's last broadcasts. `checkpoint=False` (a diverged
        loss): the learner stops at once, without a checkpoint of its non-finite weights."""
        if not self.collective:
            self.rollouts.kill()
        self.rewards.kill()
        timeout = self.config.ray.timeout_s
        deadline = time.perf_counter() + timeout
        try:
            pending, self.pending_update = self.pending_update, None
            if pending is not None:  # the loop's last call may already hold a learned iteration's record
                self.on_update(ray.get(pending, timeout=timeout))
            if learner.alive:
                queued_by = time.perf_counter() + timeout  # one wait for the held batches and the stop item
                if checkpoint:  # the batches scored in order, held here while the queue was full: learned too
                    self.queue_held_batches(queued_by)
                put_within(self.batches, None if checkpoint else ABORT, max(queued_by - time.perf_counter(), 1.0))
                deadline = time.perf_counter() + timeout  # the wait for the first record starts now
            while time.perf_counter() < deadline:
                update = ray.get(self.store.next_update.remote(POLL_S), timeout=timeout)
                if update is None and not learner.alive:
                    break
                if update is not None:
                    deadline = time.perf_counter() + timeout
                self.on_update(update)
        except Exception as error:  # the original failure is what the user must see; this one only explains
            tqdm.write(f"stopping the learner failed: {type(error).__name__}: {error}")
        learner.join(max(deadline - time.perf_counter(), 0.0))

    def queue_held_batches(self, until: float) -> None:
        """At a stop: the scored batches next in order go to the learner, waiting for room until `until`; a failure
        is reported, not raised, so that the stop item still goes in."""
        try:
            self.enqueue(until)
        except Exception as error:
            tqdm.write(f"the scored batches were not queued: {type(error).__name__}: {error}")

    def close(self) -> None:
        self.lines_above_bar.restore()
        self.progress.close()
        self.log.close()
        self.rollouts.kill()
        self.rewards.kill()
