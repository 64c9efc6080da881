"""Rollout and reward workers: in-process and as Ray actor pools; the bounded batch queue."""

from __future__ import annotations

import queue as queue_lib

import pytest
import torch
from ray_fixture import RAY_TIMEOUT_S, tiny_config

from maskfocus.actors.pool import WorkerPool, make_actors
from maskfocus.actors.reward_worker import RewardWorker
from maskfocus.actors.rollout_worker import RolloutWorker
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
    torch.testing.assert_close(same.advantages_B, batch.advantages_B)
    assert {"maskfocus_rollout_images", "maskfocus_weight_sync_seconds"} <= set(worker.metrics.made)
    assert "maskfocus_reward_latency_seconds" in scorer.metrics.made  # dashboard metrics recorded where measured


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


def test_queue_applies_backpressure_when_full_and_reports_its_depth(ray_session):
    from ray.util.queue import Queue

    batches = Queue(maxsize=2, actor_options={"num_cpus": 0})
    try:
        batches.put("a", timeout=RAY_TIMEOUT_S)
        batches.put("b", timeout=RAY_TIMEOUT_S)
        assert batches.qsize() == 2 and batches.full()
        with pytest.raises(queue_lib.Full):
            batches.put("c", block=False)
        with pytest.raises(queue_lib.Full):
            batches.put("c", timeout=0.2)
        assert batches.get(timeout=RAY_TIMEOUT_S) == "a"
        batches.put("c", timeout=RAY_TIMEOUT_S)
        assert [batches.get(timeout=RAY_TIMEOUT_S) for _ in range(2)] == ["b", "c"]
        with pytest.raises(queue_lib.Empty):
            batches.get(timeout=0.2)
    finally:
        batches.shutdown()
