"""Test helpers importable from any test module (`from support import ToyGenerator`)."""

from __future__ import annotations

import contextlib
import json
import math
import socket
from collections.abc import Iterator
from pathlib import Path

import torch

from maskfocus.models.base import Condition
from maskfocus.types import TrainBatch


class ToyGenerator:
    """A deterministic 'model': logits are a fixed random linear function of the one-hot grid and the prompt."""

    def __init__(self, side: int = 4, codebook_size: int = 8, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.grid_size = (side, side)
        self.codebook_size = codebook_size
        self.mask_token_id = codebook_size
        self.image_size = side
        self.device = torch.device("cpu")
        num_tokens = side * side
        self.transformer = torch.nn.Linear(num_tokens * (codebook_size + 1), num_tokens * codebook_size, bias=False)
        with torch.no_grad():
            self.transformer.weight.copy_(
                torch.randn(num_tokens * codebook_size, num_tokens * (codebook_size + 1), generator=generator)
                / num_tokens**0.5
            )
        self.prompt_bias = torch.randn(64, num_tokens * codebook_size, generator=generator)
        self.embedding = torch.randn(codebook_size, 3, generator=generator)
        self.calls = 0

    def check_prompts(self, prompts):
        return None

    def encode_prompts(self, prompts):
        index = torch.tensor([sum(map(ord, p)) % 64 for p in prompts])
        return Condition(hidden_BSD=index.view(-1, 1, 1).float(), pooled_BD=self.prompt_bias[index])

    def logits(self, tokens_BL, condition, step=0, num_steps=1, module=None):
        self.calls += 1
        one_hot = torch.nn.functional.one_hot(tokens_BL, self.codebook_size + 1).float().flatten(1)
        out = (self.transformer if module is None else module)(one_hot) + condition.pooled_BD
        return out.view(tokens_BL.shape[0], -1, self.codebook_size)

    def decode(self, tokens_BL):
        side = self.grid_size[0]
        return torch.sigmoid(self.embedding[tokens_BL]).view(-1, side, side, 3).permute(0, 3, 1, 2)

    def codebook_vectors(self, tokens_BL):
        return self.embedding[tokens_BL]

    def trainable_module(self):
        return self.transformer


class BannedTokenGenerator(ToyGenerator):
    """A ToyGenerator whose logits rule out tokens `banned` with -inf (probability exactly 0)."""

    def __init__(self, banned: tuple[int, ...] = (0, 3), **kwargs):
        super().__init__(**kwargs)
        self.banned = torch.tensor(banned)

    def logits(self, tokens_BL, condition, step=0, num_steps=1, module=None):
        return super().logits(tokens_BL, condition, step, num_steps, module).index_fill(-1, self.banned, float("-inf"))


def reference_guided_logits(model, tokens_BL, condition, uncondition, cfg_scale, step=0, num_steps=1) -> torch.Tensor:
    """CFG written out for tests, in float64: two separate forwards, l = l_uncond + s (l_cond - l_uncond); l_cond when
    `uncondition` is None. (B, L, V)."""
    cond_BLV = model.logits(tokens_BL, condition, step, num_steps).double()
    if uncondition is None:
        return cond_BLV
    uncond_BLV = model.logits(tokens_BL, uncondition, step, num_steps).double()
    return uncond_BLV + cfg_scale * (cond_BLV - uncond_BLV)


def reference_entropy(logits_V: list[float]) -> float:
    """-sum p log p of softmax(logits) in plain Python; a -inf logit is a token of probability 0 and adds nothing."""
    top = max(logits_V)
    weights = [math.exp(x - top) for x in logits_V]
    probs = [w / sum(weights) for w in weights]
    return -sum(p * math.log(p) for p in probs if p > 0)


def record_gumbel_noise(monkeypatch) -> list[torch.Tensor]:
    """Spy on the sampler's Gumbel draws: the returned list receives every noise tensor in draw order, (B, L, V) for a
    token draw and (B, L) for a confidence ordering, so a reference can replay a sampling run with the same noise."""
    import maskfocus.sampling as sampling

    noises: list[torch.Tensor] = []
    draw = sampling._gumbel

    def spy(shape, generator, device):
        noises.append(draw(shape, generator, device))
        return noises[-1]

    monkeypatch.setattr(sampling, "_gumbel", spy)
    return noises


def noise_per_step(noises: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Group `record_gumbel_noise`'s list by sampling step: (draw noise (B, L, V), confidence noise (B, L) or None)."""
    steps: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    for noise in noises:
        if noise.dim() == 3:
            steps.append((noise, None))
        else:
            assert steps and steps[-1][1] is None, "a confidence noise must follow a draw noise"
            steps[-1] = (steps[-1][0], noise)
    return steps


def assert_least_confident_go_back(confidence: dict[int, float], remasked_L: torch.Tensor, num_remasked: int) -> None:
    """`confidence` maps each newly drawn position to its confidence; exactly `num_remasked` positions are re-masked,
    all among them, and none more confident than a committed one (1e-5 slack for float rounding)."""
    remasked = {pos for pos in range(remasked_L.shape[0]) if remasked_L[pos]}
    assert len(remasked) == num_remasked and remasked <= set(confidence)
    committed = set(confidence) - remasked
    assert max(confidence[pos] for pos in remasked) <= min(confidence[pos] for pos in committed) + 1e-5


def load_benchmark(name: str):
    """Import benchmarks/NAME.py as module NAME (the benchmarks folder is not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cli_error(capsys, *args: str) -> str:
    """Run `maskfocus ARGS` in this process (a subprocess spends ~5 s importing torch) and return its stderr:
    a user error exits with status 2 and one message; any other exception would propagate and fail the test."""
    from maskfocus.cli import main

    capsys.readouterr()
    assert main(list(args)) == 2
    return capsys.readouterr().err


def make_run(folder: Path, overrides: dict, overall: float | None, iterations: int = 5, learner_s: float = 2.0) -> Path:
    """A fake run folder as the trainer leaves it: config.yaml, metrics.jsonl and (when `overall`) eval/summary.json."""
    from maskfocus.config import default_run_config, dump_config

    folder.mkdir(parents=True)
    dump_config(default_run_config(overrides), folder / "config.yaml")
    timing = {"perf/learner_seconds": learner_s, "perf/iteration_seconds": 5.0}
    records = [{"iteration": i, "reward/mean": 0.5 + 0.05 * i, **timing} for i in range(iterations)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if overall is not None:
        (folder / "eval").mkdir()
        tags = {"single_object": overall + 0.1, "two_object": overall - 0.1}
        (folder / "eval" / "summary.json").write_text(json.dumps({"overall": overall, "tags": tags}))
    return folder


def make_batch(model: ToyGenerator, num_samples: int = 8, num_selected: int = 3, seed: int = 0) -> TrainBatch:
    """A TrainBatch of random final tokens and advantages for the toy generator: K selected steps 1..K with 12, 8
    and 4 masked tokens, groups of 4, every sample valid, sampled by policy version 0."""
    generator = torch.Generator().manual_seed(seed)
    num_tokens = model.grid_size[0] * model.grid_size[1]
    tokens = torch.randint(0, model.codebook_size, (num_samples, num_tokens), generator=generator)
    steps = torch.arange(1, num_selected + 1).expand(num_samples, num_selected).clone()
    counts = torch.tensor([12, 8, 4][:num_selected]).expand(num_samples, num_selected).clone()
    advantages = torch.randn(num_samples, generator=generator)
    return TrainBatch(
        [f"p{i // 4}" for i in range(num_samples)],
        tokens,
        steps,
        counts,
        None,
        None,
        advantages,
        torch.ones(num_samples, dtype=torch.bool),
        0,
        0,
    )


def run_benchmark_cli(module, argv: list[str], monkeypatch) -> int:
    """A benchmark script's `main` as its command line runs it (`run_script`), with `argv` as its arguments."""
    import sys

    from maskfocus.script_args import run_script

    monkeypatch.setattr(sys, "argv", [f"{module.__name__}.py", *argv])
    return run_script(module.main)


def make_updater(model, compile: bool = False, compile_backend: str = "inductor", **grpo):
    """A PolicyUpdater of `model` at learning rate 1e-2 over 10 optimizer steps, T = 6, GRPO settings `grpo`."""
    from maskfocus.config import GRPOConfig, OptimConfig
    from maskfocus.update import PolicyUpdater

    config = GRPOConfig(**grpo)
    optim = OptimConfig(learning_rate=1e-2)
    return PolicyUpdater(model, config, optim, 6, total_updates=10, compile=compile, compile_backend=compile_backend)


@contextlib.contextmanager
def refusing_port() -> Iterator[int]:
    """A local port that refuses connections while the block runs: bound, never listening. (A port bound and closed
    again, as the tests first did, may be taken meanwhile by one of the session's Ray processes.)"""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


def rewrite_metrics(folder: Path, change) -> None:
    """Each record of the run's metrics.jsonl updated with `change(record)`."""
    metrics = folder / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    metrics.write_text("".join(json.dumps({**record, **change(record)}) + "\n" for record in records))


def save_base_checkpoint(run: Path, iteration: int, state: dict) -> Path:
    """A checkpoint of the built-in model's untrained transformer (what the default config trains) with a fresh
    optimizer: one `--resume` accepts as fitting the run's model (a Linear stand-in is refused)."""
    from maskfocus.config import ModelConfig
    from maskfocus.models import load_generator
    from maskfocus.run_io import save_checkpoint

    module = load_generator(ModelConfig(), dtype="float32").trainable_module()
    return save_checkpoint(run, iteration, module, torch.optim.AdamW(module.parameters()), state)
