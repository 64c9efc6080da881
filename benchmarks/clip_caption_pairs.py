"""Does a CLIP model prefer a render's true caption over one changed in a single word?

The pairs are benchmarks/caption_sensitivity.py's (another colour, a neighbouring count, the colours swapped, the
opposite relation), rendered exactly; for each kind it prints how often the CLIP score of the true caption beats
the altered one's (0.5 = the word is ignored) and the mean score difference. The generator question of
caption_sensitivity.py, asked of the tiny CLIP: whether a contrastively trained text and image pair has learned
the words the generator has not.

Usage: python benchmarks/clip_caption_pairs.py [CLIP_FOLDER] [--pairs 512] [--seed 0] [--kinds ...]

Results: benchmarks/RESULTS.md, "Probes of the eleventh session", "Probes of the fourteenth and fifteenth sessions".
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

from maskfocus.rewards.clip_score import TINY_CLIP, ClipScorer
from maskfocus.script_args import nonnegative_int, positive_int, run_script
from maskfocus.shapes.render import render_batch


def _caption_sensitivity():
    """benchmarks/caption_sensitivity.py, imported by path (the benchmarks folder is not a package)."""
    path = Path(__file__).with_name("caption_sensitivity.py")
    spec = importlib.util.spec_from_file_location("caption_sensitivity", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("caption_sensitivity", module)
    spec.loader.exec_module(module)
    return module


PAIRS = _caption_sensitivity()


@torch.no_grad()
def preference(clip: ClipScorer, pairs: list) -> dict[str, float]:
    """Share of pairs whose true caption scores higher (+- standard error), and the mean score difference."""
    images = torch.from_numpy(render_batch([scene for scene, _, _ in pairs])).permute(0, 3, 1, 2).float() / 255
    true = clip.score(images, [caption for _, caption, _ in pairs])
    altered = clip.score(images, [caption for _, _, caption in pairs])
    wins = (true > altered).float()
    return {
        "true_wins": wins.mean().item(),
        "stderr": (wins.std() / len(wins) ** 0.5).item(),
        "difference": (true - altered).mean().item(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("clip", nargs="?", default=TINY_CLIP, help="CLIP folder (default: the built-in tiny CLIP)")
    parser.add_argument("--pairs", type=positive_int, default=512, help="pairs per kind")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="caption seed (default %(default)s)")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=list(PAIRS.KINDS),
        default=list(PAIRS.KINDS),
        help="which caption pairs (default: all)",
    )
    args = parser.parse_args()
    clip = ClipScorer.from_folder(args.clip, field="CLIP (the positional argument)")
    print("| words | true caption scores higher (+- s.e.) | mean score, true - altered |")
    print("|---|---|---|")
    for kind in args.kinds:
        cells = preference(clip, PAIRS.draw_pairs(kind, args.pairs, np.random.default_rng(args.seed)))
        print(f"| {kind} | {cells['true_wins']:.3f} +- {cells['stderr']:.3f} | {cells['difference']:+.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
