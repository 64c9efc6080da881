"""Rollout and reward workers: in-process and as Ray actor pools; the bounded batch queue."""

from __future__ import annotations

import queue as queue_lib
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import ray
import torch
from ray_fixture import RAY_TIMEOUT_S, tiny_config

from maskfocus.actors.pool import WorkerPool, make_actors
from maskfocus.actors.reward_worker import RewardWorker
from maskfocus.actors.rollout_worker import RolloutWorker
from maskfocus.config import RunConfig
from maskfocus.learner.weight_transport import WeightGroup, WeightSender
from maskfocus.trainer import PromptStream


@pytest.fixture
def config(random_model, tmp_path, one_thread):
    return tiny_config(random_model, tmp_path)


def test_rollout_is_tagged_with_the_loaded_weight_version_and_scored_into_a_batch(config):
    metadata = PromptStream(config.seed, config.rollout.tags).take(2)
    worker, scorer = RolloutWorker(config), RewardWorker(config)
    base = worker.sample(metadata, iteration=5)
    assert base.policy_version == 0 and base.iteration == 5
    new_weights = {k: v + 0.05 * torch.randn_like(v) for k, v in worker.model.transformer.state_dict().items()}
    worker.load_weights(3, new_weights)
    moved = worker.sample(metadata, iteration=5)
    assert moved.policy_version == 3
    assert not torch.equal(base.tokens_BL, moved.tokens_BL)
    batch = scorer.score(moved)
    assert len(batch) == 4 and batch.policy_version == 3 and batch.iteration == 5
    stats, same = scorer.score_split(moved)
    assert stats["reward/mean"] == batch.stats["reward/mean"]
    assert stats["policy_version"] == 3  # the weights it was sampled with, not its iteration (5); the driver tells
    # a restarted worker's rollout by sample_split's version, below
    torch.testing.assert_close(same.advantages_B, batch.advantages_B)
    version, again = worker.sample_split(metadata, iteration=5)  # the version apart, for the driver
    assert version == 3 and torch.equal(again.tokens_BL, moved.tokens_BL)
    assert {"maskfocus_rollout_images", "maskfocus_weight_sync_seconds"} <= set(worker.metrics.made)
    assert "maskfocus_reward_latency_seconds" in scorer.metrics.made  # dashboard metrics recorded where measured


def test_rollouts_sample_with_the_rollout_steps_and_score_steps_of_that_trajectory(random_model, tmp_path, one_thread):
    config = tiny_config(random_model, tmp_path, rollout={"num_steps": 3})  # sampler.num_steps stays 4
    worker = RolloutWorker(config)
    trajectory = worker.sample(PromptStream(config.seed, config.rollout.tags).take(2), iteration=0)
    assert trajectory.masks_BTL.shape[1] == 3 and trajectory.entropy_BT.shape[1] == 3
    assert not (trajectory.tokens_BL == worker.model.mask_token_id).any()
    batch = RewardWorker(config).score(trajectory)
    assert int(batch.steps_BK.max()) <= 2 and "select/step_03" not in batch.stats


def test_actor_pool_workers_sample_the_same_batch_for_an_iteration_and_get_published_weights(ray_session, config):
    ray = ray_session
    pool = WorkerPool(make_actors(RolloutWorker, 2, config, num_cpus=0.25, max_restarts=1))
    try:
        metadata = PromptStream(config.seed, config.rollout.tags).take(2)
        first, second = ray.get([a.sample.remote(metadata, 1) for a in pool.actors], timeout=RAY_TIMEOUT_S)
        torch.testing.assert_close(first.tokens_BL, second.tokens_BL)
        weights = {k: v + 0.05 for k, v in RolloutWorker(config).model.transformer.state_dict().items()}
        ref = ray.put(weights)
        ray.get(pool.actors[1].load_weights.remote(7, ref), timeout=RAY_TIMEOUT_S)
        assert ray.get([a.version.remote() for a in pool.actors], timeout=RAY_TIMEOUT_S) == [0, 7]
        moved = ray.get(pool.actors[1].sample.remote(metadata, 1), timeout=RAY_TIMEOUT_S)
        assert moved.policy_version == 7 and not torch.equal(moved.tokens_BL, first.tokens_BL)
        index = pool.acquire()
        assert pool.acquire() is not None and pool.acquire() is None
        pool.release(index)
        assert pool.acquire() == index
    finally:
        pool.kill()


def test_rollout_workers_sample_with_broadcast_weights_as_with_loaded_ones(ray_session, config):
    """ray.weight_transport: collective, over gloo between plain actors: each receive is queued before the rollout
    that needs it (as the driver does), and the rollout equals one after load_weights of the same weights."""
    ray = ray_session
    group = WeightGroup(f"test-rollout-{uuid.uuid4().hex[:8]}", 3, "gloo", config.model.dtype, timeout_s=RAY_TIMEOUT_S)
    pool = WorkerPool(make_actors(RolloutWorker, 2, config, num_cpus=0.25))
    sender = None
    try:
        ray.get([actor.version.remote() for actor in pool.actors], timeout=RAY_TIMEOUT_S)  # the models are loaded
        sender = ray.remote(WeightSender).options(num_cpus=0).remote(group)  # rank 0 joins in its constructor
        joins = [actor.join_weight_group.remote(group, rank) for rank, actor in enumerate(pool.actors, 1)]
        ray.get(joins, timeout=RAY_TIMEOUT_S)
        local = RolloutWorker(config)
        weights = {k: v + 0.05 * torch.randn_like(v) for k, v in local.model.transformer.state_dict().items()}
        metadata = PromptStream(config.seed, config.rollout.tags).take(2)
        receives = [actor.receive_weights.remote(4) for actor in pool.actors]
        samples = [actor.sample.remote(metadata, 1) for actor in pool.actors]
        nbytes = ray.get(sender.broadcast.remote(4, weights), timeout=RAY_TIMEOUT_S)
        assert nbytes == sum(value.numel() * value.element_size() for value in weights.values())
        assert all(seconds > 0 for seconds in ray.get(receives, timeout=RAY_TIMEOUT_S))
        local.load_weights(4, weights)
        expected = local.sample(metadata, 1)
        for trajectory in ray.get(samples, timeout=RAY_TIMEOUT_S):
            assert trajectory.policy_version == 4
            torch.testing.assert_close(trajectory.tokens_BL, expected.tokens_BL)
    finally:
        pool.kill()
        if sender is not None:
            ray.kill(sender)


def test_queue_applies_backpressure_when_full_and_reports_its_depth(ray_session, monkeypatch):
    """The driver's and the learner's calls on the batch queue (actors/batch_queue.py): Full and Empty as the plain
    Queue raises them, and a queue actor that does not answer is a GetTimeoutError, not a hang."""
    from ray.exceptions import GetTimeoutError
    from ray.util.queue import Queue

    from maskfocus.actors import batch_queue
    from maskfocus.actors.batch_queue import get_within, put_now, put_within, queue_size

    batches = Queue(maxsize=2, actor_options={"num_cpus": 0})
    try:
        put_within(batches, "a", RAY_TIMEOUT_S)
        put_now(batches, "b", RAY_TIMEOUT_S)
        assert queue_size(batches, RAY_TIMEOUT_S) == 2
        with pytest.raises(queue_lib.Full):
            put_now(batches, "c", RAY_TIMEOUT_S)
        with pytest.raises(queue_lib.Full):
            put_within(batches, "c", 0.2)
        assert get_within(batches, RAY_TIMEOUT_S) == "a"
        put_within(batches, "c", RAY_TIMEOUT_S)
        assert [get_within(batches, RAY_TIMEOUT_S) for _ in range(2)] == ["b", "c"]
        with pytest.raises(queue_lib.Empty):
            get_within(batches, 0.2)
    finally:
        batches.shutdown()

    @ray.remote(num_cpus=0)
    class StuckQueueActor:
        def qsize(self) -> int:
            time.sleep(30)
            return 0

        def put_nowait(self, item) -> None:
            time.sleep(30)

        def put(self, item, timeout: float) -> None:
            time.sleep(30)

        def get(self, timeout: float) -> None:
            time.sleep(30)

    stuck = StuckQueueActor.remote()
    monkeypatch.setattr(batch_queue, "REPLY_MARGIN_S", 0.3)  # its 30 s, shortened
    try:
        start = time.perf_counter()
        with pytest.raises(GetTimeoutError):
            queue_size(SimpleNamespace(actor=stuck), 0.5)
        with pytest.raises(GetTimeoutError):
            put_now(SimpleNamespace(actor=stuck), "d", 0.5)
        with pytest.raises(GetTimeoutError):  # the waiting calls: their own wait plus the margin, not forever
            put_within(SimpleNamespace(actor=stuck), "d", 0.2)
        with pytest.raises(GetTimeoutError):
            get_within(SimpleNamespace(actor=stuck), 0.2)
        assert time.perf_counter() - start < 20
    finally:
        ray.kill(stuck)


def test_workers_load_the_adapter_of_model_kind_and_set_the_configured_threads(tmp_path, one_thread):
    sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
    from model_folders import write_meissonic_folder

    folder = write_meissonic_folder(tmp_path / "meissonic")
    config = tiny_config(folder, tmp_path, ray={"torch_threads": 1})
    data = config.model_dump()
    data["model"].update(kind="meissonic", trust_checkpoint_code=True, resolution=32)
    data["rewards"] = [{"name": "geneval", "mode": "partial"}]
    config = RunConfig.model_validate(data)
    torch.set_num_threads(2)
    worker, scorer = RolloutWorker(config), RewardWorker(config)
    assert torch.get_num_threads() == 1  # ray.torch_threads applied by the role's start
    assert type(worker.model).__name__ == "MeissonicGenerator"
    assert type(scorer.codec).__name__ == "VQImageCodec"  # the reward role loads the VQ only
    assert scorer.codec.grid_size == worker.model.grid_size == (16, 16)
    metadata = PromptStream(config.seed, config.rollout.tags).take(2)
    batch = scorer.score(worker.sample(metadata, iteration=0))
    assert len(batch) == 4 and batch.policy_version == 0


def test_on_device_moves_every_tensor_of_a_record_and_keeps_the_rest():
    from maskfocus.actors.setup import on_device
    from maskfocus.types import TrainBatch

    batch = TrainBatch(
        ["a red circle"] * 2,
        torch.zeros(2, 4, dtype=torch.long),
        torch.tensor([[0], [1]]),
        torch.tensor([[4], [2]]),
        None,
        None,
        torch.tensor([1.0, -1.0]),
        torch.tensor([True, True]),
        policy_version=3,
        iteration=5,
        stats={"reward/mean": 0.5},
    )
    moved = on_device(batch, torch.device("meta"))
    tensors = {name: value for name, value in vars(moved).items() if isinstance(value, torch.Tensor)}
    assert set(tensors) == {"tokens_BL", "steps_BK", "num_masked_BK", "advantages_B", "valid_B"}
    assert all(
        value.device.type == "meta" and value.shape == getattr(batch, name).shape for name, value in tensors.items()
    )
    assert (moved.masks_BKL, moved.policy_version, moved.iteration, moved.stats) == (None, 3, 5, batch.stats)
    assert batch.tokens_BL.device.type == "cpu"  # the original is left as it was


def test_workers_hand_back_records_on_the_cpu_and_score_on_their_models_device(config, monkeypatch):
    """A CUDA tensor would unpickle onto cuda:0 of the receiving process (a learner rank's module is on cuda:rank) and
    fails to unpickle where there is no GPU: records leave a worker on the CPU, and each role moves what it takes."""
    import maskfocus.actors.reward_worker as reward_module
    import maskfocus.actors.rollout_worker as rollout_module
    from maskfocus.actors.setup import on_device

    moves = []

    def recorded(record, device):
        moves.append((type(record).__name__, str(device)))
        return on_device(record, device)

    monkeypatch.setattr(rollout_module, "on_device", recorded, raising=False)
    monkeypatch.setattr(reward_module, "on_device", recorded, raising=False)
    metadata = PromptStream(config.seed, config.rollout.tags).take(2)
    worker, scorer = RolloutWorker(config), RewardWorker(config)
    batch = scorer.score(worker.sample(metadata, iteration=0))
    assert moves == [("Trajectory", "cpu"), ("Trajectory", str(scorer.codec.device)), ("TrainBatch", "cpu")]
    assert batch.tokens_BL.device.type == "cpu"
