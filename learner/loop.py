"""The per-worker loop of the learner group (one Ray Train worker per training GPU).

Rank 0 takes TrainBatches from the queue, drops those older than `max_staleness` allows (and any queued behind a
dropped one: iterations are learned in order), and broadcasts the batch; each rank runs PolicyUpdater.update on its
shard with the global token count; rank 0 then publishes the full weights (gathered from the shards) with the new
version, and every `checkpoint_every` iterations rank 0 writes a checkpoint to the run folder and all ranks report it
to Ray Train (as a marker: checkpoint.report_to_ray_train). The loop ends on the
queue's stop item (None); a stop before the run's end (the driver failed) first checkpoints the last learned
iteration, so that the run resumes from there. Rank 0 records the dashboard metrics of the update.

Weights reach the rollout workers through the object store (rank 0 puts them, the driver hands out the
reference) or, with `ray.weight_transport: collective`, through rank 0's broadcast (learner/weight_transport.py):
rank 0 first announces the version to the driver, which starts every rollout worker's receive, then broadcasts;
it puts the weights in the object store only when the driver needs them itself (a preview, the last iteration).
"""

from __future__ import annotations

import math
import queue as queue_lib
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
import torch
import torch.distributed as dist
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.exceptions import ObjectLostError
from ray.util.queue import Queue

from maskfocus.actors.batch_queue import get_within
from maskfocus.actors.metrics import RunMetrics
from maskfocus.actors.setup import on_device, start_role
from maskfocus.config import RunConfig, TrainConfig
from maskfocus.learner.checkpoint import (
    RunState,
    full_optimizer_state,
    load_optimizer_state,
    report_to_ray_train,
    write_checkpoint,
)
from maskfocus.learner.parallelize import average_metrics, global_token_count, shard_reference, unwrap, wrap
from maskfocus.learner.weight_transport import WeightGroup, WeightSender
from maskfocus.models import load_generator
from maskfocus.run_io import load_checkpoint_weights, plain_state_dict
from maskfocus.sampling import seeded_generator
from maskfocus.trainer import LEARN
from maskfocus.types import TrainBatch
from maskfocus.update import PolicyUpdater, StepInputs, frozen_copy, schedule_span


@dataclass(frozen=True)
class QueuedBatch:
    """One queue item: a whole iteration's TrainBatch, by reference, and the prompt cursor after it."""

    iteration: int
    prompt_cursor: int
    batch: list[ObjectRef]
    """[ref]: a list so that the queue actor stores the reference, not a copy of the batch."""


ABORT = "abort"
"""The queue item that stops the learner without its stop checkpoint: the loss diverged, so the weights it holds
are non-finite and a checkpoint of them would only prune good ones (train.keep_checkpoints)."""

KEEP_WAITING = "keep waiting"
"""The queue item the driver puts when a worker fails and when it takes calls again: the batch the learner waits
for is being redone, so rank 0 starts its ray.timeout_s wait again (else, with one worker of a role, a restart
near half of ray.timeout_s let the learner time out first, on a run that would have gone on)."""


@dataclass
class Message:
    """What rank 0 broadcasts: stop, abort (stop without a checkpoint), skip (a dropped batch) or learn from `batch`
    (each rank keeps its shard)."""

    kind: str
    iteration: int = -1
    prompt_cursor: int = 0
    batch: TrainBatch | None = None


def shard_rows(num_rows: int, rank: int, world_size: int) -> slice:
    """The rows of TrainBatch.shard(rank, world_size)."""
    size = -(-num_rows // world_size)
    return slice(rank * size, (rank + 1) * size)


class ShardedUpdater(PolicyUpdater):
    """PolicyUpdater on this rank's shard whose random training inputs (re-masked positions) are drawn for the
    whole batch and then sliced, so every sample gets the same draw as in the single-worker run."""

    def __init__(self, *args, rank: int, world_size: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.rank, self.world_size = rank, world_size
        self._full_batch: TrainBatch | None = None

    def update_shard(
        self, batch: TrainBatch, generator: torch.Generator, count_tokens, version: int | None = None
    ) -> dict[str, float]:
        self._full_batch = batch
        try:
            return self.update(batch.shard(self.rank, self.world_size), generator, count_tokens, version)
        finally:
            self._full_batch = None

    def prepare(self, batch: TrainBatch, generator: torch.Generator) -> list[StepInputs]:
        full = self._full_batch if self._full_batch is not None else batch
        rows = shard_rows(len(full), self.rank, self.world_size) if full is not batch else slice(None)
        return [
            StepInputs(step.inputs_BL[rows], step.loss_mask_BL[rows], step.steps_B[rows])
            for step in super().prepare(full, generator)
        ]


class LearnerWorker:
    """One rank's model, wrapped module, frozen reference and updater."""

    def __init__(self, config: RunConfig, start: RunState, rank: int, world_size: int, device: torch.device):
        start_role(config)
        self.config, self.rank, self.world_size, self.device = config, rank, world_size, device
        self.model = load_generator(config.model, device=str(device), dtype="float32")  # fp32 master weights
        base = self.model.trainable_module()
        # The reference is the base policy, as in train_local (made before a checkpoint is loaded or wrapping).
        reference = frozen_copy(base) if config.grpo.beta > 0 else None
        if start.checkpoint:
            load_checkpoint_weights(Path(start.checkpoint), base)
        strategy, blocks = config.ray.learner_strategy, self.model.blocks()
        reference = shard_reference(reference, base, strategy, blocks)  # before `wrap`: it names the blocks
        self.module = wrap(base, strategy, blocks)
        self.updater = ShardedUpdater(
            self.model,
            config.grpo,
            config.optim,
            config.rollout_sampler().num_steps,
            total_updates=schedule_span(config, start.num_updates, start.iteration),
            module=self.module,
            reference=reference,
            compile=config.train.compile_learner,
            compile_backend=config.train.learner_compile_backend,
            max_staleness=config.ray.max_staleness,
            temperature=config.rollout_sampler().temperature,
            rank=rank,
            world_size=world_size,
        )
        if start.checkpoint:
            load_optimizer_state(self.module, self.updater.optimizer, Path(start.checkpoint))
            self.updater.resume_schedule(start.num_updates)
        self.version = start.policy_version
        self.next_iteration = start.iteration
        """Iterations are learned in order: a batch of any other is dropped (`_message`) and redone."""
        self.count_tokens = global_token_count(world_size, device)

    def learn(self, message: Message) -> dict[str, float]:
        """One update from the message's batch (it arrives on the CPU; this rank's module is on `device`)."""
        assert message.batch is not None
        generator = seeded_generator(self.config.seed, message.iteration, LEARN, device=self.device)
        batch = on_device(message.batch, self.device)
        metrics = self.updater.update_shard(batch, generator, self.count_tokens, version=self.version)
        self.version += 1
        self.next_iteration = message.iteration + 1
        return average_metrics(metrics, self.world_size)

    def full_weights(self) -> dict[str, torch.Tensor]:
        """Collective for FSDP: every rank joins the gathers; rank 0, which alone publishes and checkpoints them,
        gets the full tensors on the CPU and the other ranks an empty dict."""
        return plain_state_dict(unwrap(self.module), keep=self.rank == 0)


def _broadcast(message: Message | None, world_size: int) -> Message:
    if world_size == 1:
        assert message is not None
        return message
    received: list[Any] = [message]
    dist.broadcast_object_list(received, src=0)
    return received[0]


class QueueTimeout(RuntimeError):
    """Rank 0 waited ray.timeout_s for a queue item: the rollouts or scoring stalled."""


def _take(batches: Queue, timeout_s: float) -> tuple[QueuedBatch | None, float]:
    """Rank 0: the next queue item other than KEEP_WAITING (which starts the wait's timeout again), and the seconds
    spent waiting for it."""
    start = waiting_since = time.perf_counter()
    while True:
        try:
            item = get_within(batches, 1.0)
        except queue_lib.Empty:
            if time.perf_counter() - waiting_since > timeout_s:
                raise QueueTimeout(f"learner: no TrainBatch arrived for {timeout_s:.0f} s (ray.timeout_s)") from None
            continue
        if item != KEEP_WAITING:
            return item, time.perf_counter() - start
        waiting_since = time.perf_counter()


def _message(
    item: QueuedBatch | str | None, version: int, config: RunConfig, next_iteration: int
) -> tuple[Message, dict]:
    """Rank 0: what to broadcast for a queue item, and the item's stats (for the record). A batch too stale is
    dropped, and so are one that is not `next_iteration` and one lost with its reward worker's node: after a drop
    the later batches already queued wait for the redone one (learned first, they would put a checkpoint's
    iteration and prompt cursor past an unlearned one)."""
    if item is None:
        return Message("stop"), {}
    if item == ABORT:
        return Message("abort"), {}
    if item.iteration != next_iteration:
        return Message("skip", item.iteration, item.prompt_cursor), {"sync/out_of_order": 1.0}
    try:
        batch: TrainBatch = ray.get(item.batch[0], timeout=config.ray.timeout_s)
    except ObjectLostError:  # the reward worker's node died after scoring it: the driver redoes the iteration
        return Message("skip", item.iteration, item.prompt_cursor), {"sync/lost_batch": 1.0}
    staleness = version - batch.policy_version
    info = {**batch.stats, "sync/staleness": float(staleness), "sync/batch_version": float(batch.policy_version)}
    if staleness > config.ray.max_staleness or staleness < 0:
        return Message("skip", item.iteration, item.prompt_cursor), info
    return Message("learn", item.iteration, item.prompt_cursor, batch), info


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; `loop_config`: config, start (RunState), run_dir, batches (Queue), store, and
    weight_group (a WeightGroup with the collective transport, else None)."""
    config: RunConfig = loop_config["config"]
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    check_run_folder(Path(loop_config["run_dir"]), rank)
    device = ray.train.torch.get_device() if config.ray.learner_gpus > 0 else torch.device("cpu")
    worker = LearnerWorker(config, loop_config["start"], rank, world_size, device)
    group: WeightGroup | None = loop_config.get("weight_group")
    sender = WeightSender(group, device) if group is not None and rank == 0 else None
    try:
        queues = loop_config["batches"], loop_config["store"]
        _serve(worker, sender, *queues, Path(loop_config["run_dir"]), loop_config["run_tag"])
    finally:
        if sender is not None:
            sender.close()


def check_run_folder(run_dir: Path, rank: int) -> None:
    """The driver made the run folder before it started the learner; a learner rank that cannot see it is on
    another node without a shared disk, where its checkpoints would land out of the driver's (and --resume's)
    reach. Stop at once, rather than at the end of the run."""
    if not run_dir.is_dir():
        raise RuntimeError(
            f"learner rank {rank} on host {socket.gethostname()} cannot see the run folder {run_dir}, which the "
            "driver made on its own node: the learner writes the checkpoints there and the driver reads them. Put "
            "train.out_dir on a disk every node mounts at the same path (NFS, EFS, ...; deploy/cluster.yaml)"
        )


def _serve(
    worker: LearnerWorker, sender: WeightSender | None, batches: Queue, store: ActorHandle, run_dir: Path, tag: str
) -> None:
    """Learn from queue items until the stop item; rank 0 publishes each update (and `sender` broadcasts it)."""
    config, rank, world_size = worker.config, worker.rank, worker.world_size
    metrics = RunMetrics(tag)
    timeout = config.ray.timeout_s
    weights = worker.full_weights()
    if rank == 0:  # the starting weights (the checkpoint's, on resume); also says the learner is ready
        ray.get(store.publish.remote(worker.version, [ray.put(weights)], {"ready": 1.0}), timeout=timeout)
        # The driver starts the rollout workers' receives on the ready record, unless the run is already learned
        # to its end (a resume for the final evaluation): then no receive would ever come.
        if sender is not None and worker.next_iteration < config.train.num_iterations:
            sender.broadcast(worker.version, weights)
    unsaved: Message | None = None
    """The last learned iteration when it is not in a checkpoint yet."""
    failure: Exception | None = None
    """What failed in rank 0's own work (its wait for a batch, fetching it, publishing or broadcasting weights): every
    rank stops as on the stop item, checkpointing the unsaved iteration, then rank 0 raises it."""
    while True:
        info, queue_wait = {}, 0.0
        message = None
        if rank == 0 and failure is None:
            try:
                item, queue_wait = _take(batches, timeout)
                message, info = _message(item, worker.version, config, worker.next_iteration)
            except Exception as error:  # e.g. QueueTimeout: the learner's clock runs ahead of the driver's
                failure = error
        if rank == 0 and failure is not None:  # no other queue item is taken: every rank saves, then rank 0 raises
            message, info = Message("stop"), {}
        message = _broadcast(message, world_size)
        if message.kind == "abort":
            return
        if message.kind == "stop":
            if unsaved is not None:
                _checkpoint(worker, unsaved, worker.full_weights(), run_dir)
            if failure is not None:
                raise failure
            return
        record = {"iteration": message.iteration, "prompt_cursor": message.prompt_cursor, **info}
        record["perf/queue_wait_seconds"] = queue_wait
        if message.kind == "skip":
            if rank == 0:
                _record_metrics(metrics, record, dropped=True)
                try:
                    ray.get(store.publish.remote(worker.version, None, {**record, "dropped": 1.0}), timeout=timeout)
                except Exception as error:
                    failure = error
            continue
        record.update(worker.learn(message))
        gather_start = time.perf_counter()
        weights = worker.full_weights()
        gather_seconds = time.perf_counter() - gather_start
        record["policy_version"] = worker.version
        unsaved = Message("learn", message.iteration, message.prompt_cursor)
        if _checkpoint_due(config.train, message.iteration):  # before the broadcast, which a dead receiver stalls
            record["perf/checkpoint_seconds"] = _checkpoint(worker, unsaved, weights, run_dir, record)
            unsaved = None
        if rank == 0:
            try:  # a broadcast to a dead rollout worker times out: the next turn stops every rank, which save
                sync_start = time.perf_counter()
                weights_ref = _share_weights(weights, worker.version, message.iteration, sender, store, config.train)
                record["perf/weight_sync_seconds"] = gather_seconds + time.perf_counter() - sync_start
                _record_metrics(metrics, record, dropped=False)
                ray.get(store.publish.remote(worker.version, weights_ref, record), timeout=timeout)
            except Exception as error:
                if sender is not None and sender.stuck:
                    raise StuckBroadcast(message.iteration, saved=unsaved is None) from error
                failure = error


class StuckBroadcast(RuntimeError):
    """A weight broadcast timed out with its NCCL call still on the GPU. Ray's NCCL stream is a blocking one, so
    every later GPU call of this process (the stop message's broadcast, the checkpoint's gathers) would queue behind
    it: rank 0 stops at once, without the stop-time checkpoint, and Ray Train then stops the other ranks."""

    def __init__(self, iteration: int, saved: bool):
        checkpoint = "its checkpoint written before the broadcast" if saved else "without checkpointing it"
        super().__init__(
            f"learner rank 0 stops after iteration {iteration}, {checkpoint}: its weight broadcast is stuck on the "
            "GPU, and every GPU call would wait behind it; a resume goes on from the last checkpoint "
            "(train.checkpoint_every)"
        )


def _share_weights(
    weights: dict[str, torch.Tensor],
    version: int,
    iteration: int,
    sender: WeightSender | None,
    store: ActorHandle,
    train: TrainConfig,
) -> list[ObjectRef] | None:
    """Rank 0: the new weights for the rollout workers and the driver; returns the object-store reference to
    publish with the record. Collective: announce the version (the driver then starts every rollout worker's
    receive; the broadcast waits for them all), broadcast, and put the weights only if the driver needs them."""
    if sender is None:
        return [ray.put(weights)]
    announce = {"iteration": iteration, "broadcast": 1.0}
    ray.get(store.publish.remote(version, None, announce), timeout=sender.group.timeout_s)
    sender.broadcast(version, weights)
    return [ray.put(weights)] if preview_due(train, iteration) else None


def _record_metrics(metrics: RunMetrics, record: dict[str, Any], dropped: bool) -> None:
    """Rank 0: the dashboard metrics of one queue item (actors/metrics.py). An out-of-order item is dropped
    unfetched, so its record has no staleness."""
    if "sync/staleness" in record:
        metrics.record("maskfocus_staleness", record["sync/staleness"])
    if dropped:
        metrics.record("maskfocus_dropped_stale", 1)
        return
    metrics.record("maskfocus_policy_version", record["policy_version"])
    metrics.record("maskfocus_learner_step_seconds", record["perf/learner_seconds"])
    metrics.record("maskfocus_weight_sync_seconds", record["perf/weight_sync_seconds"], stage="publish")
    for name, key in (
        ("maskfocus_loss", "loss/total"),
        ("maskfocus_kl", "loss/kl"),
        ("maskfocus_behaviour_log_ratio", "loss/behaviour_abs_log_ratio"),  # stale batches, with the correction on
    ):
        if key in record and math.isfinite(record[key]):
            metrics.record(name, record[key])


def preview_due(train: TrainConfig, iteration: int) -> bool:
    """A preview image is due after this iteration's update (a rollout worker draws it with the newest weights)."""
    return iteration % train.image_every == 0 or iteration == train.num_iterations - 1


def _checkpoint_due(train: TrainConfig, iteration: int) -> bool:
    return (iteration + 1) % train.checkpoint_every == 0 or iteration == train.num_iterations - 1


def _checkpoint(
    worker: LearnerWorker, message: Message, weights: dict[str, torch.Tensor], run_dir: Path, record: dict | None = None
) -> float:
    """Collective: the checkpoint after `message`'s iteration, reported to Ray Train; returns its seconds."""
    start = time.perf_counter()
    optimizer_state = full_optimizer_state(worker.module, worker.updater.optimizer)
    folder = None
    if worker.rank == 0:
        state = {
            "prompt_cursor": message.prompt_cursor,
            "num_updates": worker.updater.num_updates,
            "policy_version": worker.version,
            "seed": worker.config.seed,
        }
        keep = worker.config.train.keep_checkpoints
        folder = write_checkpoint(run_dir, message.iteration, weights, optimizer_state, state, keep)
    loss = (record or {}).get("loss/total", 0.0)
    report_to_ray_train(folder, {"iteration": message.iteration, "policy_version": worker.version, "loss/total": loss})
    return time.perf_counter() - start
