"""Would a bfloat16 learner (float32 master weights, torch.autocast compute) be faster on this machine?

    python benchmarks/learner_autocast.py [--batch 32] [--repeats 6]

Times one learner forward + backward of the built-in model (B samples, half of the tokens masked, log-probs of
the final tokens as the learner takes them) in float32 and under bfloat16 autocast, eager and compiled, and reports
the median seconds and how far the bfloat16 log-probs lie from the float32 ones. Only meaningful on a CPU with
bfloat16 instructions (AVX512-BF16 or AMX) or a GPU; results in benchmarks/RESULTS.md ("Thirty-second session").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from maskfocus.compiled import PaddedCompiled
from maskfocus.config import ModelConfig
from maskfocus.grpo import token_log_probs
from maskfocus.models import load_generator
from maskfocus.script_args import positive_int, run_script


def timed_pass(model, module, inputs, tokens, condition, steps, autocast: bool, repeats: int):
    """Median seconds of `repeats` forward + backward passes after one untimed warm-up (a compiled module compiles
    in its first pass, and autocast builds its first casts), and the last pass's log-probs."""
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model.logits(inputs, condition, steps, 12, module=module)
        logp = token_log_probs(logits, tokens)
        logp.mean().backward()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds[1:]), logp.detach()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=positive_int, default=32, help="samples per pass (the shipped P x G)")
    parser.add_argument(
        "--repeats",
        type=positive_int,
        default=6,
        help="timed passes per variant, after one untimed warm-up (median reported)",
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = load_generator(ModelConfig(), dtype="float32")
    module = model.trainable_module().eval()
    num_tokens = model.grid_size[0] * model.grid_size[1]
    tokens = torch.randint(0, model.codebook_size, (args.batch, num_tokens))
    inputs = tokens.clone()
    inputs[:, ::2] = model.mask_token_id
    condition = model.encode_prompts(["a photo of a red circle left of a blue square"] * args.batch)
    steps = torch.full((args.batch,), 5)
    for name, forward in (("eager", module), ("compiled", PaddedCompiled(module))):
        fp32, logp_fp32 = timed_pass(model, forward, inputs, tokens, condition, steps, False, args.repeats)
        bf16, logp_bf16 = timed_pass(model, forward, inputs, tokens, condition, steps, True, args.repeats)
        error = (logp_fp32 - logp_bf16).abs()
        print(
            f"{name}: float32 {fp32:.3f} s, bfloat16 autocast {bf16:.3f} s per forward + backward; "
            f"log-prob difference mean {error.mean():.4f}, max {error.max():.4f} nats"
        )


if __name__ == "__main__":
    sys.exit(run_script(main))
