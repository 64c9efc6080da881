"""Probe: GRPO log-probs under the sampler's classifier-free guidance (in-process trainer only).

ALGORITHM.md section 4 scores log pi(x_T | state) with the conditional prompt alone, as the paper does, although
the rollouts drew their tokens from the guided logits l_u + s (l_c - l_u). This probe scores the policy, the
frozen old policy and the reference under the guided logits instead, so the ratio is taken on the distribution the
tokens came from, and the gradient moves the conditional branch by s and the unconditional one by 1 - s: it
rewards what the prompt adds over the empty prompt. Each learner forward carries both branches (twice the batch).

Not a config option: a negative result on the shipped base (benchmarks/RESULTS.md, "Probes of the sixteenth
session"). Usage: python benchmarks/guided_logprob_rl.py [--guidance-scale S] [maskfocus train arguments]
(always in-process; S defaults to the run's sampler.cfg_scale, 3.0 in configs/shapes_tiny.yaml).
"""

from __future__ import annotations

import argparse
import sys

from maskfocus.cli import main as maskfocus_main
from maskfocus.grpo import token_log_probs
from maskfocus.sampling import guided_logits
from maskfocus.script_args import in_process_train_command, nonnegative_float, run_script
from maskfocus.update import PolicyUpdater


class GuidedUpdater(PolicyUpdater):
    """PolicyUpdater whose log-probs come from the CFG-guided logits of the run's guidance scale."""

    guidance_scale = 3.0
    negative_prompt = ""

    def _logp(self, step, tokens_BL, condition, module):
        uncondition = self.model.encode_prompts([self.negative_prompt]).repeat_interleave(len(condition))
        logits_BLV = guided_logits(
            self.model,
            step.inputs_BL,
            condition,
            uncondition,
            self.guidance_scale,
            step.steps_B,
            self.num_sampling_steps,
            module,
        )
        return token_log_probs(logits_BLV, tokens_BL), logits_BLV


def install(guidance_scale: float | None) -> None:
    """Patch the in-process trainer so that its learner scores guided log-probs, at `guidance_scale` or (None) at
    the run's own sampler.cfg_scale, which the rollouts sampled with."""
    import maskfocus.trainer as trainer

    train_local = trainer.train_local

    def train_with_guided_log_probs(config, run_dir, resume=False, show_progress=True):
        GuidedUpdater.guidance_scale = config.sampler.cfg_scale if guidance_scale is None else guidance_scale
        if GuidedUpdater.guidance_scale != config.sampler.cfg_scale:
            print(
                f"note: log-probs at guidance {GuidedUpdater.guidance_scale:g}, rollouts sampled at "
                f"sampler.cfg_scale {config.sampler.cfg_scale:g}"
            )
        return train_local(config, run_dir, resume=resume, show_progress=show_progress)

    trainer.PolicyUpdater = GuidedUpdater
    trainer.train_local = train_with_guided_log_probs


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--guidance-scale",
        type=nonnegative_float,
        help="CFG scale s of the log-probs (default: the run's sampler.cfg_scale, which the rollouts use)",
    )
    args, command = in_process_train_command(parser, argv)
    install(args.guidance_scale)
    return maskfocus_main(command)


if __name__ == "__main__":
    raise SystemExit(run_script(lambda: main(sys.argv[1:])))
