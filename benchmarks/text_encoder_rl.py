"""Probe: GRPO that updates the text encoder together with the transformer (in-process trainer only).

The shipped learner trains the transformer alone, on prompts encoded by the frozen text encoder, as the aMUSEd and
Meissonic RL recipes do. The tiny model's text encoder was trained with its generator and barely tells some words
apart (hidden states of "above" / "below" at cosine 0.996, "two" / "four" 0.992). This probe asks whether RL does
better when it may move the encoder too. It wraps the in-process trainer (`maskfocus train --executor local`):

- the policy's log-probs are taken on prompts encoded by the trainable encoder, with gradients; the old log-probs
  by the same encoder before the update, the reference's by a frozen copy of the original encoder;
- one AdamW (the run's `optim`) and one gradient clip cover both modules;
- the bfloat16 rollout copy receives both modules' weights before each rollout;
- the saved model folder holds the trained encoder in `text_encoder/`, so `maskfocus eval --model` and the other
  benchmark scripts see it. Checkpoints hold the transformer only (no resume).

Not a config option: the Ray learner, checkpoints and weight broadcast handle the transformer alone. Result in
benchmarks/RESULTS.md ("Probes of the tenth session").

Usage: python benchmarks/text_encoder_rl.py [maskfocus train arguments]   (always in-process)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

import maskfocus.trainer as trainer
from maskfocus.cli import main as maskfocus_main
from maskfocus.config_base import ConfigError
from maskfocus.script_args import in_process_train_command, run_script
from maskfocus.update import PolicyUpdater, kept_rows, make_optimizer


def learning_prompts(batch) -> list[str]:
    """The prompts of the rows `update.learning_rows` keeps."""
    keep_B = kept_rows(batch.valid_B)
    return list(batch.prompts_B) if bool(keep_B.all()) else list(batch.rows(keep_B).prompts_B)


class TextAndTransformerUpdater(PolicyUpdater):
    """PolicyUpdater whose optimizer also moves `model.text_encoder`; the reference keeps a frozen copy of it."""

    def __init__(self, model, grpo, optim, num_sampling_steps, total_updates, **options):
        super().__init__(model, grpo, optim, num_sampling_steps, total_updates, **options)
        self.text_encoder = model.text_encoder.requires_grad_(True)
        self.reference_text_encoder = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.both = nn.ModuleDict({"transformer": self.module, "text_encoder": self.text_encoder})
        self.optimizer, self.scheduler = make_optimizer(self.both, optim, total_updates)
        self._prompts: list[str] = []

    def _logp(self, step, tokens_BL, condition, module):
        is_reference = module is self.reference_forward
        encoder = self.reference_text_encoder if is_reference else self.text_encoder
        return super()._logp(step, tokens_BL, self.model.encode_prompts_with(encoder, self._prompts), module)

    def update(self, batch, generator, *args, **kwargs):
        self._prompts = learning_prompts(batch)
        return super().update(batch, generator, *args, **kwargs)

    def trained_parameters(self):
        return self.both.parameters()


def sync_both(copy_model, master) -> None:
    """trainer.sync_weights for both trained modules."""
    if copy_model is not master:
        with torch.no_grad():
            copy_model.trainable_module().load_state_dict(master.trainable_module().state_dict())
            copy_model.text_encoder.load_state_dict(master.text_encoder.state_dict())


def install() -> None:
    """Patch the in-process trainer so that `maskfocus train --executor local` trains both modules."""
    save_transformer_folder = trainer.save_model_folder
    updaters: list[TextAndTransformerUpdater] = []

    class Recorded(TextAndTransformerUpdater):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            updaters.append(self)

    def save_model_folder(base_folder: Path, module: nn.Module, target: Path, **options: Any) -> Path:
        """The trainer's call (with its keyword options, e.g. text_encoder_folder) plus the trained text encoder."""
        return save_transformer_folder(base_folder, module, target, updaters[-1].text_encoder, **options)

    trainer.PolicyUpdater = Recorded
    trainer.sync_weights = sync_both
    trainer.save_model_folder = save_model_folder


def main(argv: list[str]) -> int:
    if any(arg == "--resume" or arg.startswith("--resume=") for arg in argv):
        raise ConfigError(
            "--resume: this probe's checkpoints hold the transformer only, so a resumed run would restart the text "
            "encoder from the base while the transformer goes on; start a new run"
        )
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _, command = in_process_train_command(parser, argv)
    install()
    return maskfocus_main(command)


if __name__ == "__main__":
    raise SystemExit(run_script(lambda: main(sys.argv[1:])))
