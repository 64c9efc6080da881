"""Which caption words does a generator use at all? Teacher-forced loss with the true caption against an altered one.

For each kind of word, random two-object (or one-object) scenes of the shapes world are tokenized by the model's
VQ, a random share of their tokens is masked, and the model predicts the masked tokens twice: given the true
caption, and given the same caption with one thing changed. A model that uses the word predicts better with the
true caption; one that ignores it scores both the same. By default only masked tokens of objects count, which
suits words that say what an object looks like or where it is. A count word also says how much of the grid is
background: an object-token-only score of it nets out (a lower count makes the true objects less likely, a higher
one more likely), so score counting with `--all-tokens`. The kinds:

- color:    "a photo of a red circle"              / another colour
- counting: "a photo of three circles"             / a wrong number (two <-> three <-> four)
- binding:  "a photo of a red circle and a blue square" / the two colours swapped
- position: "a photo of a circle left of a square" / the opposite relation
- position_near: the same, for objects whose centres are at most 24 px (6 tokens) apart: within reach of the
  tiny model's convolutions (4 tokens on each side of its middle), where relative placement needs no position
  embedding

Usage: python benchmarks/caption_sensitivity.py [MODEL] [--scenes 512] [--ratios 0.8 0.95] [--seed 0] [--kinds ...]
       [--all-tokens]
       [--trust-checkpoint-code]  (a Meissonic-format folder, e.g. benchmarks/positional_base.py's)

Results: benchmarks/RESULTS.md, "Probes of the tenth session", "Probes of the twelfth session", "Probes of the
nineteenth session".
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from maskfocus.script_args import fraction, nonnegative_int, positive_int, run_script, script_model_overrides
from maskfocus.shapes import prompts
from maskfocus.shapes.scene import Scene, random_scene, relations
from maskfocus.shapes.world import COLORS, OPPOSITE_RELATION

SIZE = 16.0  # the shipped model's one object size
Pair = tuple[Scene, str, str]  # scene, true caption, altered caption


def color_pair(rng: np.random.Generator) -> Pair | None:
    (obj,) = random_scene(rng, 1, (SIZE,)).objects
    other = [c for c in COLORS if c != obj.color][int(rng.integers(len(COLORS) - 1))]
    return Scene((obj,)), prompts.colors(obj.shape, obj.color)["prompt"], prompts.colors(obj.shape, other)["prompt"]


def counting_pair(rng: np.random.Generator) -> Pair | None:
    count = int(rng.integers(2, 5))
    objects = random_scene(rng, count, (SIZE,)).objects
    shape = objects[0].shape
    wrong = {2: 3, 3: int(rng.choice([2, 4])), 4: 3}[count]
    scene = Scene(tuple(dataclasses.replace(o, shape=shape) for o in objects))
    return scene, prompts.counting(shape, count)["prompt"], prompts.counting(shape, wrong)["prompt"]


def binding_pair(rng: np.random.Generator) -> Pair | None:
    scene = random_scene(rng, 2, (SIZE,))
    a, b = scene.objects
    if a.shape == b.shape or a.color == b.color:
        return None
    true = prompts.color_attr(a.shape, a.color, b.shape, b.color)["prompt"]
    return scene, true, prompts.color_attr(a.shape, b.color, b.shape, a.color)["prompt"]


def position_pair(rng: np.random.Generator, max_distance: float = math.inf) -> Pair | None:
    """Two different shapes in a relation, their centres at most `max_distance` pixels apart."""
    scene = random_scene(rng, 2, (SIZE,))
    subject, reference = scene.objects
    holding = sorted(relations(subject.box, reference.box))
    distance = math.hypot(subject.cx - reference.cx, subject.cy - reference.cy)
    if not holding or subject.shape == reference.shape or distance > max_distance:
        return None
    if OPPOSITE_RELATION[holding[0]] in holding:
        return None
    relation = holding[int(rng.integers(len(holding)))]
    true, altered = (
        prompts.position(reference.shape, subject.shape, r)["prompt"] for r in (relation, OPPOSITE_RELATION[relation])
    )
    return scene, true, altered


KINDS: dict[str, Callable[[np.random.Generator], Pair | None]] = {
    "color": color_pair,
    "counting": counting_pair,
    "binding": binding_pair,
    "position": position_pair,
    "position_near": functools.partial(position_pair, max_distance=24.0),
}


def draw_pairs(kind: str, count: int, rng: np.random.Generator) -> list[Pair]:
    pairs: list[Pair] = []
    while len(pairs) < count:
        if (pair := KINDS[kind](rng)) is not None:
            pairs.append(pair)
    return pairs


@torch.no_grad()
def object_token_loss(model, tokens_BL: torch.Tensor, masked_BL: torch.Tensor, objects_BL, captions) -> torch.Tensor:
    """Per scene (B,): mean cross-entropy of its masked tokens inside `objects_BL` given `captions` (NaN if none)."""
    inputs_BL = tokens_BL.masked_fill(masked_BL, model.mask_token_id)
    logits_BLV = model.logits(inputs_BL, model.encode_prompts(captions))
    loss_BL = F.cross_entropy(logits_BLV.flatten(0, 1), tokens_BL.flatten(), reduction="none").view(tokens_BL.shape)
    scored_BL = (masked_BL & objects_BL).float()
    return (loss_BL * scored_BL).sum(1) / scored_BL.sum(1)


def scene_tokens(model, scenes: list[Scene]) -> torch.Tensor:
    """VQ token ids (B, L) of the renders of `scenes`."""
    from maskfocus.shapes.render import render_batch

    return model.encode_images(torch.from_numpy(render_batch(scenes)).permute(0, 3, 1, 2).float() / 255)


def sensitivity(
    model, pairs: list[Pair], ratio: float, generator: torch.Generator, all_tokens: bool = False
) -> dict[str, float]:
    """Loss with the true captions and with the altered ones, on one shared random mask, and their paired
    difference (altered - true) with its standard error over scenes. Object tokens only, or with `all_tokens`
    every masked token (background too)."""
    tokens_BL = scene_tokens(model, [scene for scene, _, _ in pairs])
    background = int(scene_tokens(model, [Scene(())])[0, 0])
    masked_BL = torch.rand(tokens_BL.shape, generator=generator) < ratio
    objects_BL = torch.ones_like(masked_BL) if all_tokens else tokens_BL != background
    true_B, altered_B = (
        object_token_loss(model, tokens_BL, masked_BL, objects_BL, [pair[k] for pair in pairs]) for k in (1, 2)
    )
    scored = ~(true_B.isnan() | altered_B.isnan())
    difference_B = (altered_B - true_B)[scored]
    return {
        "true": float(true_B[scored].mean()),
        "altered": float(altered_B[scored].mean()),
        "difference": float(difference_B.mean()),
        "stderr": float(difference_B.std() / len(difference_B) ** 0.5),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", nargs="?", default="builtin:shapes-tiny", help="model folder (default %(default)s)")
    parser.add_argument("--scenes", type=positive_int, default=512, help="scenes per kind (default %(default)s)")
    parser.add_argument("--ratios", type=fraction, nargs="+", default=[0.8, 0.95], help="shares of tokens masked")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="scene seed (default %(default)s)")
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS), help="which words to test")
    parser.add_argument(
        "--all-tokens",
        action="store_true",
        help="score every masked token, background too (a count word moves the background as much as the objects)",
    )
    parser.add_argument(
        "--trust-checkpoint-code",
        action="store_true",
        help="a Meissonic-format folder (its own transformer/transformer.py, e.g. benchmarks/positional_base.py's)",
    )
    args = parser.parse_args()
    from maskfocus.cli import DEFAULT_CONFIG
    from maskfocus.config import load_config
    from maskfocus.models import load_generator

    config = load_config(DEFAULT_CONFIG, script_model_overrides(args.model, args.trust_checkpoint_code))
    model = load_generator(config.model, dtype="float32")
    print("| words | masked | loss, true caption | loss, altered caption | altered - true (+- s.e.) |")
    print("|---|---|---|---|---|")
    for kind in args.kinds:
        pairs = draw_pairs(kind, args.scenes, np.random.default_rng(args.seed))
        for ratio in args.ratios:
            cells = sensitivity(model, pairs, ratio, torch.Generator().manual_seed(args.seed), args.all_tokens)
            print(
                f"| {kind} | {ratio:g} | {cells['true']:.4f} | {cells['altered']:.4f} "
                f"| {cells['difference']:+.4f} +- {cells['stderr']:.4f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
