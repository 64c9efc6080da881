"""GPU check for a machine with one GPU (issue 5, item 4). Run by hand; never part of the test suite.

    python benchmarks/gpu_check.py                          # all checks on cuda:0, Meissonic scale
    python benchmarks/gpu_check.py --only scale --num-steps 16
    python benchmarks/gpu_check.py --device cpu --dtype float32 --scale small --num-steps 4 --selected 2  # CPU dry run
    python benchmarks/gpu_check.py --only broadcast --broadcast-mib 1024           # the collective weight transport

On the lent GPU machine (Python 3.12 with its own torch and cupy; no Ray, pydantic or diffusers, nothing to fetch):
run `benchmarks/gpu_wheels.sh` here once, then one device call carrying ".gpu_wheels", timeout about 480 s:
    python3 -m pip install -q --no-index --no-deps .gpu_wheels/*.whl &&
    python3 -m pip install -q --no-deps --no-build-isolation -e . &&
    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --only tiny,nccl,scale --json $OUT/gpu_check.json
(`broadcast` needs Ray, whose wheel is larger than a device call carries.)

Checks, each printing its figures:
1. tiny  - the built-in tiny model end to end on the device: bf16 rollout (sampler + router), shapes GenEval
           reward, critical steps, GRPO updates of an FSDP2 `fully_shard` transformer (float32 compute and
           master weights, sharded as the Ray learner does), full weights back into the rollout model. Asserts
           finite losses and changed weights.
           Then the last batch once more as if one version stale, with `grpo.behaviour_weight_cap` (the sampling
           version's shards swapped in for the behaviour forwards): asserts finite behaviour weights and the
           weights restored before the update.
2. nccl  - a torch.distributed NCCL group and a broadcast of the tiny transformer's weights and of a 1 GiB
           buffer. One process: NCCL refuses two ranks on one GPU, so this proves set-up and the collective
           path, not link bandwidth.
3. scale - a random-init transformer of Meissonic's size (benchmarks/gpu_perf.py) driven through
           MeissonicGenerator with Meissonic's inputs: rollout (T steps, CFG, router) and learner (K GRPO
           updates under FSDP2, reference forward, old log-probs) timed on the one GPU, roles run one after the
           other: time per iteration, images per second, MFU of learner and rollout.
4. broadcast - learner/weight_transport.py (`ray.weight_transport: collective`) between a sender and a receiver
           Ray actor over ray.util.collective NCCL (needs cupy): seconds per broadcast and bytes moved of the tiny
           transformer plus --broadcast-mib MiB, receiver checked against sender. On one GPU NCCL refuses the
           two ranks (0.5 GPU each): the error is reported and a one-rank group is timed instead
           (benchmarks/weight_broadcast.py).

Results: none yet (no GPU has been lent to this project); benchmarks/RESULTS.md records that it has not run.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from gpu_perf import (
    MEISSONIC,
    SMALL,
    MeissonicScaleTransformer,
    ScaleSpec,
    build_parts,
    count_flops,
    learner_flops,
    mfu,
    parameter_count,
    peak_tflops,
    rollout_flops,
)
from weight_broadcast import check_weight_broadcast

from maskfocus.config import GRPOConfig, OptimConfig, RouterConfig, SamplerConfig, load_config
from maskfocus.config_base import ConfigError
from maskfocus.learner.parallelize import wrap
from maskfocus.models import load_generator
from maskfocus.models.meissonic import MeissonicGenerator
from maskfocus.outputs import check_output_file
from maskfocus.rewards.combined import build_rewards
from maskfocus.rollout import make_router, rollout
from maskfocus.run_io import plain_state_dict
from maskfocus.sampling import mask_schedule, sample_with_config, seeded_generator
from maskfocus.scoring import score_trajectory
from maskfocus.script_args import positive_float, positive_int, run_script
from maskfocus.trainer import PromptStream
from maskfocus.types import TrainBatch
from maskfocus.update import PolicyUpdater, frozen_copy

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ("tiny", "nccl", "scale", "broadcast")
SCALE_PROMPTS = [f"a photo of {word} cat" for word in ("one", "two", "red", "blue")]
BYTES_PER_PARAMETER = 4 + 4 + 8 + 4 + 2  # fp32 weights, grads, AdamW moments, fp32 reference, bf16 rollout copy


def synchronize(device: torch.device) -> float:
    """Wait for queued device work; returns perf_counter()."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def init_process_group(device: torch.device) -> None:
    """A one-rank group: NCCL on CUDA, gloo on the CPU (what FSDP2 needs, and what check 2 broadcasts over)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", world_size=1, rank=0)


def check_tiny(device: torch.device, num_iterations: int, dtype: str) -> dict:
    """The tiny model through rollout -> reward -> selection -> FSDP2 GRPO update -> weight sync."""
    overrides = {"model.device": str(device), "model.dtype": dtype, "grpo.behaviour_weight_cap": 2.0}
    config = load_config(ROOT / "configs" / "shapes_tiny.yaml", overrides)
    policy = load_generator(config.model)
    learner = load_generator(config.model, dtype="float32")
    reference = frozen_copy(learner.transformer)
    module = wrap(learner.trainable_module(), "fsdp", learner.blocks())  # as the Ray learner shards it
    updater = PolicyUpdater(
        learner,
        config.grpo,
        config.optim,
        config.rollout_sampler().num_steps,
        10 * num_iterations,
        module,
        reference,
        max_staleness=1,
    )
    reward_fn = build_rewards(config.rewards, device=str(device))
    prompts = PromptStream.from_config(config)
    before = {key: value.clone() for key, value in plain_state_dict(module).items()}  # no alias on the CPU
    record: dict = {}
    for iteration in range(num_iterations):
        start = synchronize(device)
        trajectory = rollout(
            policy,
            prompts.take(config.rollout.prompts_per_iteration),
            config.rollout.group_size,
            config.rollout_sampler(),
            config.router,
            seeded_generator(config.seed, iteration, 0, device=device),
        )
        scored = synchronize(device)
        batch = score_trajectory(
            trajectory, reward_fn, policy, config.selection, config.grpo, seeded_generator(config.seed, iteration, 1)
        )
        batch.policy_version = iteration
        metrics = updater.update(batch, seeded_generator(config.seed, iteration, 2, device=device), version=iteration)
        learned = synchronize(device)
        policy.transformer.load_state_dict(plain_state_dict(module))
        end = synchronize(device)
        assert math.isfinite(metrics["loss/total"]), metrics
        record = {
            "iteration": iteration,
            "rollout_s": round(scored - start, 3),
            "reward_and_learner_s": round(learned - scored, 3),
            "sync_s": round(end - learned, 3),
            "reward_mean": round(float(batch.stats.get("reward/mean", float("nan"))), 3),
            "loss": round(metrics["loss/total"], 5),
            "grad_norm": round(metrics.get("loss/grad_norm", float("nan")), 4),
        }
        print("tiny", json.dumps(record), flush=True)
    after = plain_state_dict(module)
    changed = sum(not torch.equal(before[key], after[key]) for key in before)
    assert changed > 0, "no weight changed after the GRPO updates"
    stale = check_stale_batch(updater, batch, num_iterations)
    return {**record, **stale, "tensors_changed": f"{changed}/{len(before)}"}


def check_stale_batch(updater: PolicyUpdater, batch: TrainBatch, version: int) -> dict:
    """The last batch (sampled by version - 1) learned again at `version`: behaviour forwards under the swapped-in
    shards of version - 1, then the update from the current weights (checked by a spy on the old log-probs)."""
    current = [parameter.detach().clone() for parameter in updater.module.parameters()]
    seen = {}
    freeze = updater._freeze_log_probs

    def spy(steps, tokens_BL, condition):
        seen["restored"] = all(torch.equal(a, b) for a, b in zip(updater.module.parameters(), current, strict=True))
        freeze(steps, tokens_BL, condition)

    updater._freeze_log_probs = spy
    generator = seeded_generator(0, version, 2, device=batch.tokens_BL.device)
    metrics = updater.update(batch, generator, version=version)
    del updater._freeze_log_probs
    assert seen["restored"], "the current weights were not restored after the behaviour forwards"
    assert metrics["sync/behaviour_missing"] == 0.0 and math.isfinite(metrics["loss/behaviour_weight_mean"])
    return {
        "stale_behaviour_weight_mean": round(metrics["loss/behaviour_weight_mean"], 4),
        "stale_abs_log_ratio": round(metrics["loss/behaviour_abs_log_ratio"], 4),
        "ok": True,
    }


def check_broadcast(device: torch.device) -> dict:
    """NCCL (gloo on CPU) broadcast of the tiny transformer's weights and of a 1 GiB buffer."""
    transformer = load_generator(load_config(ROOT / "configs" / "shapes_tiny.yaml").model).transformer
    weights = [tensor.to(device) for tensor in transformer.state_dict().values()]
    start = synchronize(device)
    for tensor in weights:
        dist.broadcast(tensor, src=0)
    small = synchronize(device) - start
    buffer = torch.ones(256 * 2**20, device=device)
    dist.broadcast(buffer, src=0)
    start = synchronize(device)
    dist.broadcast(buffer, src=0)
    large = synchronize(device) - start
    assert bool(buffer[-1] == 1)
    result = {
        "backend": dist.get_backend(),
        "world_size": dist.get_world_size(),
        "tiny_weights_tensors": len(weights),
        "tiny_weights_s": round(small, 5),
        "one_gib_s": round(large, 5),
        "ok": True,
    }
    print("nccl", json.dumps(result), flush=True)
    return result


def build_scale_models(
    spec: ScaleSpec, device: torch.device, dtype: torch.dtype
) -> tuple[MeissonicGenerator, MeissonicGenerator]:
    """(policy for sampling in `dtype`, float32 learner model) sharing one random VQ, text encoder and tokenizer."""
    vqvae, text_encoder, tokenizer = build_parts(spec, device)
    text_encoder = text_encoder.to(dtype)
    with torch.device(device):
        transformer = MeissonicScaleTransformer(spec)
    options = {
        "mask_token_id": spec.vocab_size - 1,
        "codebook_size": spec.codebook_size,
        "image_size": spec.grid * 16,
        "pixel_range": (0.0, 1.0),
        "device": device,
        "downsample": True,
        "timestep_dtype": dtype,  # both condition on the rollouts' timestep rounding, as models/__init__.py loads them
    }
    policy_transformer = copy.deepcopy(transformer).to(dtype)
    policy = MeissonicGenerator(vqvae, policy_transformer, text_encoder, tokenizer, **options)
    learner = MeissonicGenerator(vqvae, transformer, text_encoder, tokenizer, **options)
    return policy, learner


def choose_spec(name: str, device: torch.device) -> ScaleSpec:
    """Meissonic's size when the card's free memory allows, else half the blocks (said so in the output)."""
    spec = SMALL if name == "small" else MEISSONIC
    if device.type != "cuda" or name == "small":
        return spec
    free, _ = torch.cuda.mem_get_info(device)
    needed = parameter_count(spec) * BYTES_PER_PARAMETER + 16 * 2**30  # + activations, logits, VQ, text encoder
    if needed > free:
        print(f"scale: {needed / 2**30:.0f} GiB needed, {free / 2**30:.0f} GiB free: halving the blocks", flush=True)
        spec = ScaleSpec(num_layers=spec.num_layers // 2, num_single_layers=spec.num_single_layers // 2)
    return spec


def synthetic_batch(prompts: list[str], tokens_BL: torch.Tensor, num_steps: int, num_selected: int) -> TrainBatch:
    """A TrainBatch over the rollout's tokens: K evenly spread steps, +1/-1 advantages per group of 2."""
    batch = tokens_BL.shape[0]
    counts = torch.tensor(mask_schedule(tokens_BL.shape[1], num_steps))
    steps_K = torch.linspace(1, num_steps - 1, num_selected).round().long()
    return TrainBatch(
        prompts_B=prompts,
        tokens_BL=tokens_BL,
        steps_BK=steps_K.expand(batch, -1).clone(),
        num_masked_BK=counts[steps_K].expand(batch, -1).clone(),
        masks_BKL=None,
        scored_BKL=None,
        advantages_B=torch.tensor([1.0, -1.0]).repeat((batch + 1) // 2)[:batch],
        valid_B=torch.ones(batch, dtype=torch.bool),
        policy_version=0,
        iteration=0,
    )


def check_scale(device: torch.device, args: argparse.Namespace) -> dict:
    """Rollout and learner timing of a Meissonic-size model on this one device."""
    spec = choose_spec(args.scale, device)
    policy, learner = build_scale_models(spec, device, getattr(torch, args.dtype))
    num_params = sum(p.numel() for p in learner.transformer.parameters())
    prompts = SCALE_PROMPTS[: args.prompts]
    prompts_B = [p for p in prompts for _ in range(args.group_size)]
    sampler = SamplerConfig(num_steps=args.num_steps, cfg_scale=5.0, negative_prompt="blurry", batch_size=64)
    router = make_router(RouterConfig(), args.group_size)
    condition = learner.encode_prompts(prompts_B[:1])
    tokens = torch.full((1, spec.grid**2), learner.mask_token_id, device=device)
    with torch.no_grad():
        forward = count_flops(learner.logits, tokens, condition, 0, args.num_steps)
    reference = frozen_copy(learner.transformer)
    module = wrap(learner.trainable_module(), "fsdp", learner.blocks())  # as the Ray learner shards it
    grpo = GRPOConfig(clip_eps=None, beta=0.01)
    updater = PolicyUpdater(learner, grpo, OptimConfig(learning_rate=2e-6), args.num_steps, 100, module, reference)

    warm = sample_with_config(
        policy, prompts_B, sampler.model_copy(update={"num_steps": 2}), seeded_generator(0, device=device)
    )
    updater.update(synthetic_batch(prompts_B, warm.tokens_BL, 2, 1), seeded_generator(1, device=device))
    start = synchronize(device)
    result = sample_with_config(
        policy, prompts_B, sampler, seeded_generator(2, device=device), record=True, token_temperature=router
    )
    images = policy.decode(result.tokens_BL)
    rolled = synchronize(device)
    metrics = updater.update(
        synthetic_batch(prompts_B, result.tokens_BL, args.num_steps, args.selected), seeded_generator(3, device=device)
    )
    learned = synchronize(device)
    policy.transformer.load_state_dict(plain_state_dict(module))
    synced = synchronize(device)
    assert math.isfinite(metrics["loss/total"]) and images.shape[0] == len(prompts_B)

    peak = args.peak_tflops or (peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None)
    rollout_s, learner_s, sync_s = rolled - start, learned - rolled, synced - learned
    iteration_s = rollout_s + learner_s + sync_s
    flops_rollout = rollout_flops(forward, len(prompts_B), args.num_steps, use_cfg=True)
    flops_learner = learner_flops(forward, len(prompts_B), args.selected, grpo.beta > 0, grpo.update)
    report = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "transformer_parameters": num_params,
        "spec": spec.__dict__,
        "images_per_iteration": len(prompts_B),
        "T": args.num_steps,
        "K": args.selected,
        "forward_tflop_per_image": round(forward / 1e12, 4),
        "rollout_s": round(rollout_s, 3),
        "learner_s": round(learner_s, 3),
        "weight_sync_s": round(sync_s, 3),
        "iteration_s": round(iteration_s, 3),
        "images_per_s": round(len(prompts_B) / iteration_s, 4),
        "rollout_images_per_s": round(len(prompts_B) / rollout_s, 4),
        "peak_tflops": peak,
        # both against the dense bf16 peak: the rollouts compute in --dtype, the learner in float32 (TF32 off), whose
        # own peak is far lower, so its MFU reads low by that factor
        "mfu_basis": f"dense bf16 peak; rollouts in {args.dtype}, learner in float32",
        "learner_mfu": _round(mfu(flops_learner, learner_s, peak)),
        "rollout_mfu": _round(mfu(flops_rollout, rollout_s, peak)),
        "max_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 1) if device.type == "cuda" else None,
    }
    print("scale", json.dumps(report), flush=True)
    return report


def _print(name: str, result: dict) -> dict:
    print(name, json.dumps(result), flush=True)
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def check_names(text: str) -> list[str]:
    """argparse type of --only: every name known, so that a typo is an error before the checks before it run."""
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown check(s) {', '.join(map(repr, unknown))}; choose from {', '.join(CHECKS)}"
        )
    return names


def device_name(text: str) -> torch.device:
    """argparse type of --device: cuda, cuda:N or cpu (torch would raise a RuntimeError for anything else)."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cuda", "cpu"):
        raise argparse.ArgumentTypeError(f"expected cuda, cuda:N or cpu, got {text!r}")
    return device


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=device_name, default="cuda", help="cuda (one GPU) or cpu (a dry run)")
    parser.add_argument(
        "--only", type=check_names, default=",".join(CHECKS), help=f"comma-separated subset of {','.join(CHECKS)}"
    )
    parser.add_argument("--scale", choices=("meissonic", "small"), default="meissonic")
    parser.add_argument("--num-steps", type=positive_int, default=64, help="T of the scale check (reference: 64)")
    parser.add_argument("--selected", type=positive_int, default=6, help="K of the scale check, < T (reference: 6)")
    parser.add_argument(
        "--prompts", type=positive_int, default=1, help=f"prompts per GPU, at most {len(SCALE_PROMPTS)} (reference: 1)"
    )
    parser.add_argument("--group-size", type=positive_int, default=2, help="G (reference: 2)")
    parser.add_argument("--tiny-iterations", type=positive_int, default=3)
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="rollout weights (float32 for a CPU run)"
    )
    parser.add_argument("--peak-tflops", type=positive_float, default=None, help="override the card's dense bf16 peak")
    parser.add_argument(
        "--broadcast-mib", type=positive_int, default=1024, help="float32 MiB beside the tiny transformer"
    )
    parser.add_argument("--broadcast-repeats", type=positive_int, default=3, help="timed broadcasts after the first")
    parser.add_argument(
        "--broadcast-timeout", type=positive_float, default=120.0, help="seconds for one collective call"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write all results to this file")
    args = parser.parse_args(argv)
    if "scale" in args.only and args.selected > args.num_steps - 1:  # K distinct steps of 1 .. T - 1
        parser.error(f"--selected (K={args.selected}) must be <= --num-steps - 1 (T={args.num_steps})")
    if args.prompts > len(SCALE_PROMPTS):
        parser.error(f"--prompts must be at most {len(SCALE_PROMPTS)} (the scale check's prompts), got {args.prompts}")
    return args


def choose_device(device: torch.device) -> torch.device:
    """The device to run on, the GPU made current; no GPU at `device` is an error before any check runs."""
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise ConfigError("no CUDA device: run with --device cpu for a dry run")
    if (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(device.index or 0)
    return torch.device("cuda", torch.cuda.current_device())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_output_file("--json", args.json, "file")
    device = choose_device(args.device)
    init_process_group(device)
    checks = {
        "tiny": lambda: check_tiny(device, args.tiny_iterations, args.dtype),
        "nccl": lambda: check_broadcast(device),
    }
    checks["scale"] = lambda: check_scale(device, args)
    checks["broadcast"] = lambda: _print(
        "broadcast",
        check_weight_broadcast(device, args.broadcast_mib, args.dtype, args.broadcast_repeats, args.broadcast_timeout),
    )
    results = {}
    try:
        for name in args.only:
            results[name] = checks[name]()
    finally:
        dist.destroy_process_group()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    print("all checks passed:", ", ".join(results))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
