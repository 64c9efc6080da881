"""The collective weight transport: layout, flatten and unflatten against a slow reference (no Ray), then a real
broadcast over gloo between plain Ray actors (one sender, two receivers), and the driver's refusal on CPU."""

from __future__ import annotations

import sys
import uuid

import pytest
import torch
from ray_fixture import RAY_TIMEOUT_S, tiny_config
from torch import nn

from maskfocus.config import ConfigError
from maskfocus.learner.weight_transport import (
    WIRE_DTYPES,
    WeightGroup,
    WeightReceiver,
    WeightSender,
    flatten,
    unflatten,
    weight_layout,
)


def random_state(seed: int, num_tensors: int) -> dict[str, torch.Tensor]:
    """Tensors of mixed dtypes and shapes (scalars and empty ones too), inserted in a random name order."""
    generator = torch.Generator().manual_seed(seed)
    dtypes = (torch.float32, torch.bfloat16, torch.float16, torch.int64, torch.bool, torch.uint8)
    state = {}
    for index in torch.randperm(num_tensors, generator=generator).tolist():
        dims = torch.randint(0, 4, (1,), generator=generator).item()
        shape = tuple(torch.randint(0, 5, (dims,), generator=generator).tolist())
        dtype = dtypes[index % len(dtypes)]
        values = torch.randn(shape, generator=generator) * 10
        state[f"blocks.{index}.weight"] = values.to(dtype) if dtype.is_floating_point else values.abs().to(dtype)
    return state


def reference_flatten(state: dict[str, torch.Tensor], wire_dtype: torch.dtype | None) -> dict[torch.dtype, list]:
    """Slow and obvious: per wire dtype, every element of every tensor in name order, as Python numbers."""
    values: dict[torch.dtype, list] = {}
    for name in sorted(state):
        tensor = state[name]
        dtype = wire_dtype if wire_dtype is not None and tensor.is_floating_point() else tensor.dtype
        values.setdefault(dtype, []).extend(tensor.to(dtype).reshape(-1).tolist())
    return values


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("wire_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("bucket_bytes", [1, 40, 2**20])
def test_flatten_matches_the_slow_reference_and_unflatten_inverts_it(seed, wire_dtype, bucket_bytes):
    state = random_state(seed, num_tensors=17)
    layout = weight_layout(state, wire_dtype, bucket_bytes)
    buffers = flatten(layout, state)

    flat: dict[torch.dtype, list] = {}
    for bucket, buffer in zip(layout.buckets, buffers, strict=True):
        assert buffer.dtype == bucket.dtype and buffer.dim() == 1
        nbytes = buffer.numel() * buffer.element_size()
        assert nbytes <= bucket_bytes or len(bucket.tensors) == 1, "only a single large tensor may exceed the cap"
        flat.setdefault(bucket.dtype, []).extend(buffer.tolist())
    assert flat == reference_flatten(state, wire_dtype)
    assert [bucket.dtype for bucket in layout.buckets] == sorted(
        (bucket.dtype for bucket in layout.buckets), key=WIRE_DTYPES.index
    )
    assert layout.nbytes == sum(buffer.numel() * buffer.element_size() for buffer in buffers)

    restored = unflatten(layout, buffers)
    assert sorted(restored) == sorted(state)
    for name, tensor in state.items():
        expected = tensor.to(wire_dtype) if wire_dtype is not None and tensor.is_floating_point() else tensor
        assert restored[name].dtype == expected.dtype
        torch.testing.assert_close(restored[name], expected, rtol=0, atol=0)


def test_layout_depends_on_names_shapes_and_dtypes_but_not_on_insertion_order():
    state = random_state(0, num_tensors=8)
    shuffled = dict(reversed(list(state.items())))
    assert weight_layout(shuffled) == weight_layout(state)
    assert weight_layout(shuffled).fingerprint == weight_layout(state).fingerprint
    name = next(name for name, tensor in state.items() if tensor.dtype == torch.float32)
    changes = {
        "renamed": {(f"x.{key}" if key == name else key): value for key, value in state.items()},
        "reshaped": {**state, name: torch.zeros(state[name].numel() + 1)},
        "retyped": {**state, name: state[name].double()},
    }
    for what, changed in changes.items():
        assert weight_layout(changed).fingerprint != weight_layout(state).fingerprint, what
    # the wire dtype is part of the layout: a float32 state and its bfloat16 copy agree when both travel in bfloat16
    bf16 = {key: value.bfloat16() if value.is_floating_point() else value for key, value in state.items()}
    assert weight_layout(bf16, torch.bfloat16).fingerprint == weight_layout(state, torch.bfloat16).fingerprint
    assert weight_layout(bf16).fingerprint != weight_layout(state).fingerprint


def small_module(seed: int, width: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    module = nn.Sequential(nn.Linear(4, width), nn.LayerNorm(width), nn.Linear(width, 3))
    module.register_buffer("counts", torch.arange(5, dtype=torch.int64) * seed)
    return module


class GroupMember:
    """A plain Ray actor with a small module and one end of the weight group."""

    def __init__(self, seed: int):
        torch.set_num_threads(1)
        self.module = small_module(seed)
        self.end: WeightSender | WeightReceiver | None = None

    def join(self, group: WeightGroup, rank: int) -> None:
        self.end = WeightSender(group) if rank == 0 else WeightReceiver(group, rank)

    def broadcast(self, version: int) -> int:
        assert isinstance(self.end, WeightSender)
        return self.end.broadcast(version, self.module.state_dict())

    def receive(self, version: int) -> int:
        assert isinstance(self.end, WeightReceiver)
        return self.end.receive(self.module, expect_version=version)

    def rebuild(self, seed: int, width: int = 8) -> None:
        self.module = small_module(seed, width)

    def state(self) -> dict[str, torch.Tensor]:
        return {key: value.clone() for key, value in self.module.state_dict().items()}


def assert_same_state(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert sorted(left) == sorted(right)
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=0, atol=0)


def test_gloo_broadcast_reaches_every_receiver_and_a_layout_mismatch_fails_clearly(ray_session):  # noqa: F811
    ray = ray_session
    # Ray workers cannot import this test module: ship GroupMember and its helpers by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    actor = ray.remote(GroupMember).options(num_cpus=0)
    sender, first, second = actor.remote(100), actor.remote(1), actor.remote(2)
    group = WeightGroup(f"test-weights-{uuid.uuid4().hex[:8]}", 3, "gloo", bucket_bytes=64, timeout_s=RAY_TIMEOUT_S)
    receivers = [first, second]
    try:
        ray.get(
            [member.join.remote(group, rank) for rank, member in enumerate((sender, first, second))],
            timeout=RAY_TIMEOUT_S,
        )

        def broadcast(version: int, to: list) -> tuple[int, list]:
            sent = sender.broadcast.remote(version)
            received = [member.receive.remote(version) for member in to]
            return ray.get(sent, timeout=RAY_TIMEOUT_S), received

        before = ray.get(first.state.remote(), timeout=RAY_TIMEOUT_S)
        nbytes, received = broadcast(1, receivers)
        assert ray.get(received, timeout=RAY_TIMEOUT_S) == [1, 1]
        sent_state = ray.get(sender.state.remote(), timeout=RAY_TIMEOUT_S)
        assert nbytes == sum(value.numel() * value.element_size() for value in sent_state.values())
        for member in receivers:
            assert_same_state(ray.get(member.state.remote(), timeout=RAY_TIMEOUT_S), sent_state)
        assert not torch.equal(before["0.weight"], sent_state["0.weight"])

        ray.get(sender.rebuild.remote(200), timeout=RAY_TIMEOUT_S)  # new weights, same architecture
        _, received = broadcast(2, receivers)
        assert ray.get(received, timeout=RAY_TIMEOUT_S) == [2, 2]
        changed = ray.get(sender.state.remote(), timeout=RAY_TIMEOUT_S)
        assert not torch.equal(changed["0.weight"], sent_state["0.weight"])
        for member in receivers:
            assert_same_state(ray.get(member.state.remote(), timeout=RAY_TIMEOUT_S), changed)

        ray.get(second.rebuild.remote(2, width=16), timeout=RAY_TIMEOUT_S)  # another architecture
        _, received = broadcast(3, receivers)
        assert ray.get(received[0], timeout=RAY_TIMEOUT_S) == 3
        with pytest.raises(ray.exceptions.RayTaskError, match="weight layout mismatch.*same transformer architecture"):
            ray.get(received[1], timeout=RAY_TIMEOUT_S)

        # the mismatched receiver took the whole broadcast, so the group is still in step
        ray.get(second.rebuild.remote(2), timeout=RAY_TIMEOUT_S)
        _, received = broadcast(4, receivers)
        assert ray.get(received, timeout=RAY_TIMEOUT_S) == [4, 4]
        assert_same_state(ray.get(second.state.remote(), timeout=RAY_TIMEOUT_S), changed)

        # a receiver expecting another version takes the broadcast too, and keeps its weights and their version
        ray.get(sender.rebuild.remote(300), timeout=RAY_TIMEOUT_S)
        sent = sender.broadcast.remote(5)
        received = [first.receive.remote(5), second.receive.remote(6)]
        ray.get(sent, timeout=RAY_TIMEOUT_S)
        assert ray.get(received[0], timeout=RAY_TIMEOUT_S) == 5
        with pytest.raises(ray.exceptions.RayTaskError, match="expected version 6, got 5"):
            ray.get(received[1], timeout=RAY_TIMEOUT_S)
        assert_same_state(ray.get(second.state.remote(), timeout=RAY_TIMEOUT_S), changed)
        _, received = broadcast(6, receivers)
        assert ray.get(received, timeout=RAY_TIMEOUT_S) == [6, 6]
    finally:
        for member in (sender, first, second):
            ray.kill(member)
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_driver_refuses_collective_transport_without_gpus_and_says_why(tmp_path):
    from maskfocus.actors.cluster import check_supported as _check_supported
    from maskfocus.driver_run import train_ray

    config = tiny_config(tmp_path / "model", tmp_path / "runs", ray={"weight_transport": "collective"})
    with pytest.raises(ConfigError, match=r"learner_gpus >= 1.*torch.distributed group.*Allowed: object_store"):
        train_ray(config, tmp_path / "run", show_progress=False)
    assert not (tmp_path / "run").exists(), "refused before anything started"
    gpu = {"weight_transport": "collective", "learner_gpus": 1, "rollout_gpus": 1}
    _check_supported(tiny_config(tmp_path / "model", tmp_path / "runs", ray=gpu))  # accepted on GPUs
    half = {**gpu, "rollout_gpus": 0.5}
    with pytest.raises(ConfigError, match="rollout_gpus"):
        _check_supported(tiny_config(tmp_path / "model", tmp_path / "runs", ray=half))


def test_a_timed_out_broadcast_fails_clearly_and_leaves_the_group_undestroyed(monkeypatch):
    """NCCL has no timeout of its own: the member gives up after the group's timeout, and then must not destroy the
    communicator that the stuck call is still inside (that can block for good)."""
    import threading

    from maskfocus.learner import weight_transport

    release, destroyed = threading.Event(), []
    monkeypatch.setattr(weight_transport.collective, "broadcast", lambda *args, **kwargs: release.wait(30))
    monkeypatch.setattr(weight_transport.collective, "is_group_initialized", lambda name: True)
    monkeypatch.setattr(weight_transport.collective, "destroy_collective_group", destroyed.append)
    monkeypatch.setattr(weight_transport.collective, "init_collective_group", lambda *args, **kwargs: None)
    group = WeightGroup("stuck", world_size=2, backend="gloo", timeout_s=0.2)
    sender = WeightSender(group)
    try:
        with pytest.raises(TimeoutError, match=r"weight broadcast of the header \(group stuck, rank 0\): not finished"):
            sender.broadcast(3, {"w": torch.ones(4)})
        sender.close()
        assert sender.stuck and destroyed == []
    finally:
        release.set()
    healthy = WeightSender(group)
    healthy.close()
    assert destroyed == ["stuck"]


class Buffers(nn.Module):
    """A module whose state is the given tensors, as buffers."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor.clone())


def test_buckets_travel_as_bytes_so_every_dtype_passes_ray_nccl_and_arrives_exactly(monkeypatch):
    """Ray's NCCL dtype map has no int16 and has bfloat16 only with a recent cupy: every call carries uint8 (the
    buckets) or int64 (header and sizes), and the receiver gets every dtype back bit for bit (no Ray: the sender's
    calls are recorded, then replayed into the receiver's)."""
    from maskfocus.learner import weight_transport

    calls: list[torch.Tensor] = []
    monkeypatch.setattr(weight_transport.collective, "init_collective_group", lambda *args, **kwargs: None)
    monkeypatch.setattr(weight_transport.collective, "broadcast", lambda tensor, **kwargs: calls.append(tensor.clone()))
    dtypes = (torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int16, torch.int8, torch.bool)
    generator = torch.Generator().manual_seed(0)
    sent = {f"t{index}": (torch.randn(3, 5, generator=generator) * 300).to(dtype) for index, dtype in enumerate(dtypes)}
    group = WeightGroup("bytes", world_size=2, backend="gloo", bucket_bytes=64)
    WeightSender(group).broadcast(7, sent)
    assert {tensor.dtype for tensor in calls} == {torch.uint8, torch.int64}

    monkeypatch.setattr(weight_transport.collective, "broadcast", lambda tensor, **kwargs: tensor.copy_(calls.pop(0)))
    receiving = Buffers({name: torch.zeros_like(tensor) for name, tensor in sent.items()})
    assert WeightReceiver(group, 1).receive(receiving, expect_version=7) == 7
    assert calls == []
    for name, tensor in sent.items():
        assert torch.equal(receiving.get_buffer(name), tensor), name
