"""The fixed evaluation set "shapes-geneval": GenEval-format prompt metadata for the shapes world.

About 100 rows per tag. position and color_attr hold out part of their prompt space: 20 distinct position
prompts (5 per relation) repeated 5 times, and 100 distinct color_attr prompts; TrainingPrompts never yields
those as text. An equivalent paraphrase can still be trained on: GenEval's position rule is symmetric ("a circle
below a diamond" holds exactly when "a diamond above a circle" does) and color_attr's two clauses are unordered,
so 12 of the 20 held-out position prompts and 78 of the 100 held-out color_attr prompts have an equivalent
training prompt. Scores on those tags measure the trained behaviour, not generalisation to unseen prompts (on the
shipped base RL lifts position from 0.07 to about 0.2, mostly by drawing both objects, and color_attr not at
all: benchmarks/RESULTS.md). The hold-out is RL's only: the pretraining captions come from the same templates, and
the generator's and the tiny CLIP's pretraining corpora hold every held-out prompt text, with matching images
(MODEL_CARD.md).

The other tags' whole prompt space is smaller than 100, so every prompt of the tag is repeated evenly: single_object
4 x 25 = 100, two_object 12 x 8 = 96, counting 12 x 8 = 96, colors 24 x 4 = 96 (588 rows in all).
Repeated rows are the same prompt sampled with different seeds, as GenEval itself draws several images a prompt.

Regenerate the shipped file with ``python -m maskfocus.shapes.evalset``. The detector's quality bar on this set is
`maskfocus.shapes.detector.score_ground_truth`.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from maskfocus.rewards.geneval import TAGS
from maskfocus.shapes.prompts import enumerate_prompts
from maskfocus.shapes.world import RELATIONS

NAME = "shapes-geneval"
PATH = Path(__file__).parent / "data" / "shapes_geneval.jsonl"

ROWS_PER_TAG = 100
"""Target number of rows per tag (rounded down to whole repetitions of the tag's distinct prompts)."""

HELD_OUT_POSITION_PER_RELATION = 5
"""Distinct position prompts held out per relation (of 12 ordered shape pairs)."""

HELD_OUT_COLOR_ATTR = 100
"""Distinct color_attr prompts held out (of 360)."""


def _held_out(tag: str, rng: np.random.Generator) -> list[dict[str, Any]]:
    """The distinct prompts of a tag that the eval set uses, in prompt-space order."""
    space = enumerate_prompts(tag)
    if tag == "position":
        by_relation = defaultdict(list)
        for meta in space:
            by_relation[meta["include"][1]["position"][0]].append(meta)
        chosen = []
        for relation in RELATIONS:
            picks = rng.choice(len(by_relation[relation]), HELD_OUT_POSITION_PER_RELATION, replace=False)
            chosen.extend(by_relation[relation][i] for i in sorted(picks))
        return chosen
    if tag == "color_attr":
        return [space[i] for i in sorted(rng.choice(len(space), HELD_OUT_COLOR_ATTR, replace=False))]
    return space


def build_eval_set(seed: int = 0) -> list[dict[str, Any]]:
    """Regenerate the eval set: per tag, its distinct prompts repeated round-robin to ~ROWS_PER_TAG rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for tag in TAGS:
        distinct = _held_out(tag, rng)
        rows.extend(dict(meta) for _ in range(ROWS_PER_TAG // len(distinct)) for meta in distinct)
    return rows


def _ordered(row: dict[str, Any]) -> dict[str, Any]:
    """A row with GenEval's key order: tag, include, exclude (when present), prompt."""
    return {key: row[key] for key in ("tag", "include", "exclude", "prompt") if key in row}


def write_eval_set(path: Path = PATH, seed: int = 0) -> None:
    """Write build_eval_set(seed) as JSON lines."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in build_eval_set(seed):
            f.write(json.dumps(_ordered(row)) + "\n")


def load_eval_set(path: Path = PATH) -> list[dict[str, Any]]:
    """Read the shipped eval set (a list of GenEval metadata dicts)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def eval_prompts() -> set[str]:
    """The prompt texts of the shipped eval set."""
    return {row["prompt"] for row in load_eval_set()}


if __name__ == "__main__":
    write_eval_set()
    print(f"wrote {len(load_eval_set())} rows of {NAME} to {PATH}")
