"""The Ray Train learner group: 2 FSDP2 workers on gloo equal one in-process update, also on a stale batch with
its behaviour weights, and drop batches too stale or queued behind a dropped one; what a learner worker is built
from (the blocks it shards, the rollouts' T, a resumed run's weights and learning-rate schedule); each rank learns
from the batch on its own device; the process group's timeouts (tests/learner/test_loop.py: the loop alone)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from ray_fixture import RAY_TIMEOUT_S, next_update, tiny_config

from maskfocus.actors.reward_worker import RewardWorker
from maskfocus.actors.rollout_worker import RolloutWorker
from maskfocus.learner.checkpoint import RunState
from maskfocus.learner.group import LearnerGroup
from maskfocus.learner.loop import QueuedBatch
from maskfocus.learner.weight_store import WeightStore
from maskfocus.models.amused import AmusedGenerator
from maskfocus.sampling import seeded_generator
from maskfocus.trainer import LEARN, PromptStream
from maskfocus.update import PolicyUpdater

COMPILE_TIMEOUT_S = 480.0
"""The compiled variant's wait for its first update, while both ranks compile (the 120 s of RAY_TIMEOUT_S once
proved too short with inductor and an empty TORCHINDUCTOR_CACHE_DIR)."""


def unsharded_worker(config, monkeypatch, captured: dict):
    """A LearnerWorker built in this process, its `wrap` and `shard_reference` replaced by ones that record what
    they were given (the sharding itself needs a process group: tests/learner/test_parallelize.py)."""
    from maskfocus.learner import loop

    def fake_wrap(module, strategy, blocks):
        captured.update(strategy=strategy, blocks=list(blocks))
        return module

    def fake_shard_reference(reference, policy, strategy, blocks):
        captured.update(reference_blocks=list(blocks), reference_strategy=strategy)
        return reference

    monkeypatch.setattr(loop, "wrap", fake_wrap)
    monkeypatch.setattr(loop, "shard_reference", fake_shard_reference)
    return loop.LearnerWorker(config, RunState(), 0, 1, torch.device("cpu"))


def test_the_learner_shards_each_block_the_adapter_names(random_model, tmp_path, monkeypatch):
    """FSDP2 gathers one shard unit at a time: the learner shards the blocks the adapter lists (for Meissonic its
    dual- and single-stream blocks, tests/models/test_meissonic.py), not whatever one ModuleList a name guess finds."""
    captured: dict = {}
    worker = unsharded_worker(tiny_config(random_model, tmp_path), monkeypatch, captured)
    transformer = worker.model.transformer
    assert captured["strategy"] == captured["reference_strategy"] == "fsdp"
    assert captured["blocks"] == [transformer.down_block, *transformer.transformer_layers, transformer.up_block]
    assert captured["reference_blocks"] == captured["blocks"]  # the reference is sharded as the policy is


def test_both_learners_score_tokens_under_the_rollouts_sampling_temperature(random_model, tmp_path, monkeypatch):
    """The Ray learner's updater and the in-process trainer's take sampler.temperature (tests/test_update.py checks
    what the updater does with it)."""
    import maskfocus.trainer as trainer

    config = tiny_config(random_model, tmp_path, sampler={"temperature": 0.8})
    assert unsharded_worker(config, monkeypatch, {}).updater.temperature == 0.8
    made = []

    class Kept(PolicyUpdater):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)
            raise RuntimeError("made: stop here")

    monkeypatch.setattr(trainer, "PolicyUpdater", Kept)
    with pytest.raises(RuntimeError, match="made: stop here"):
        trainer.train_local(config, tmp_path / "local", show_progress=False)
    assert [updater.temperature for updater in made] == [0.8]


def test_a_resumed_learner_goes_on_with_the_checkpoints_weights_and_learning_rate_schedule(
    random_model, tmp_path, monkeypatch
):
    """The schedule's place comes from the checkpoint's num_updates (a resume with a decaying rate once restarted the
    decay at the peak, and nothing checked it: the Ray resume test holds the rate constant)."""
    from maskfocus.learner import loop
    from maskfocus.learner.checkpoint import full_optimizer_state, write_checkpoint
    from maskfocus.run_io import plain_state_dict
    from maskfocus.update import lr_factor

    config = tiny_config(random_model, tmp_path, train={"num_iterations": 10}, optim={"final_lr_fraction": 0.1})
    first = unsharded_worker(config, monkeypatch, {})
    for parameter in first.module.parameters():  # one optimizer step: its state is saved whole and read back
        parameter.grad = torch.full_like(parameter, 0.01)
    first.updater.optimizer.step()
    weights = plain_state_dict(first.module)
    state = {"prompt_cursor": 10, "num_updates": 10, "policy_version": 5, "seed": config.seed}
    optimizer_state = full_optimizer_state(first.module, first.updater.optimizer)
    folder = write_checkpoint(tmp_path, 4, weights, optimizer_state, state)
    start = RunState(iteration=5, prompt_cursor=10, policy_version=5, num_updates=10, checkpoint=str(folder))
    resumed = loop.LearnerWorker(config, start, 0, 1, torch.device("cpu"))
    assert (resumed.version, resumed.next_iteration, resumed.updater.num_updates) == (5, 5, 10)
    total = 10 * config.selection.num_steps  # K optimizer steps per iteration (update: per_step)
    expected_lr = config.optim.learning_rate * lr_factor(10, total, 0.1)
    assert resumed.updater.optimizer.param_groups[0]["lr"] == pytest.approx(expected_lr)
    assert expected_lr < 0.95 * config.optim.learning_rate
    loaded = resumed.module.state_dict()
    assert all(torch.equal(loaded[name], value) for name, value in weights.items())
    saved_state, resumed_state = first.updater.optimizer.state, resumed.updater.optimizer.state
    pairs = zip(first.module.parameters(), resumed.module.parameters(), strict=True)
    assert all(torch.equal(saved_state[a]["exp_avg"], resumed_state[b]["exp_avg"]) for a, b in pairs)


def test_the_ray_learner_is_given_the_rollouts_T(random_model, tmp_path, monkeypatch):
    """As in-process (tests/test_trainer.py): Meissonic's timestep needs the T that sampled each state."""
    config = tiny_config(random_model, tmp_path, rollout={"num_steps": 3})
    assert unsharded_worker(config, monkeypatch, {}).updater.num_sampling_steps == 3 != config.sampler.num_steps


@pytest.mark.parametrize(
    ("strategy", "second_group_valid", "compile_backend"),
    # second group invalid: rank 1's shard has no loss token, and it still joins FSDP2's collectives;
    # compiled: each rank runs its forwards and backwards through torch.compile over its FSDP2-sharded module, also with
    # version 0's shards swapped in. The two are tested together (the eager variant took 26-33 s on 2 cores, most of it
    # the learner group's start-up). The backend is aot_eager: dynamo and AOTAutograd trace the same graphs as with
    # inductor, whose code generation would add ~120 s here (both ranks compile the three graphs cold at once: 150 s
    # against 28 s for the eager variant, 2026-12-05). Inductor's numerics are checked against eager in
    # tests/test_update.py (the learner's, on the toy generator), tests/learner/test_parallelize.py (the same over an
    # FSDP2-sharded module, one rank) and tests/test_compiled.py (the sampler's, on the shipped model). DDP: its
    # replicas' averaged update, stale-batch swap, checkpoint and published weights over two ranks (about 30 s).
    [("fsdp", True, None), ("fsdp", False, "aot_eager"), ("ddp", True, None)],
)
def test_two_workers_on_gloo_equal_one_in_process_update_and_drop_stale_batches(
    ray_session, random_model, tmp_path, one_thread, strategy, second_group_valid, compile_backend
):
    ray = ray_session
    config = tiny_config(
        random_model,
        tmp_path,
        ray={"num_learner_workers": 2, "learner_cpus": 0.5, "learner_strategy": strategy, "max_staleness": 1},
        train={
            "compile_learner": compile_backend is not None,
            "learner_compile_backend": compile_backend or "inductor",
        },
        grpo={"behaviour_weight_cap": 1.02},
    )
    metadata = PromptStream(config.seed, config.rollout.tags).take(2)
    batch = RewardWorker(config).score(RolloutWorker(config).sample(metadata, 0))
    if not second_group_valid:
        batch.valid_B[config.rollout.group_size :] = False
    assert batch.advantages_B[batch.valid_B].abs().sum() > 0  # the random CLIP reward varies: a gradient
    model = AmusedGenerator.from_folder(config.model.path)
    num_steps = config.sampler.num_steps
    updater = PolicyUpdater(model, config.grpo, config.optim, num_steps, total_updates=6, max_staleness=1)
    expected = updater.update(batch, seeded_generator(config.seed, 0, LEARN), version=0)
    local = {name: value.clone() for name, value in model.transformer.state_dict().items()}
    # Iteration 1 learns the same rollouts as if sampled by version 0 while the learner is at 1: stale by one, so
    # each rank swaps its shards of version 0 in for the behaviour forwards (and must reshard around them).
    stale_by_one = dataclasses.replace(batch, iteration=1)
    expected_stale = updater.update(stale_by_one, seeded_generator(config.seed, 1, LEARN), version=1)
    assert expected_stale["loss/behaviour_abs_log_ratio"] > 0

    from ray.util.queue import Queue

    batches = Queue(maxsize=2, actor_options={"num_cpus": 0})
    store = ray.remote(WeightStore).options(num_cpus=0).remote()
    group = LearnerGroup(config, tmp_path, RunState(), batches, store)
    failure = group.trainer.run_config.failure_config  # a Ray Train rerun would restart from RunState() above
    assert (failure.max_failures, failure.max_preemption_failures, failure.controller_failure_limit) == (0, 0, 0)
    group.start()
    try:
        version, weights, record = next_update(ray, store)
        assert record == {"ready": 1.0} and version == 0
        stale = batch.shard(0, 1)
        stale.policy_version = -2  # two versions behind the learner's 0, with max_staleness 1
        batches.put(QueuedBatch(0, 2, [ray.put(stale)]), timeout=RAY_TIMEOUT_S)
        version, weights, record = next_update(ray, store)
        assert record["dropped"] == 1.0 and record["sync/staleness"] == 2.0 and weights is None and version == 0
        # Iteration 1, queued behind the dropped 0, is dropped unfetched too (it waits for 0's redo).
        batches.put(QueuedBatch(1, 4, [ray.put(stale_by_one)]), timeout=RAY_TIMEOUT_S)
        batches.put(QueuedBatch(0, 2, [ray.put(batch)]), timeout=RAY_TIMEOUT_S)
        version, weights, record = next_update(ray, store)
        assert (record["dropped"], record["sync/out_of_order"], record["iteration"]) == (1.0, 1.0, 1)
        assert "sync/staleness" not in record and weights is None and version == 0
        version, weights, record = next_update(ray, store, COMPILE_TIMEOUT_S if compile_backend else RAY_TIMEOUT_S)
        assert version == 1 and record["policy_version"] == 1 and record["sync/staleness"] == 0.0
        for key in ("loss/total", "loss/policy", "loss/kl", "loss/grad_norm"):
            assert record[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
        published = ray.get(weights[0], timeout=RAY_TIMEOUT_S)
        assert published.keys() == local.keys()
        worst = max((published[k] - local[k]).abs().max().item() for k in local)
        assert worst < 0.1 * config.optim.learning_rate  # Adam's first steps move each weight by ~lr
        batches.put(QueuedBatch(1, 4, [ray.put(stale_by_one)]), timeout=RAY_TIMEOUT_S)
        version, weights, record = next_update(ray, store)
        assert version == 2 and record["sync/staleness"] == 1.0 and record["sync/behaviour_missing"] == 0.0
        for key in ("loss/total", "loss/grad_norm", "loss/behaviour_weight_mean", "loss/behaviour_abs_log_ratio"):
            assert record[key] == pytest.approx(expected_stale[key], rel=1e-4, abs=1e-6), key
        batches.put(None, timeout=RAY_TIMEOUT_S)
        group.join(RAY_TIMEOUT_S)
        assert not group.alive and group.error is None
        # Stopped before the run's last iteration: the learner kept iteration 1 in a checkpoint to resume from.
        state = json.loads((tmp_path / "checkpoints" / "iter_000001" / "state.json").read_text())
        assert (state["policy_version"], state["prompt_cursor"], state["num_updates"]) == (2, 4, 4)
    finally:
        batches.shutdown()
        ray.kill(store)


def test_a_learner_rank_learns_from_the_batch_moved_to_its_own_device(monkeypatch):
    """Batches arrive on the CPU (rank 0 broadcasts them to the others); rank r's module is on cuda:r. The meta
    device stands in for a GPU here."""
    import torch

    from maskfocus.config import default_run_config
    from maskfocus.learner import loop
    from maskfocus.types import TrainBatch

    devices = {}

    class Updater:
        def update_shard(self, batch, generator, count_tokens, version):
            devices.update({k: v.device.type for k, v in vars(batch).items() if isinstance(v, torch.Tensor)})
            return {"loss/total": 0.0}

    monkeypatch.setattr(loop, "seeded_generator", lambda *keys, device: None)  # a meta device has no generator
    worker = loop.LearnerWorker.__new__(loop.LearnerWorker)  # what learn() touches
    worker.config, worker.device, worker.world_size, worker.version = default_run_config(), torch.device("meta"), 1, 0
    worker.updater, worker.count_tokens = Updater(), None
    rows = torch.tensor([[0], [1]])
    batch = TrainBatch(
        ["a", "b"],
        torch.zeros(2, 4, dtype=torch.long),
        rows,
        rows + 2,
        None,
        None,
        torch.ones(2),
        torch.ones(2, dtype=torch.bool),
        policy_version=0,
        iteration=0,
    )
    assert worker.learn(loop.Message("learn", 0, 2, batch)) == {"loss/total": 0.0}
    assert devices == dict.fromkeys(["tokens_BL", "steps_BK", "num_masked_BK", "advantages_B", "valid_B"], "meta")
    assert worker.version == 1


def test_a_learner_rank_that_cannot_see_the_run_folder_stops_at_once_and_says_why(tmp_path):
    """On a cluster without a shared disk the learner's node lacks the folder the driver made on the head node;
    its checkpoints would be written where neither the driver nor --resume can read them."""
    from maskfocus.learner.loop import check_run_folder

    check_run_folder(tmp_path, rank=0)  # the driver's folder, seen: no error
    with pytest.raises(RuntimeError, match=r"learner rank 1 on host .* cannot see the run folder .*train\.out_dir"):
        check_run_folder(tmp_path / "made_on_another_node", rank=1)


def test_fsdp_without_blocks_is_refused():
    from maskfocus.learner.parallelize import wrap

    with pytest.raises(ValueError, match="FSDP2 needs the model's repeated blocks"):
        wrap(torch.nn.Linear(2, 2), "fsdp", [])


def test_the_other_ranks_collective_timeout_outlasts_rank_0s_wait_for_a_batch():
    """Ranks 1.. wait for rank 0's message in a broadcast while rank 0 waits up to ray.timeout_s for a batch; with
    Ray Train's default (1800 s, the GPU configs' ray.timeout_s) they timed out first and could not join the
    checkpoint of a stalled run's last learned iteration."""
    from maskfocus.config import RayConfig
    from maskfocus.learner.group import torch_config

    for timeout in (3.0, 600.0, 1800.0):
        assert torch_config(RayConfig(timeout_s=timeout)).timeout_s >= 2 * timeout + 600


def test_ray_trains_report_barrier_times_out_with_the_process_groups_collectives(monkeypatch):
    """Unset, RAY_TRAIN_COLLECTIVE_TIMEOUT_S lets `ray.train.report` (every checkpoint) wait forever for a rank stuck
    on a hung disk; a value the user set is kept."""
    import os

    from maskfocus.config import RayConfig
    from maskfocus.learner import group

    monkeypatch.delenv(group.REPORT_BARRIER_ENV, raising=False)
    monkeypatch.setattr(group, "USER_REPORT_BARRIER_S", None)
    group.bound_report_barrier(RayConfig(timeout_s=100.0))
    assert os.environ[group.REPORT_BARRIER_ENV] == "800"  # 2 x ray.timeout_s + 600, as the process group's
    monkeypatch.setattr(group, "USER_REPORT_BARRIER_S", "42")
    monkeypatch.setenv(group.REPORT_BARRIER_ENV, "42")
    group.bound_report_barrier(RayConfig(timeout_s=100.0))
    assert os.environ[group.REPORT_BARRIER_ENV] == "42"
