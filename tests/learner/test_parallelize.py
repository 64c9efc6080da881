"""FSDP2 sharding in one process (a one-rank gloo group): the learner's inductor-compiled update over a sharded
module equals the eager update of the plain module (tests/learner/test_learner_group.py runs two ranks on Ray,
with the aot_eager backend); DDP's gradient averaging over two spawned gloo ranks."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from ray_fixture import free_port
from support import ToyGenerator, make_batch

from maskfocus.config import GRPOConfig, OptimConfig
from maskfocus.learner.parallelize import shard_reference, wrap
from maskfocus.update import PolicyUpdater, frozen_copy


class TwoBlockToy(ToyGenerator):
    """ToyGenerator whose transformer is two linear blocks (FSDP2 shards each, then the root)."""

    def __init__(self):
        super().__init__()
        single = self.transformer
        hidden = 32
        generator = torch.Generator().manual_seed(1)
        self.transformer = torch.nn.Sequential(
            torch.nn.Linear(single.in_features, hidden, bias=False), torch.nn.Linear(hidden, single.out_features)
        )
        with torch.no_grad():
            for layer in self.transformer:
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) / layer.in_features**0.5)
            self.transformer[1].bias.zero_()


@pytest.fixture
def one_rank_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", world_size=1, rank=0)
    try:
        yield
    finally:
        dist.destroy_process_group()


def updated_weights(
    model: TwoBlockToy, compile: bool, reference: torch.nn.Module | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Two updates (the second on a smaller batch: the padded compiled kernels); the full weights and metrics."""
    grpo, optim = GRPOConfig(beta=0.1), OptimConfig(learning_rate=1e-2)
    updater = PolicyUpdater(model, grpo, optim, 6, 10, module=model.transformer, reference=reference, compile=compile)
    updater.update(make_batch(model), torch.Generator().manual_seed(1))
    metrics = updater.update(make_batch(model, num_samples=4, seed=5), torch.Generator().manual_seed(2))
    if compile:  # the forwards ran through inductor's kernels, the smaller batch padded onto the first one's
        assert updater.policy_forward.batch_sizes == [8] and updater.reference_forward.batch_sizes == [8]
    weights = model.transformer.state_dict().items()  # FSDP2's are DTensors: gathered to full tensors
    return {name: getattr(value, "full_tensor", value.detach)().clone() for name, value in weights}, metrics


def test_the_compiled_update_of_an_fsdp2_sharded_module_equals_the_eager_unsharded_one(one_rank_group):
    """With the reference sharded as the policy is: the KL of beta 0.1 equals the unsharded one's."""
    eager_weights, eager_metrics = updated_weights(TwoBlockToy(), compile=False)
    sharded = TwoBlockToy()
    reference = frozen_copy(sharded.transformer)  # made before sharding, and sharded like it, as the learner does
    reference = shard_reference(reference, sharded.transformer, "fsdp", list(sharded.transformer))
    wrap(sharded.transformer, "fsdp", list(sharded.transformer))
    for module in (sharded.transformer, reference):  # each rank holds its share of the reference too
        assert all(type(p).__name__ == "DTensor" for p in module.parameters())
    assert not any(p.requires_grad for p in reference.parameters())
    weights, metrics = updated_weights(sharded, compile=True, reference=reference)
    assert weights.keys() == eager_weights.keys()
    for name, value in weights.items():
        torch.testing.assert_close(value, eager_weights[name], rtol=1e-5, atol=1e-6)
    initial = TwoBlockToy().transformer.state_dict()
    assert any(not torch.equal(value, initial[name]) for name, value in weights.items())  # the updates moved them
    for key in ("loss/policy", "loss/kl", "loss/grad_norm"):
        assert metrics[key] == pytest.approx(eager_metrics[key], rel=1e-4, abs=1e-6)


def test_only_fsdp2s_view_output_warning_of_the_uvit_blocks_is_quieted():
    """It came three times an iteration (about 750 in the README's run) for a view no op changes in place."""
    import warnings

    from maskfocus.learner.parallelize import quiet_view_output_warning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_view_output_warning()
        warnings.warn("FSDP2-wrapped module (FSDPUVitBlock) returned a view tensor.", UserWarning, stacklevel=1)
        warnings.warn("FSDP2-wrapped module (OtherBlock) returned a view tensor.", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["FSDP2-wrapped module (OtherBlock) returned a view tensor."]


def test_the_reference_is_left_whole_under_ddp_and_none_stays_none():
    """DDP keeps full replicas of the policy on every rank anyway; beta 0 makes no reference."""
    model = TwoBlockToy()
    reference = frozen_copy(model.transformer)
    assert shard_reference(reference, model.transformer, "ddp", list(model.transformer)) is reference
    assert all(type(p) is torch.nn.Parameter for p in reference.parameters())
    assert shard_reference(None, model.transformer, "fsdp", list(model.transformer)) is None


def _ddp_gradients(rank: int, port: int, out: str) -> None:
    """One rank of a two-rank gloo group: the gradients of a DDP-wrapped linear layer on this rank's input."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    try:
        torch.manual_seed(0)
        module = wrap(torch.nn.Linear(3, 2), "ddp", [])
        module(torch.full((1, 3), float(rank + 1))).square().sum().backward()
        torch.save([parameter.grad for parameter in module.parameters()], f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_averages_the_gradients_of_two_ranks(tmp_path):
    """The ddp strategy never ran with two ranks: a wrap that returned the bare module (each rank stepping on its own
    gradients, the replicas drifting apart without a word) passed every test."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_gradients, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    gradients = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    torch.manual_seed(0)
    alone = torch.nn.Linear(3, 2)
    expected = []
    for rank in range(2):
        alone.zero_grad()
        alone(torch.full((1, 3), float(rank + 1))).square().sum().backward()
        expected.append([parameter.grad.clone() for parameter in alone.parameters()])
    for index in range(2):
        mean = (expected[0][index] + expected[1][index]) / 2
        assert not torch.allclose(expected[0][index], expected[1][index])  # the ranks' own gradients differ
        for rank in range(2):
            torch.testing.assert_close(gradients[rank][index], mean)
