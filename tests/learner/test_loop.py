"""learner/loop.py on its own, with stand-ins for the learner worker and the sender: what rank 0 makes of each queue
item (a batch out of order, lost with its node, too stale or from a newer policy), the ready broadcast, and how a
learner whose batches stop coming, whose weight broadcast fails or whose run diverged stops (tests/learner/
test_learner_group.py runs the learner group itself)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from ray_fixture import RAY_TIMEOUT_S, next_update

from maskfocus.learner.loop import QueuedBatch
from maskfocus.learner.weight_store import WeightStore


def test_a_batch_queued_behind_a_dropped_one_is_dropped_too_and_learned_after_its_redo():
    """With max_staleness 1, iteration 5 may be queued when 4 is dropped as stale; learning 5 first would let a
    checkpoint's iteration and prompt cursor pass the unlearned 4. The learner takes iterations in order only."""
    from maskfocus.config import default_run_config
    from maskfocus.learner.loop import _message

    config = default_run_config({"ray": {"max_staleness": 1}})
    never_fetched = [object()]  # not an ObjectRef: an out-of-order batch is dropped before it is fetched
    message, info = _message(QueuedBatch(5, 40, never_fetched), version=5, config=config, next_iteration=4)
    assert (message.kind, message.iteration, message.prompt_cursor) == ("skip", 5, 40)
    assert info == {"sync/out_of_order": 1.0}
    stop, _ = _message(None, version=5, config=config, next_iteration=4)
    assert stop.kind == "stop"


def test_a_batch_lost_with_its_reward_workers_node_is_dropped_for_the_driver_to_redo(monkeypatch):
    """The batch object lives on the node of the reward worker that scored it; a node that died before the learner
    fetched it raised ObjectLostError out of the learner and ended the run. It is dropped like a stale batch."""
    from ray.exceptions import OwnerDiedError

    from maskfocus.config import default_run_config
    from maskfocus.learner import loop
    from maskfocus.learner.loop import _message

    def lost(ref, timeout):
        raise OwnerDiedError("cd" * 14, None, "")

    monkeypatch.setattr(loop.ray, "get", lost)
    config = default_run_config()
    message, info = _message(QueuedBatch(4, 40, [object()]), version=4, config=config, next_iteration=4)
    assert (message.kind, message.iteration, message.prompt_cursor) == ("skip", 4, 40)
    assert info == {"sync/lost_batch": 1.0}


@pytest.mark.parametrize(("batch_version", "kind"), [(6, "skip"), (5, "learn"), (4, "learn"), (3, "skip")])
def test_a_batch_is_learned_only_within_max_staleness_and_never_from_a_newer_policy(monkeypatch, batch_version, kind):
    """The learner at version 5 with max_staleness 1: versions 4 and 5 are learned, 3 is too stale, and 6 (a version
    the learner has not made: a batch of another run's or a lost resume's weights) is dropped too."""
    from types import SimpleNamespace

    from maskfocus.config import default_run_config
    from maskfocus.learner import loop
    from maskfocus.learner.loop import _message

    monkeypatch.setattr(loop.ray, "get", lambda ref, timeout: SimpleNamespace(policy_version=batch_version, stats={}))
    config = default_run_config({"ray": {"max_staleness": 1}})
    message, info = _message(QueuedBatch(4, 40, [object()]), version=5, config=config, next_iteration=4)
    assert message.kind == kind and info["sync/staleness"] == 5 - batch_version


class FakeSender:
    def __init__(self):
        self.broadcasts: list[int] = []

    def broadcast(self, version, weights):
        self.broadcasts.append(version)


@pytest.mark.parametrize("start_iteration, broadcasts", [(3, [7]), (4, [])])
def test_the_ready_broadcast_is_skipped_when_the_run_is_already_learned_to_its_end(
    ray_session, serving, tmp_path, start_iteration, broadcasts
):
    """Collective transport: rank 0 broadcasts its starting weights after the ready record, and the driver starts
    the receives on that record; resuming a run learned to its end (to evaluate it) starts none, so a broadcast would
    wait for ray.timeout_s and fail the run."""
    from maskfocus.config import default_run_config
    from maskfocus.learner.loop import _serve

    config = default_run_config({"train": {"num_iterations": 4}, "ray": {"timeout_s": RAY_TIMEOUT_S}})
    worker = SimpleNamespace(
        config=config, rank=0, world_size=1, version=7, next_iteration=start_iteration, full_weights=dict
    )
    sender = FakeSender()
    serving.batches.put(None, timeout=RAY_TIMEOUT_S)  # the driver's stop item: nothing to learn
    _serve(worker, sender, serving.batches, serving.store, tmp_path, "run")
    version, _, record = next_update(ray_session, serving.store)
    assert (version, record) == (7, {"ready": 1.0}) and sender.broadcasts == broadcasts


class LearningStub:
    """A LearnerWorker's surface for `_serve`: each learn takes the next iteration and adds a version."""

    def __init__(self, config):
        self.config, self.rank, self.world_size, self.version, self.next_iteration = config, 0, 1, 0, 0

    def full_weights(self) -> dict:
        return {"w": torch.zeros(1)}

    def learn(self, message) -> dict:
        self.version, self.next_iteration = self.version + 1, message.iteration + 1
        return {"perf/learner_seconds": 0.0}


@pytest.fixture(scope="module")
def loop_actors(ray_session):
    """One batch queue and one weight store for the module's learner loops: each is a Ray process, whose start took
    about 5 s apiece on a slow 2-core machine (`serving` empties both before each test)."""
    from ray.util.queue import Queue

    batches = Queue(maxsize=4, actor_options={"num_cpus": 0})
    store = ray_session.remote(WeightStore).options(num_cpus=0).remote()
    try:
        yield batches, store
    finally:
        batches.shutdown()
        ray_session.kill(store)


@pytest.fixture
def serving(ray_session, loop_actors, monkeypatch):
    """The batch queue and weight store a learner loop serves from, empty, with batches of the first iterations
    queued by `queue_learnable(n)`, and the iterations it checkpoints (`saved`)."""
    from maskfocus.learner import loop

    ray = ray_session
    batches, store = loop_actors
    batches.get_nowait_batch(batches.qsize())  # what an earlier test left
    # a wait of 0 s would drain nothing: asyncio.wait_for(get, 0) times out even with a record waiting
    while ray.get(store.next_update.remote(0.1), timeout=RAY_TIMEOUT_S) is not None:
        pass
    saved: list[int] = []
    monkeypatch.setattr(loop, "_checkpoint", lambda worker, message, *rest: saved.append(message.iteration))

    def queue_learnable(count: int) -> None:
        for iteration in range(count):  # each sampled by the version the learner will be at
            batch = ray.put(SimpleNamespace(policy_version=iteration, stats={}))
            batches.put(QueuedBatch(iteration, 4 * (iteration + 1), [batch]), timeout=RAY_TIMEOUT_S)

    return SimpleNamespace(batches=batches, store=store, saved=saved, queue_learnable=queue_learnable)


def test_a_learner_whose_batches_stop_coming_checkpoints_its_last_iteration_before_it_fails(serving, tmp_path):
    """The learner's wait starts before the driver's (at its own record), so it times out first when a rollout
    worker hangs: it used to raise at once and lose every iteration since the last periodic checkpoint."""
    from maskfocus.config import default_run_config
    from maskfocus.learner import loop

    config = default_run_config({"train": {"num_iterations": 10, "checkpoint_every": 50}, "ray": {"timeout_s": 2.0}})
    serving.queue_learnable(1)  # iteration 0, then nothing comes
    with pytest.raises(loop.QueueTimeout, match=r"no TrainBatch arrived for 2 s \(ray.timeout_s\)"):
        loop._serve(LearningStub(config), None, serving.batches, serving.store, tmp_path, "run")
    assert serving.saved == [0]


def test_the_learners_wait_starts_again_on_the_drivers_keep_waiting_item(monkeypatch):
    """A worker restart delays the batch the learner waits for; the driver's KEEP_WAITING items (at the failure and
    when the worker is back) start the learner's timeout again, and the reported wait is the whole of it. Here
    each empty poll takes 0.3 s and the timeout is 0.5 s: without the item the second empty poll times out."""
    import queue as queue_lib
    import time

    from maskfocus.learner import loop

    polls = iter(["empty", loop.KEEP_WAITING, "empty", "batch"])

    def get_within(batches, wait_s):
        if (item := next(polls)) == "empty":
            time.sleep(0.3)
            raise queue_lib.Empty
        return item

    monkeypatch.setattr(loop, "get_within", get_within)
    item, waited = loop._take("the batch queue", 0.5)
    assert item == "batch" and 0.6 <= waited < 5.0
    polls = iter(["empty", "empty", "batch"])
    with pytest.raises(loop.QueueTimeout):
        loop._take("the batch queue", 0.5)


class DeadReceiverSender:
    """A WeightSender whose broadcast of version 2 fails: a rollout worker died (never restarted with collective
    transport). NCCL either reports the dead peer (an error) or waits for it until the group's timeout, which leaves
    its call on the GPU (`stuck`, as WeightSender sets it)."""

    group = SimpleNamespace(timeout_s=RAY_TIMEOUT_S)

    def __init__(self, stuck: bool):
        self.versions: list[int] = []
        self.stuck, self.fails_stuck = False, stuck

    def broadcast(self, version, weights):
        self.versions.append(version)
        if version == 2 and self.fails_stuck:
            self.stuck = True
            raise TimeoutError("weight broadcast of the header (group g, rank 0): not finished after 5 s")
        if version == 2:
            raise RuntimeError("NCCL error: remote process exited or there was a network error")


@pytest.mark.parametrize("queued_after", [1, 0])
def test_a_learner_whose_weight_broadcast_fails_checkpoints_its_last_iteration_before_it_fails(
    serving, tmp_path, queued_after
):
    """A broadcast that failed with an error: rank 0 used to raise at once, losing every iteration since the last
    periodic checkpoint; only a queue timeout saved first. The stop comes at once, whether another batch is queued
    (it is not taken) or none (no wait for one)."""
    import time

    from maskfocus.config import default_run_config
    from maskfocus.learner import loop

    config = default_run_config({"train": {"num_iterations": 10, "checkpoint_every": 50}, "ray": {"timeout_s": 30.0}})
    sender = DeadReceiverSender(stuck=False)
    serving.queue_learnable(2 + queued_after)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="NCCL error: remote process exited"):
        loop._serve(LearningStub(config), sender, serving.batches, serving.store, tmp_path, "run")
    assert time.monotonic() - start < 20.0  # not ray.timeout_s waiting for a batch (which raised QueueTimeout)
    assert sender.versions == [0, 1, 2] and serving.saved == [1]  # learned, its broadcast failed
    assert serving.batches.qsize() == queued_after  # the batch queued after it is left for the redo


@pytest.mark.parametrize(
    ("checkpoint_every", "saved", "said"),
    [(50, [], "without checkpointing it"), (1, [0, 1], "its checkpoint written before the broadcast")],
)
def test_a_learner_whose_weight_broadcast_is_stuck_stops_at_once_without_another_collective(
    serving, tmp_path, monkeypatch, checkpoint_every, saved, said
):
    """A timed-out NCCL broadcast is still on the GPU, and Ray's NCCL stream blocks the default one: the stop
    message's broadcast and the checkpoint's gathers would wait behind it. Rank 0 raises at once instead."""
    from maskfocus.config import default_run_config
    from maskfocus.learner import loop

    collectives: list[object] = []
    monkeypatch.setattr(loop, "_broadcast", lambda message, world_size: collectives.append(message) or message)
    train = {"num_iterations": 10, "checkpoint_every": checkpoint_every}
    config = default_run_config({"train": train, "ray": {"timeout_s": 30.0}})
    sender = DeadReceiverSender(stuck=True)
    serving.queue_learnable(3)
    with pytest.raises(loop.StuckBroadcast, match=f"stops after iteration 1, {said}") as error:
        loop._serve(LearningStub(config), sender, serving.batches, serving.store, tmp_path, "run")
    assert isinstance(error.value.__cause__, TimeoutError)
    assert sender.versions == [0, 1, 2] and serving.saved == saved
    assert [message.kind for message in collectives] == ["learn", "learn"]  # iterations 0 and 1, then no stop


@pytest.mark.parametrize(("last_item", "saved_after"), [(None, [0]), ("abort", [])])
def test_a_diverged_run_stops_its_learner_without_checkpointing_its_weights(serving, tmp_path, last_item, saved_after):
    """The stop item checkpoints the last learned iteration; after a diverged loss the driver sends ABORT instead:
    a checkpoint of non-finite weights pruned the finite ones (train.keep_checkpoints) a restart needs."""
    from maskfocus.config import default_run_config
    from maskfocus.learner import loop

    config = default_run_config({"train": {"num_iterations": 10, "checkpoint_every": 50}})
    serving.queue_learnable(1)
    serving.batches.put(last_item, timeout=RAY_TIMEOUT_S)
    loop._serve(LearningStub(config), None, serving.batches, serving.store, tmp_path, "run")
    assert serving.saved == saved_after
