"""Shared by the Ray tests: one small local Ray per test session, and a random-weight tiny model folder.

Import the fixtures into a conftest.py or a test module: `from ray_fixture import ray_session, random_model`.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import pytest

from maskfocus.config import RunConfig, config_from_dict

RAY_TIMEOUT_S = 120.0
"""Every ray.get / queue get / wait in the tests uses at most this."""


METRICS_REPORT_INTERVAL_MS = 1000
"""How often every Ray process sends its metrics to the node's agent (Ray's default is 10 s)."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: each probe stays bound until all are chosen (one `free_port` after another may
    return a port twice, and Ray then refuses to start: seen once, client server and runtime env agent on one port)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


METRICS_PORT = free_port()
"""Port of the session Ray's Prometheus export: http://127.0.0.1:METRICS_PORT/metrics."""


@pytest.fixture(scope="session")
def ray_session():
    """Local Ray with 2 CPUs and a 200 MB object store, started once per session (idempotent across conftests),
    exporting its metrics on METRICS_PORT."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=200 * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
            _metrics_export_port=METRICS_PORT,
            _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
        )
    yield ray
    if ray.is_initialized():
        ray.shutdown()


def build_random_model(folder: Path) -> Path:
    """The tiny architecture with random weights, in the shipped folder format: one res block a side instead of
    the shipped four, so the system tests' forwards and compiles cost less (on an AVX2-only CPU the compiled FSDP2
    learner test took 176 s against 206 s)."""
    import torch

    from maskfocus.models.tokenizer import build_word_tokenizer
    from maskfocus.shapes import prompts
    from maskfocus.shapes.tiny_model import (
        TransformerShape,
        build_text_encoder,
        build_transformer,
        build_vqvae,
        save_folder,
    )

    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(prompts.vocabulary())
    text_encoder = build_text_encoder(
        len(tokenizer), tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    )
    save_folder(folder, build_vqvae(), tokenizer, text_encoder, build_transformer(TransformerShape(num_res_blocks=1)))
    return folder


def build_random_clip(folder: Path) -> Path:
    """A random-weight tiny CLIP (open_clip local-dir layout): a reward that varies between random images."""
    import torch

    from maskfocus.models.tokenizer import build_word_tokenizer
    from maskfocus.shapes import prompts
    from maskfocus.shapes.pretrain_clip import build_clip, clip_model_config, save_clip

    torch.manual_seed(0)
    tokenizer = build_word_tokenizer(prompts.vocabulary())
    model_cfg = clip_model_config(len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    save_clip(folder, build_clip(model_cfg), model_cfg, tokenizer)
    return folder


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    """A random tiny generator folder, with a random CLIP beside it (`random_model.parent / "clip"`)."""
    folder = tmp_path_factory.mktemp("random_model")
    build_random_clip(folder / "clip")
    return build_random_model(folder / "model")


def tiny_config(model: Path, out_dir: Path, **sections: dict[str, Any]) -> RunConfig:
    """A run small enough for 2 busy cores; `sections` update the top-level sections (e.g. ray={...})."""
    data: dict[str, Any] = {
        "seed": 0,
        "model": {"path": str(model)},
        "sampler": {"num_steps": 4, "cfg_scale": 3.0},
        "rollout": {"prompts_per_iteration": 2, "group_size": 2},
        "selection": {"num_steps": 2},
        "rewards": [{"name": "geneval", "mode": "partial"}, {"name": "clip", "model": str(model.parent / "clip")}],
        "optim": {"learning_rate": 1e-3},
        "train": {
            "num_iterations": 3,
            "out_dir": str(out_dir),
            "image_every": 1000,
            "checkpoint_every": 1000,
            "final_eval": False,
        },
        "ray": {"num_cpus": 2, "object_store_memory": 200 * 1024 * 1024, "timeout_s": RAY_TIMEOUT_S},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return config_from_dict(data)


@pytest.fixture
def one_thread():
    """Torch on one thread, like the Ray workers (OMP_NUM_THREADS=1): equal float results, no oversubscription."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def next_update(ray, store, timeout: float = RAY_TIMEOUT_S):
    """The weight store's next learner record (version, weights, record), waited for at most `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        update = ray.get(store.next_update.remote(1.0), timeout=timeout)
        if update is not None:
            return update
    raise TimeoutError("no learner update")
