"""Candidate base: the shipped generator's recipe with a position embedding (maskfocus.shapes.positional_uvit).

Trains a fresh text encoder and PositionalUVit2DModel (the shipped TransformerShape, `maskfocus pretrain`'s
generator loop and caption mix) on the shipped VQ's tokens, and writes a Meissonic-format folder: the base
folder's VQ, tokenizer and scheduler, the new text encoder, and transformer/ with the class's source as
transformer.py. Load it with

    --set model.kind=meissonic --set model.path=OUT --set model.resolution=64 --set model.trust_checkpoint_code=true

then screen it with benchmarks/caption_sensitivity.py (does it use relation words?) before any RL run.

With `--clip-text` the text encoder is not trained from scratch but is the built-in tiny CLIP's text tower
(maskfocus.shapes.clip_text), kept frozen: that CLIP uses colour binding and count words, which the generator's own
encoder never learns (benchmarks/clip_caption_pairs.py).

With `--plain` the transformer is the shipped UVit2DModel (no position table) and OUT is an aMUSEd-format folder,
loaded like the shipped base (`--set model.path=OUT`): that isolates the text encoder's effect.

Usage: python benchmarks/positional_base.py OUT [--steps 3000] [--seed 0] [--base builtin:shapes-tiny] [--clip-text]
       [--plain]

Results: benchmarks/RESULTS.md, "Probes of the eleventh session".
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from diffusers import UVit2DModel
from tqdm import tqdm

import maskfocus.shapes.positional_uvit as positional_uvit
from maskfocus.config import ModelConfig
from maskfocus.models import load_generator
from maskfocus.rewards.clip_score import TINY_CLIP, load_open_clip
from maskfocus.script_args import check_model_output, nonnegative_int, positive_int, run_script
from maskfocus.shapes.clip_text import text_encoder_from_open_clip
from maskfocus.shapes.pretrain_generator import GeneratorPretrainConfig, train_generator
from maskfocus.shapes.tiny_model import build_text_encoder, build_transformer

KEPT_PARTS = ("vqvae", "tokenizer", "scheduler")
"""Copied from the base folder as they are."""


def write_positional_folder(base: Path, target: Path, text_encoder, transformer, plain: bool = False) -> Path:
    """A Meissonic-format folder: `base`'s VQ, tokenizer, scheduler and pixel-range file, the given text encoder,
    and the transformer with its code file. With `plain`, an aMUSEd-format folder: `base`'s model_index.json is
    kept and no code file is written."""
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for part in KEPT_PARTS:
        shutil.copytree(base / part, target / part)
    for extra in base.glob("*.json"):
        if plain or extra.name != "model_index.json":  # that one names AmusedPipeline, which a positional is not
            shutil.copy(extra, target / extra.name)
    text_encoder.save_pretrained(str(target / "text_encoder"), safe_serialization=True)
    transformer.save_pretrained(str(target / "transformer"), safe_serialization=True)
    if not plain:
        shutil.copy(positional_uvit.__file__, target / "transformer" / "transformer.py")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="model folder to write")
    parser.add_argument("--base", default="builtin:shapes-tiny", help="aMUSEd-format folder giving VQ and tokenizer")
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=GeneratorPretrainConfig().num_steps,
        help="training steps (default %(default)s, as the shipped generator's pretraining)",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="training seed (default %(default)s)")
    parser.add_argument("--clip-text", action="store_true", help="condition on the tiny CLIP's frozen text tower")
    parser.add_argument("--plain", action="store_true", help="shipped UVit2DModel, aMUSEd-format folder")
    args = parser.parse_args()
    # the scheduler too: write_positional_folder copies it after the training
    base_folder = check_model_output(args.out, "--base", args.base, "amused", extra_parts=("scheduler",))
    base = load_generator(ModelConfig(path=args.base), dtype="float32")
    tokenizer = base.tokenizer
    config = GeneratorPretrainConfig(num_steps=args.steps, train_text_encoder=not args.clip_text)
    special_ids = (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id)
    if args.clip_text:
        text_encoder = text_encoder_from_open_clip(load_open_clip(TINY_CLIP).model, *special_ids)
    else:
        text_encoder = build_text_encoder(len(tokenizer), *special_ids)
    model_class = UVit2DModel if args.plain else positional_uvit.PositionalUVit2DModel
    transformer = build_transformer(config.transformer, model_class)
    args.out.parent.mkdir(parents=True, exist_ok=True)  # the log lies beside the folder
    log_path = args.out.with_name(args.out.name + "_pretrain_log.jsonl")
    started = time.monotonic()
    description = "plain generator" if args.plain else "positional generator"
    with log_path.open("w") as log, tqdm(total=args.steps, desc=description) as bar:
        bar.write(f"{description}: first drawing and tokenising {config.num_scenes:,} scenes (about 3 min on 2 cores)")

        def record(entry: dict) -> None:
            log.write(json.dumps({**entry, "seconds": round(time.monotonic() - started, 1)}) + "\n")
            log.flush()
            bar.set_postfix(loss=entry["loss"], acc=entry["masked_accuracy"])

        text_encoder, transformer = train_generator(
            config, base.vqvae, tokenizer, args.seed, record, bar.update, start_from=(text_encoder, transformer)
        )
    folder = write_positional_folder(base_folder, args.out, text_encoder, transformer, args.plain)
    print(f"wrote {folder} in {time.monotonic() - started:.0f} s; log {log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
