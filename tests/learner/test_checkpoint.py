"""The Ray learner's optimizer checkpoints against the in-process trainer's: a run resumes on either executor."""

from __future__ import annotations

from pathlib import Path

import torch

from maskfocus.learner.checkpoint import full_optimizer_state, load_optimizer_state
from maskfocus.run_io import read_optimizer_state


def trained_pair(seed: int = 0) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-2)
    for _ in range(2):
        module(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return module, optimizer


def fresh_copy(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    copy, _ = trained_pair(seed=1)
    copy.load_state_dict(module.state_dict())
    return copy, torch.optim.AdamW(copy.parameters(), lr=1e-2)


def assert_same_moments(expected: torch.optim.Optimizer, actual: torch.optim.Optimizer) -> None:
    for kept, loaded in zip(expected.param_groups[0]["params"], actual.param_groups[0]["params"], strict=True):
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(actual.state[loaded][key], expected.state[kept][key], rtol=0, atol=0)


def test_the_learner_loads_the_in_process_trainers_index_keyed_optimizer_state(tmp_path):
    """`maskfocus train --executor local` then `--resume --executor ray`: torch's own format, keyed by index."""
    module, optimizer = trained_pair()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    copy, copy_optimizer = fresh_copy(module)
    load_optimizer_state(copy, copy_optimizer, tmp_path)
    assert_same_moments(optimizer, copy_optimizer)


def test_the_in_process_trainer_loads_the_learners_name_keyed_optimizer_state(tmp_path):
    module, optimizer = trained_pair()
    state = full_optimizer_state(module, optimizer)
    assert set(state["state"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    torch.save(state, tmp_path / "optimizer.pt")
    copy, copy_optimizer = fresh_copy(module)
    copy_optimizer.load_state_dict(read_optimizer_state(tmp_path))  # as trainer.py does
    assert_same_moments(optimizer, copy_optimizer)
    copy, copy_optimizer = fresh_copy(module)
    load_optimizer_state(copy, copy_optimizer, tmp_path)
    assert_same_moments(optimizer, copy_optimizer)


def test_ray_train_gets_a_marker_of_the_run_checkpoint_not_a_copy_of_its_weights(tmp_path, monkeypatch):
    import ray.train

    from maskfocus.learner.checkpoint import report_to_ray_train

    folder = tmp_path / "checkpoints" / "iter_000004"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text('{"iteration": 4}')
    (folder / "transformer.safetensors").write_bytes(b"\0" * 1000)
    reported = []

    def report(metrics, checkpoint=None):
        files = {} if checkpoint is None else {p.name: p.read_text() for p in Path(checkpoint.path).iterdir()}
        reported.append((metrics, files))

    monkeypatch.setattr(ray.train, "report", report)
    report_to_ray_train(folder, {"iteration": 4})
    report_to_ray_train(None, {"iteration": 4})  # the other ranks
    assert reported == [
        ({"iteration": 4}, {"state.json": '{"iteration": 4}', "run_checkpoint.txt": f"{folder.resolve()}\n"}),
        ({"iteration": 4}, {}),
    ]


def test_optimizer_state_is_read_onto_the_cpu_whatever_device_saved_it(tmp_path, monkeypatch):
    """A GPU run saves its optimizer state on its device: read as saved, every learner rank put the whole state on
    cuda:0, and a machine without that device could not read it. (CI has no GPU: the read's device is checked.)"""
    from maskfocus import run_io

    module, optimizer = trained_pair()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
    seen, load = [], torch.load

    def recorded(*args, **kwargs):
        seen.append(kwargs.get("map_location"))
        return load(*args, **kwargs)

    monkeypatch.setattr(run_io.torch, "load", recorded)
    copy, copy_optimizer = fresh_copy(module)
    load_optimizer_state(copy, copy_optimizer, tmp_path)  # the learner's resume
    copy_optimizer.load_state_dict(read_optimizer_state(tmp_path))  # the in-process trainer's
    assert seen == ["cpu", "cpu"]
    assert_same_moments(optimizer, copy_optimizer)


def test_a_checkpoint_before_any_optimizer_step_leaves_the_optimizer_unstepped(tmp_path):
    """Every update so far skipped (no scored tokens, a non-finite gradient): torch's state getter filled the empty
    state by a step at learning rate 0, so the live optimizer's first real step was bias-corrected as its second."""
    module, _ = trained_pair()
    twin, _ = fresh_copy(module)
    optimizer, twin_optimizer = (torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (module, twin))
    torch.save(full_optimizer_state(module, optimizer), tmp_path / "optimizer.pt")
    assert not optimizer.state
    copy, copy_optimizer = fresh_copy(module)
    load_optimizer_state(copy, copy_optimizer, tmp_path)
    assert not copy_optimizer.state
    inputs = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    for m, opt in ((module, optimizer), (twin, twin_optimizer), (copy, copy_optimizer)):
        m(inputs).square().sum().backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(module.parameters(), twin.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(copy.parameters(), twin.parameters(), strict=True))


def _sharded_pair(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Two linear blocks, FSDP2-sharded over the current group (each block, then the root), and their AdamW."""
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    module = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Linear(6, 2))
    for block in module:
        fully_shard(block)
    fully_shard(module)
    return module, torch.optim.AdamW(module.parameters(), lr=1e-2)


def local_moments(optimizer: torch.optim.Optimizer) -> list[dict[str, torch.Tensor]]:
    """This rank's shard of each parameter's AdamW state, as plain tensors."""
    states = [optimizer.state[parameter] for parameter in optimizer.param_groups[0]["params"]]
    return [
        {key: getattr(value, "to_local", value.clone)().clone() for key, value in state.items()} for state in states
    ]


def _save_then_resume_on_two_ranks(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks: two sharded steps, the full state saved (rank 0), then loaded into a fresh sharded
    copy; writes this rank's shards before and after, and how often it read the file."""
    import torch.distributed as dist

    from maskfocus.learner import checkpoint

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    try:
        module, optimizer = _sharded_pair(seed=0)
        for step in range(2):
            module(torch.full((4, 3), float(rank + step + 1))).square().sum().backward()
            optimizer.step()
            optimizer.zero_grad()
        state = full_optimizer_state(module, optimizer)
        if rank == 0:
            torch.save(state, f"{out}/optimizer.pt")
        dist.barrier()
        reads = []
        read = checkpoint.read_optimizer_state
        checkpoint.read_optimizer_state = lambda folder: reads.append(folder) or read(folder)
        fresh, fresh_optimizer = _sharded_pair(seed=1)
        load_optimizer_state(fresh, fresh_optimizer, Path(out))
        torch.save(
            {"saved": local_moments(optimizer), "loaded": local_moments(fresh_optimizer), "reads": len(reads)},
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_two_fsdp2_ranks_resume_their_shards_from_one_read_and_one_rank_resumes_the_whole(tmp_path):
    """Rank 0 alone reads optimizer.pt and broadcasts it; each rank gets back exactly the shard it saved. The same
    file loads into one unsharded rank (a resume at another world size)."""
    import torch.multiprocessing as mp
    from ray_fixture import free_port

    mp.spawn(_save_then_resume_on_two_ranks, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert [result["reads"] for result in ranks] == [1, 0]
    for result in ranks:
        for saved, loaded in zip(result["saved"], result["loaded"], strict=True):
            assert set(loaded) == {"step", "exp_avg", "exp_avg_sq"}
            for key in saved:
                torch.testing.assert_close(loaded[key], saved[key], rtol=0, atol=0)
    full = read_optimizer_state(tmp_path)
    whole = torch.nn.Sequential(torch.nn.Linear(3, 6), torch.nn.Linear(6, 2))
    whole_optimizer = torch.optim.AdamW(whole.parameters(), lr=1e-2)
    load_optimizer_state(whole, whole_optimizer, tmp_path)
    for (name, parameter), key in ((pair, key) for pair in whole.named_parameters() for key in ("exp_avg", "step")):
        torch.testing.assert_close(whole_optimizer.state[parameter][key], full["state"][name][key], rtol=0, atol=0)
    first_shards = torch.cat([result["saved"][0]["exp_avg"] for result in ranks])  # 0.weight, split by rows
    torch.testing.assert_close(first_shards, full["state"]["0.weight"]["exp_avg"], rtol=0, atol=0)


def _resume_an_unreadable_state_on_two_ranks(rank: int, port: int, out: str) -> None:
    """One of two gloo ranks loading a corrupt optimizer.pt: writes what it raised."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank)
    try:
        module, optimizer = _sharded_pair(seed=0)
        try:
            load_optimizer_state(module, optimizer, Path(out))
            raised = "nothing"
        except Exception as error:
            raised = f"{type(error).__name__}: {error}"
        Path(f"{out}/rank{rank}.txt").write_text(raised)
    finally:
        dist.destroy_process_group()


def test_a_state_rank_0_cannot_read_fails_every_rank_rather_than_leaving_them_in_the_broadcast(tmp_path):
    import torch.multiprocessing as mp
    from ray_fixture import free_port

    (tmp_path / "optimizer.pt").write_bytes(b"not a torch file")
    mp.spawn(_resume_an_unreadable_state_on_two_ranks, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    first, second = ((tmp_path / f"rank{rank}.txt").read_text() for rank in range(2))
    assert first == second  # both raised, neither left waiting for the other
    assert first.startswith(f"RuntimeError: learner rank 0 could not load the optimizer state of {tmp_path}: Unpickl")
