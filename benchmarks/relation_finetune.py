"""Capacity probe: can the tiny generator learn relation words at all, given far more of them than pretraining had?

Continues the generator pretraining (the MaskGIT objective, `maskfocus pretrain`'s loop) from a model's own text
encoder and transformer, on two-object scenes only. Every scene of two different shapes is captioned by a true
relation ("a photo of a circle left of a square") whenever one holds: 75% of the captions, against 4.3% in
pretraining (both before the 10% dropped to the empty caption). Writes a full model folder. Then ask
benchmarks/caption_sensitivity.py whether it uses the relation word, and benchmarks/position_relations.py whether
it places the pair as asked.

Usage: python benchmarks/relation_finetune.py OUT [--model builtin:shapes-tiny] [--steps 400] [--lr 3e-4] [--seed 0]
       [--trust-checkpoint-code]

Results: benchmarks/RESULTS.md, "Probes of the tenth session", "Probes of the eleventh session".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from maskfocus.cli import DEFAULT_CONFIG
from maskfocus.config import load_config
from maskfocus.models import load_generator
from maskfocus.run_io import save_model_folder
from maskfocus.script_args import (
    check_model_output,
    check_trust_flag,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    run_script,
    script_model_overrides,
)
from maskfocus.shapes.pretrain_generator import GeneratorPretrainConfig, train_generator
from maskfocus.shapes.prompts import CaptionMix

RELATION_MIX = CaptionMix(p_position=1.0, num_objects_weights=(0.0, 1.0), object_sizes=(16.0,))
"""Two objects per scene, a relation caption whenever the two shapes differ and a relation holds."""


def finetune_config(steps: int, learning_rate: float) -> GeneratorPretrainConfig:
    return GeneratorPretrainConfig(
        num_scenes=8000, num_steps=steps, learning_rate=learning_rate, caption_mix=RELATION_MIX
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="model folder to write")
    parser.add_argument("--model", default="builtin:shapes-tiny", help="model folder to start from")
    parser.add_argument("--steps", type=positive_int, default=400, help="fine-tuning steps (default %(default)s)")
    parser.add_argument("--lr", type=nonnegative_float, default=3e-4, help="peak learning rate (warm-up, cosine decay)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="training seed (default %(default)s)")
    parser.add_argument(
        "--trust-checkpoint-code",
        action="store_true",
        help="a Meissonic-format folder (its own transformer/transformer.py, e.g. benchmarks/positional_base.py's)",
    )
    args = parser.parse_args()
    kind = "meissonic" if args.trust_checkpoint_code else "amused"
    check_trust_flag(args.model, args.trust_checkpoint_code)
    model_folder = check_model_output(args.out, "--model", args.model, kind)
    config = load_config(DEFAULT_CONFIG, script_model_overrides(args.model, args.trust_checkpoint_code))
    model = load_generator(config.model, dtype="float32")
    config = finetune_config(args.steps, args.lr)
    with tqdm(total=args.steps, desc="relation fine-tune") as bar:
        bar.write(f"relation fine-tune: first drawing and tokenising {config.num_scenes:,} scenes")
        text_encoder, transformer = train_generator(
            config,
            model.vqvae,
            model.tokenizer,
            args.seed,
            lambda record: bar.set_postfix(loss=record["loss"]),
            bar.update,
            start_from=(model.text_encoder, model.transformer),
        )
    folder = save_model_folder(model_folder, transformer, args.out, text_encoder)
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
