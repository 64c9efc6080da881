"""Would a CLIP score teach what the GenEval reward cannot? Within-group agreement of the two, per tag.

GRPO compares the images of one group (one prompt). A CLIP term helps only if, within a group, it ranks the
images GenEval marks correct above the ones it marks failed. For each tag this samples n images per row (a
group), scores each by GenEval (correct, partial score) and by the CLIP, and prints the pairwise AUC over all
pairs of images of the same row that GenEval tells apart (1 = CLIP always agrees, 0.5 = unrelated, ties count
half), and the CLIP score's mean and spread.

Usage: python benchmarks/clip_reward_agreement.py MODEL [--clip FOLDER] [--tags ...] [--images 8] [--every 2]

Results: benchmarks/RESULTS.md, "Probes of the fourteenth and fifteenth sessions".
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from collections import defaultdict
from collections.abc import Sequence

import torch
from tqdm import tqdm

from maskfocus.cli import DEFAULT_CONFIG
from maskfocus.config import GenEvalDetectorConfig, load_config
from maskfocus.evaluation import chosen_rows, expand_jobs, generate_batches, load_evaluated_generator
from maskfocus.images import to_tensor
from maskfocus.rewards.clip_score import TINY_CLIP, ClipScorer
from maskfocus.rewards.geneval import TAGS
from maskfocus.rewards.judges import build_judge
from maskfocus.script_args import nonnegative_int, positive_int, run_script


def pairwise_auc(groups: Sequence[Sequence[tuple[float, float]]]) -> tuple[float, int]:
    """(AUC, pairs): over pairs inside one group whose labels differ, how often the higher label has the
    higher score (ties in score count half). Each item is (label, score). NaN AUC when no pair differs."""
    agree, pairs = 0.0, 0
    for group in groups:
        for (label_a, score_a), (label_b, score_b) in itertools.combinations(group, 2):
            if label_a == label_b:
                continue
            pairs += 1
            high, low = (score_a, score_b) if label_a > label_b else (score_b, score_a)
            agree += 1.0 if high > low else 0.5 if high == low else 0.0
    return (agree / pairs if pairs else float("nan")), pairs


def sample_and_score(model, sampler, judge, clip: ClipScorer, rows: list[dict], images: int, seed: int) -> dict:
    """Row index -> [(correct, partial score, CLIP score)] for `images` samples of each row."""
    scored: dict[int, list[tuple[float, float, float]]] = defaultdict(list)
    jobs = expand_jobs(rows, images)
    with tqdm(total=len(jobs), desc="sample", unit="img") as bar:
        for chunk, pixels_BHWC in generate_batches(model, jobs, sampler, seed):
            metadata = [rows[job.row_index] for job in chunk]
            results = judge.judge(pixels_BHWC, metadata)
            with torch.no_grad():
                clip_scores = clip.score(to_tensor(pixels_BHWC), [row["prompt"] for row in metadata]).tolist()
            for job, result, clip_score in zip(chunk, results, clip_scores, strict=True):
                scored[job.row_index].append((float(result.correct), float(result.score), clip_score))
            bar.update(len(chunk))
    return scored


def at_least_two(text: str) -> int:
    """argparse type of --images: one image per row leaves no pair of images to compare."""
    images = positive_int(text)
    if images < 2:
        raise argparse.ArgumentTypeError("must be >= 2: the agreement compares images of one row, got 1")
    return images


def _auc(auc: float, pairs: int) -> str:
    """A table cell: the AUC and its pairs, or that no row had two images the judge told apart."""
    return f"{auc:.3f} ({pairs})" if pairs else "- (0 pairs: no row's images differed in the judge's verdict)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="model folder (or builtin:shapes-tiny)")
    parser.add_argument("--clip", default=TINY_CLIP, help="CLIP folder (default: the built-in tiny CLIP)")
    parser.add_argument("--tags", nargs="+", choices=TAGS, default=["two_object", "counting", "position", "color_attr"])
    parser.add_argument(
        "--images",
        type=at_least_two,
        default=8,
        help="images per row, at least 2: the agreement compares images of one row (default 8, the group size)",
    )
    parser.add_argument(
        "--every", type=positive_int, default=2, help="use every n-th of the chosen tags' rows, in file order"
    )
    parser.add_argument(
        "--seed", type=nonnegative_int, default=1, help="sampling seed (default 1; the evaluation uses 0)"
    )
    args = parser.parse_args()
    rows = chosen_rows(args.tags, args.every)  # before loading anything: a tag left without rows is an error
    config = load_config(DEFAULT_CONFIG, {"model.path": args.model})
    judge = build_judge(GenEvalDetectorConfig())
    clip = ClipScorer.from_folder(args.clip, field="--clip")  # before the generator: a wrong --clip fails at once
    scored = sample_and_score(
        load_evaluated_generator(config), config.sampler, judge, clip, rows, args.images, args.seed
    )
    print("| tag | CLIP mean | CLIP std | AUC, correct > failed (pairs) | AUC, higher partial score (pairs) |")
    print("|---|---|---|---|---|")
    for tag in args.tags:
        groups = [items for index, items in scored.items() if rows[index]["tag"] == tag]
        clip_scores = [clip_score for items in groups for *_, clip_score in items]
        binary, binary_pairs = pairwise_auc([[(c, s) for c, _, s in items] for items in groups])
        partial, partial_pairs = pairwise_auc([[(p, s) for _, p, s in items] for items in groups])
        print(
            f"| {tag} | {statistics.mean(clip_scores):.3f} | {statistics.pstdev(clip_scores):.3f} "
            f"| {_auc(binary, binary_pairs)} | {_auc(partial, partial_pairs)} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_script(main))
