"""Prompts and captions of the shapes world, in the GenEval format.

Prompt metadata and text follow the GenEval benchmark's six tags and templates exactly ("a photo of a circle",
"a photo of a circle and a square", "a photo of three squares", "a photo of a red circle", "a photo of a circle
left of a square", "a photo of a red circle and a blue square"). Loose captions describe random scenes only
partly (some objects, seldom counts, positions or colours) but never falsely; they are the pretraining text.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import numpy as np

from maskfocus.rewards.geneval import TAGS
from maskfocus.shapes.scene import Scene, ShapeObject, random_scene, relation_strength
from maskfocus.shapes.world import (
    COLORS,
    MAX_OBJECTS,
    NUMBER_WORDS,
    OPPOSITE_RELATION,
    PLURALS,
    RELATIONS,
    SHAPES,
    SIZES,
    article,
)

PREFIX = "a photo of"

Metadata = dict[str, Any]


def _noun_phrase(shape: str, count: int = 1, color: str | None = None) -> str:
    """Noun phrase: "a circle", "an orange square", "three triangles", "two red diamonds"."""
    words = ([color] if color else []) + [shape if count == 1 else PLURALS[shape]]
    lead = article(words[0]) if count == 1 else NUMBER_WORDS[count]
    return " ".join([lead, *words])


def single_object(shape: str) -> Metadata:
    """Metadata of "a photo of a circle"."""
    return {
        "tag": "single_object",
        "include": [{"class": shape, "count": 1}],
        "prompt": f"{PREFIX} {_noun_phrase(shape)}",
    }


def two_object(first: str, second: str) -> Metadata:
    """Metadata of "a photo of a circle and a square"."""
    include = [{"class": first, "count": 1}, {"class": second, "count": 1}]
    prompt = f"{PREFIX} {_noun_phrase(first)} and {_noun_phrase(second)}"
    return {"tag": "two_object", "include": include, "prompt": prompt}


def counting(shape: str, count: int) -> Metadata:
    """Metadata of "a photo of three squares", with GenEval's exclude clause at count + 1."""
    return {
        "tag": "counting",
        "include": [{"class": shape, "count": count}],
        "exclude": [{"class": shape, "count": count + 1}],
        "prompt": f"{PREFIX} {_noun_phrase(shape, count)}",
    }


def colors(shape: str, color: str) -> Metadata:
    """Metadata of "a photo of a red circle"."""
    include = [{"class": shape, "count": 1, "color": color}]
    return {"tag": "colors", "include": include, "prompt": f"{PREFIX} {_noun_phrase(shape, color=color)}"}


def position(reference: str, subject: str, relation: str) -> Metadata:
    """Metadata of "a photo of a <subject> <relation> a <reference>"; the position is on the SECOND clause."""
    include = [{"class": reference, "count": 1}, {"class": subject, "count": 1, "position": [relation, 0]}]
    prompt = f"{PREFIX} {_noun_phrase(subject)} {relation} {_noun_phrase(reference)}"
    return {"tag": "position", "include": include, "prompt": prompt}


def color_attr(first: str, first_color: str, second: str, second_color: str) -> Metadata:
    """Metadata of "a photo of a red circle and a blue square"."""
    include = [
        {"class": first, "count": 1, "color": first_color},
        {"class": second, "count": 1, "color": second_color},
    ]
    prompt = f"{PREFIX} {_noun_phrase(first, color=first_color)} and {_noun_phrase(second, color=second_color)}"
    return {"tag": "color_attr", "include": include, "prompt": prompt}


@cache
def _prompt_space(tag: str) -> tuple[Metadata, ...]:
    pairs = list(itertools.permutations(SHAPES, 2))
    if tag == "single_object":
        return tuple(single_object(s) for s in SHAPES)
    if tag == "two_object":
        return tuple(two_object(a, b) for a, b in pairs)
    if tag == "counting":
        return tuple(counting(s, n) for s in SHAPES for n in NUMBER_WORDS)
    if tag == "colors":
        return tuple(colors(s, c) for s in SHAPES for c in COLORS)
    if tag == "position":
        return tuple(position(a, b, rel) for a, b in pairs for rel in RELATIONS)
    if tag == "color_attr":
        color_pairs = list(itertools.permutations(COLORS, 2))
        return tuple(color_attr(a, ca, b, cb) for a, b in pairs for ca, cb in color_pairs)
    raise ValueError(f"unknown tag {tag!r}; allowed: {', '.join(TAGS)}")


def enumerate_prompts(tag: str) -> list[Metadata]:
    """Every prompt of a tag, as fresh metadata dicts in a fixed order.

    Sizes: single_object 4, two_object 12 (ordered pairs of different shapes), counting 12 (two to four),
    colors 24, position 48 (ordered pairs x 4 relations), color_attr 360 (ordered shape pairs x ordered pairs of
    different colours).
    """
    return [_copy(meta) for meta in _prompt_space(tag)]


def sample_metadata(tag: str, rng: np.random.Generator) -> Metadata:
    """One prompt of a tag, uniformly at random."""
    space = _prompt_space(tag)
    return _copy(space[rng.integers(len(space))])


def _copy(meta: Metadata) -> Metadata:
    out = dict(meta)
    out["include"] = [{k: list(v) if isinstance(v, list) else v for k, v in c.items()} for c in meta["include"]]
    if "exclude" in meta:
        out["exclude"] = [dict(c) for c in meta["exclude"]]
    return out


def vocabulary() -> list[str]:
    """Every lower-case word a prompt or caption of this module can produce, sorted."""
    words = {"a", "an", "and", *PREFIX.split(), *SHAPES, *PLURALS.values(), *COLORS, *NUMBER_WORDS.values()}
    words.update(word for relation in RELATIONS for word in relation.split())
    return sorted(words)


HeldOut = Literal["text", "meaning"]


class TrainingPrompts(Iterator[Metadata]):
    """Endless stream of prompt metadata for RL training: a tag (uniform, or by `weights`), then a uniform prompt
    of that tag.

    Prompts in ``exclude`` (default: the held-out shapes-geneval prompts) are never yielded for a tag whose
    prompt space is larger than what is held out of it (position, color_attr). The exclusion is by text, so a
    held-out prompt's mirrored relation or swapped clauses may be yielded (see maskfocus.shapes.evalset). The
    whole prompt space of single_object, two_object, counting and colors is in the eval set, so for those tags
    disjointness is impossible and the stream samples the full space: train and eval prompts overlap there by
    design.
    """

    def __init__(
        self,
        seed: int,
        tags: Sequence[str] = TAGS,
        exclude: Sequence[Metadata] | None = None,
        weights: Sequence[float] | None = None,
        held_out: HeldOut = "text",
    ) -> None:
        """`held_out`: "text" skips the excluded prompts' texts; "meaning" also every prompt that GenEval scores
        the same way (`equivalence_key`)."""
        if exclude is None:
            from maskfocus.shapes.evalset import load_eval_set  # evalset builds on this module

            exclude = load_eval_set()
        key = (lambda meta: meta["prompt"]) if held_out == "text" else equivalence_key
        excluded = {key(meta) for meta in exclude}
        self.rng = np.random.default_rng(seed)
        self.tags = tuple(tags)
        self.tag_probabilities = None if weights is None else tag_probabilities(weights)
        self.pools: dict[str, list[Metadata]] = {}
        for tag in self.tags:
            space = list(_prompt_space(tag))
            kept = [meta for meta in space if key(meta) not in excluded]
            self.pools[tag] = kept or space

    def __next__(self) -> Metadata:
        pool = self.pools[self.tags[draw_index(self.rng, len(self.tags), self.tag_probabilities)]]
        return _copy(pool[self.rng.integers(len(pool))])


def equivalence_key(meta: Metadata) -> tuple:
    """Equal for prompts that GenEval's rules judge correct on the same images (partial credit may differ): a
    position prompt read from either object ("a circle below a diamond" and "a diamond above a circle"), and
    clauses in any order ("a red circle and a blue square" and "a blue square and a red circle")."""
    if meta["tag"] == "position":
        reference, subject = meta["include"]
        relation = subject["position"][0]
        readings = (
            (subject["class"], relation, reference["class"]),
            (reference["class"], OPPOSITE_RELATION[relation], subject["class"]),
        )
        return ("position", min(readings))
    clauses = sorted((c["class"], c.get("count", 1), c.get("color") or "") for c in meta["include"])
    return (meta["tag"], tuple(clauses))


def tag_probabilities(weights: Sequence[float]) -> np.ndarray:
    """Relative tag weights as probabilities (the config has checked them: >= 0, positive sum)."""
    array = np.asarray(weights, dtype=np.float64)
    return array / array.sum()


def draw_index(rng: np.random.Generator, size: int, probabilities: np.ndarray | None) -> int:
    """Uniform over range(size), or by `probabilities`; the uniform draw is the stream older runs used."""
    if probabilities is None:
        return int(rng.integers(size))
    return int(rng.choice(size, p=probabilities))


@dataclass(frozen=True)
class CaptionMix:
    """How loosely pretraining captions describe their scenes (every probability is per caption or per group)."""

    p_drop: float = 0.3
    """Each shape class of the scene is left out of the caption with this probability (one always stays)."""
    p_color: float = 0.3
    """A mentioned class whose objects all share one colour gets that colour word."""
    p_count: float = 0.3
    """A mentioned class with several objects gets its number word ("three circles"), else the bare plural."""
    p_position: float = 0.2
    """A scene of exactly two objects of different shapes is captioned by a true relation ("a circle left of
    a square"), when one holds."""
    num_objects_weights: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)
    """Distribution of the number of objects (1, 2, ...) of pretraining scenes."""
    object_sizes: tuple[float, ...] = SIZES
    """Object sizes of pretraining scenes, a subset of the world's SIZES. One size makes every shape a fixed stamp
    of tokens, so the generator never has to agree across tokens on how far an object extends."""

    def __post_init__(self) -> None:
        """Refuse settings the scene and caption draws cannot use, when the config is read (`maskfocus pretrain
        --set`), not once the stage they belong to starts, an hour into a run."""
        for name in ("p_drop", "p_color", "p_count", "p_position"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a probability: between 0 and 1, got {getattr(self, name)}")
        weights = self.num_objects_weights
        if not 1 <= len(weights) <= MAX_OBJECTS or min(weights) < 0 or sum(weights) <= 0:
            raise ValueError(
                f"num_objects_weights: 1 to {MAX_OBJECTS} weights (of 1, 2, ... objects), none negative and not all "
                f"0; got {list(weights)}"
            )
        if not self.object_sizes or any(size not in SIZES for size in self.object_sizes):
            raise ValueError(f"object_sizes: a non-empty subset of {list(SIZES)}; got {list(self.object_sizes)}")


def _group_phrase(objects: list[ShapeObject], rng: np.random.Generator, mix: CaptionMix) -> str:
    """A true noun phrase for all objects of one shape class: "a circle", "red circles", "three squares"."""
    shape, count = objects[0].shape, len(objects)
    shared = {obj.color for obj in objects}
    color = objects[0].color if len(shared) == 1 and rng.random() < mix.p_color else None
    if count == 1 or rng.random() < mix.p_count:
        return _noun_phrase(shape, count, color)
    return " ".join(([color] if color else []) + [PLURALS[shape]])


def _position_caption(scene: Scene, rng: np.random.Generator, mix: CaptionMix) -> str | None:
    """Caption "a photo of a circle left of a square" of a two-object scene, or None when no relation holds."""
    subject, reference = scene.objects if rng.random() < 0.5 else scene.objects[::-1]
    true = [rel for rel in RELATIONS if relation_strength(subject.box, reference.box, rel) > 0.5]
    if not true:
        return None
    relation = true[rng.integers(len(true))]
    phrases = [_group_phrase([obj], rng, mix) for obj in (subject, reference)]
    return f"{PREFIX} {phrases[0]} {relation} {phrases[1]}"


def loose_caption(scene: Scene, rng: np.random.Generator, mix: CaptionMix = CaptionMix()) -> str:
    """A true but incomplete caption of a scene, built from vocabulary() words in GenEval-like phrasing.

    Singular phrases ("a circle") are used only for a class with exactly one object in the scene, number words
    only with the class's exact count, bare plurals for classes with several objects, colour words only when
    every object of the class has that colour, relations only when GenEval's rule holds.
    """
    if not scene.objects:
        return "a photo"
    shapes = [s for s in SHAPES if scene.of_shape(s)]
    if len(scene.objects) == 2 and len(shapes) == 2 and rng.random() < mix.p_position:
        caption = _position_caption(scene, rng, mix)
        if caption is not None:
            return caption
    kept = [s for s in shapes if rng.random() >= mix.p_drop] or [shapes[rng.integers(len(shapes))]]
    order = rng.permutation(len(kept))
    return f"{PREFIX} " + " and ".join(_group_phrase(scene.of_shape(kept[i]), rng, mix) for i in order)


def pretraining_pair(rng: np.random.Generator, mix: CaptionMix = CaptionMix()) -> tuple[Scene, str]:
    """A random scene (object count drawn from ``mix.num_objects_weights``) and a loose caption of it."""
    weights = np.asarray(mix.num_objects_weights, dtype=np.float64)  # checked by CaptionMix
    scene = random_scene(rng, int(rng.choice(len(weights), p=weights / weights.sum())) + 1, mix.object_sizes)
    return scene, loose_caption(scene, rng, mix)
