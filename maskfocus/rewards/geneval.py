"""GenEval scoring: the object-focused prompt-alignment reward and benchmark (Ghosh et al., NeurIPS 2023).

Re-implements the rule checks of the reference evaluator (`evaluate_images.py`) on detections that a
`Detector` has already produced, so the reward itself is pure Python: thresholding and capping per class,
`include` clauses (count, colour, relative position), `exclude` clauses, and per-tag summaries. The rules
are stated in `shared/data/geneval/SOURCE.md`; the metadata schema is checked with clear errors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
RELATIONS = ("left of", "right of", "above", "below")

_RECORD_KEYS = ("tag", "include", "exclude", "prompt")
_INCLUDE_KEYS = ("class", "count", "color", "position")
_EXCLUDE_KEYS = ("class", "count")


@dataclass(frozen=True)
class Detection:
    """One detected object: pixel box (x0, y0, x1, y1), confidence in [0, 1], colour name or None."""

    box: tuple[float, float, float, float]
    score: float
    color: str | None = None


@dataclass(frozen=True)
class Thresholds:
    """Detection filtering and geometry constants of the reference evaluator."""

    score: float = 0.3
    """A detection counts when its confidence is strictly above this (all tags but `counting`)."""
    counting_score: float = 0.9
    """Confidence a detection must strictly exceed for prompts tagged `counting`."""
    max_per_class: int = 16
    """At most this many detections per class are kept, best first, after thresholding."""
    position_margin: float = 0.1
    """Fraction of the summed box sizes (per axis) by which a centre offset is shrunk before relations."""


@dataclass(frozen=True)
class GenEvalResult:
    """Outcome of checking one image against its prompt metadata."""

    correct: bool
    """True when every include and exclude clause holds."""
    score: float
    """Partial credit: fraction of include and exclude clauses met (1.0 when correct)."""
    reasons: tuple[str, ...]
    """One human-readable line per failed clause; empty when correct."""
    graded: float | None = None
    """Graded credit: like `score`, but a clause that misses a number earns how close the count came (see
    `_check_include`, `exclude_credit`); None where the judge reports only `score` (the HTTP reward server)."""


class MetadataError(ValueError):
    """GenEval prompt metadata that does not follow the benchmark's schema."""


# ---------------------------------------------------------------------------------------------------------
# Geometry


def relative_position(box_a: Sequence[float], box_b: Sequence[float], margin: float = 0.1) -> frozenset[str]:
    """Relations ("left of", "right of", "above", "below") of box A to box B; boxes are (x0, y0, x1, y1).

    The centre offset is shrunk towards 0 on each axis by margin * (size of A + size of B) so that objects
    that merely overlap have no relation; image y grows downwards. May hold two relations (diagonal).
    """
    offset = [(box_a[k] + box_a[k + 2]) / 2 - (box_b[k] + box_b[k + 2]) / 2 for k in (0, 1)]
    dims = [abs(box_a[k + 2] - box_a[k]) + abs(box_b[k + 2] - box_b[k]) for k in (0, 1)]
    shrunk = [math.copysign(max(abs(o) - margin * d, 0.0), o) for o, d in zip(offset, dims, strict=True)]
    if all(abs(s) < 1e-3 for s in shrunk):
        return frozenset()
    norm = math.hypot(*offset)
    dx, dy = shrunk[0] / norm, shrunk[1] / norm
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return frozenset(relations)


# ---------------------------------------------------------------------------------------------------------
# Scoring


def filter_detections(
    detections: Mapping[str, Sequence[Detection]], tag: str, thresholds: Thresholds = Thresholds()
) -> dict[str, list[Detection]]:
    """Per class: keep detections above the tag's score threshold, best first, at most `max_per_class`."""
    cutoff = thresholds.counting_score if tag == "counting" else thresholds.score
    kept = {}
    for classname, dets in detections.items():
        ordered = sorted((d for d in dets if d.score > cutoff), key=lambda d: d.score, reverse=True)
        kept[classname] = ordered[: thresholds.max_per_class]
    return kept


def _check_position(
    clause: Mapping[str, Any], found: list[Detection], matched_groups: list[list[Detection] | None], margin: float
) -> str | None:
    """Reason why `found` fails the clause's position requirement, or None when every pair holds."""
    relation, target = clause["position"]
    classname = clause["class"]
    if matched_groups[target] is None:
        return f"no target for {classname} to be {relation}"
    for obj in found:
        for target_obj in matched_groups[target]:
            true_relations = relative_position(obj.box, target_obj.box, margin)
            if relation not in true_relations:
                seen = " and ".join(r for r in RELATIONS if r in true_relations) or "no relation to"
                return f"expected {classname} {relation} target, found {seen} target"
    return None


def _check_include(
    clause: Mapping[str, Any],
    objects: Mapping[str, list[Detection]],
    matched_groups: list[list[Detection] | None],
    margin: float,
) -> tuple[list[Detection], str | None, float]:
    """The clause's first `count` detections, the reason it fails (None when it holds) and its graded credit:
    1 when it holds, else the fraction of the `count` asked for that was found (of the asked colour), and 0 when
    only the position fails."""
    classname, count = clause["class"], clause["count"]
    found = objects.get(classname, [])[:count]
    color = clause.get("color")
    if len(found) < count:
        matching = len(found) if color is None else sum(d.color == color for d in found)
        return found, f"expected {classname}>={count}, found {len(found)}", matching / count
    if color is not None:
        colors = [d.color for d in found]
        if colors.count(color) < count:
            others = ", ".join(f"{colors.count(c)} {c}" for c in COLORS if c in colors)
            reason = f"expected {color} {classname}>={count}, found {colors.count(color)} {color}; and {others}"
            return found, reason, colors.count(color) / count
    if "position" in clause:
        reason = _check_position(clause, found, matched_groups, margin)
        return found, reason, 0.0 if reason else 1.0
    return found, None, 1.0


def exclude_credit(num_found: int, count: int) -> float:
    """Graded credit of an exclude clause (fewer than `count` allowed) given `num_found`: 1 when it holds; else
    1 less the excess over the `count - 1` allowed, as a fraction of them, floored at 0 (0 when none are allowed).
    With include >= n and exclude >= n + 1 (a counting prompt), the clauses' mean falls by 1/(2n) per object off n."""
    allowed = count - 1
    if num_found <= allowed:
        return 1.0
    if allowed == 0:
        return 0.0
    return max(0.0, 1.0 - (num_found - allowed) / allowed)


def evaluate(
    detections: Mapping[str, Sequence[Detection]], metadata: Mapping[str, Any], thresholds: Thresholds = Thresholds()
) -> GenEvalResult:
    """Check one image's detections (class name -> raw detections) against one validated metadata record.

    Follows the reference evaluator: include clauses are ANDed and each records its matched detections
    (None when it fails) for later position clauses to target; exclude clauses fail when at least `count`
    detections of the class survive thresholding and capping.
    """
    objects = filter_detections(detections, metadata["tag"], thresholds)
    reasons, credits = [], []
    matched_groups: list[list[Detection] | None] = []
    for clause in metadata["include"]:
        found, reason, credit = _check_include(clause, objects, matched_groups, thresholds.position_margin)
        matched_groups.append(found if reason is None else None)
        credits.append(credit)
        if reason is not None:
            reasons.append(reason)
    failed = len(reasons)
    strict_credits, strict_failed = [], False
    for clause in metadata.get("exclude", []):
        num_found = len(objects.get(clause["class"], []))
        credit, holds = exclude_credit(num_found, clause["count"]), num_found < clause["count"]
        if not holds:
            reasons.append(f"expected {clause['class']}<{clause['count']}, found {num_found}")
        if clause.get("strict"):  # the clauses strict_metadata adds count as one: see there
            strict_credits.append(credit)
            strict_failed = strict_failed or not holds
        else:
            credits.append(credit)
            failed += not holds
    if strict_credits:
        credits.append(min(strict_credits))
        failed += strict_failed
    num_clauses = len(credits)
    score = 1.0 - failed / num_clauses if num_clauses else 1.0
    graded = sum(credits) / num_clauses if num_clauses else 1.0
    return GenEvalResult(correct=not reasons, score=score, reasons=tuple(reasons), graded=graded)


def strict_metadata(metadata: Mapping[str, Any], class_names: Sequence[str]) -> dict[str, Any]:
    """The record with exclude clauses that forbid anything the prompt does not ask for: more of a named class
    than the prompt's total count of it, and any detection of the other `class_names`. GenEval's own rules only
    ask for "at least"; a reward with these clauses no longer pays for filling the image with extra objects.
    Existing exclude clauses stay (a counting prompt's already caps its class).

    The added clauses are marked `strict` and `evaluate` counts them as one clause, "nothing else", in the partial
    and graded credit: counted one by one they outweighed the prompt's own clauses, and an empty image earned 0.8 of
    a correct one's partial credit with the 4 shapes classes (0.99 with 80 COCO classes). Now it earns the share of
    "nothing else" among the clauses: 0.5 of a one-clause prompt (a single object, a colour), 0.33 of two objects
    and of a position, and 0.67 of a count, whose own cap clause an empty image also meets (0.5 without strict)."""
    named: dict[str, int] = {}
    for clause in metadata["include"]:
        named[clause["class"]] = named.get(clause["class"], 0) + clause["count"]
    excludes = [dict(clause) for clause in metadata.get("exclude", [])]
    capped = {clause["class"] for clause in excludes}
    added = [{"class": name, "count": count + 1} for name, count in named.items() if name not in capped]
    added += [{"class": name, "count": 1} for name in class_names if name not in named and name not in capped]
    return {**metadata, "exclude": excludes + [{**clause, "strict": True} for clause in added]}


def summarize(records: Iterable[tuple[str, bool | None]]) -> dict[str, Any]:
    """GenEval summary of per-image (tag, correct) records; correct None = an image the judge could not score.

    Returns {"overall": mean over the tags present of their fraction correct, "tags": {tag: fraction}
    in TAGS order, "num_images": scored images}, plus "num_unscored" when some images were left out rather than
    counted wrong. Raises ValueError on an unknown tag or no scored record.
    """
    totals = {tag: [0, 0] for tag in TAGS}
    unscored = 0
    for tag, correct in records:
        if tag not in totals:
            raise ValueError(f"unknown GenEval tag {tag!r}; allowed: {', '.join(TAGS)}")
        if correct is None:
            unscored += 1
            continue
        totals[tag][0] += bool(correct)
        totals[tag][1] += 1
    fractions = {tag: hits / n for tag, (hits, n) in totals.items() if n}
    if not fractions:
        raise ValueError(f"summarize needs at least one scored (tag, correct) record ({unscored} unscored)")
    summary = {
        "overall": sum(fractions.values()) / len(fractions),
        "tags": fractions,
        "num_images": sum(n for _, n in totals.values()),
    }
    if unscored:
        summary["num_unscored"] = unscored
    return summary


# ---------------------------------------------------------------------------------------------------------
# Metadata


def _fail(where: str, field: str, message: str) -> MetadataError:
    return MetadataError(f"{where}: {field}: {message}")


def _check_keys(obj: Mapping[str, Any], allowed: tuple[str, ...], where: str, field: str) -> None:
    unknown = [k for k in obj if k not in allowed]
    if unknown:
        raise _fail(where, field, f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")


def check_one_record_per_image(num_images: int, metadata_B: Sequence[Any]) -> None:
    """A judge's inputs pair up: zip would drop the extra images (or records) without a word."""
    if num_images != len(metadata_B):
        raise ValueError(f"{num_images} images but {len(metadata_B)} metadata records: one record per image")


def is_int(value: Any) -> bool:
    """An int that is not a bool (YAML/JSON `true` would read as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_clause(clause: Any, index: int, kind: str, where: str) -> None:
    """Schema of include[index] (kind "include") or exclude[index]; position targets must come earlier."""
    field = f"{kind}[{index}]"
    if not isinstance(clause, dict):
        raise _fail(where, field, f"expected an object with keys class, count; got {clause!r}")
    _check_keys(clause, _INCLUDE_KEYS if kind == "include" else _EXCLUDE_KEYS, where, field)
    name = clause.get("class")
    if not isinstance(name, str) or not name or name != name.strip():
        raise _fail(where, f"{field}.class", f"expected a class name without surrounding spaces, got {name!r}")
    if not is_int(clause.get("count")) or clause["count"] < 1:
        raise _fail(where, f"{field}.count", f"expected an integer >= 1, got {clause.get('count')!r}")
    most = Thresholds.max_per_class  # more are never kept, so an include clause asking for more could never hold
    if kind == "include" and clause["count"] > most:
        raise _fail(
            where, f"{field}.count", f"expected at most {most} (GenEval keeps {most} per class), got {clause['count']}"
        )
    if "color" in clause and clause["color"] not in COLORS:
        raise _fail(where, f"{field}.color", f"expected one of {', '.join(COLORS)}; got {clause['color']!r}")
    if "position" in clause:
        position = clause["position"]
        ok = (
            isinstance(position, list)
            and len(position) == 2
            and position[0] in RELATIONS
            and is_int(position[1])
            and 0 <= position[1] < index
        )
        if not ok:
            earlier = f"0..{index - 1}" if index else "none: include[0] cannot have a position"
            raise _fail(
                where,
                f"{field}.position",
                f"expected [relation, index] with relation in {', '.join(RELATIONS)} and index of an earlier "
                f"include clause ({earlier}); got {position!r}",
            )


def validate_metadata(obj: Any, where: str = "<metadata>") -> dict[str, Any]:
    """Check one GenEval prompt record against the schema and return it; raise MetadataError otherwise."""
    if not isinstance(obj, dict):
        raise _fail(where, "record", f"expected a JSON object, got {type(obj).__name__}")
    _check_keys(obj, _RECORD_KEYS, where, "record")
    if obj.get("tag") not in TAGS:
        raise _fail(where, "tag", f"expected one of {', '.join(TAGS)}; got {obj.get('tag')!r}")
    if not isinstance(obj.get("prompt"), str) or not obj["prompt"].strip():
        raise _fail(where, "prompt", f"expected a non-empty string, got {obj.get('prompt')!r}")
    include = obj.get("include")
    if not isinstance(include, list) or not include:
        raise _fail(where, "include", f"expected a non-empty list of clauses, got {include!r}")
    for index, clause in enumerate(include):
        _validate_clause(clause, index, "include", where)
    exclude = obj.get("exclude", [])
    if not isinstance(exclude, list):
        raise _fail(where, "exclude", f"expected a list of {{class, count}} clauses, got {exclude!r}")
    for index, clause in enumerate(exclude):
        _validate_clause(clause, index, "exclude", where)
    _check_satisfiable(include, exclude, where)
    return obj


def _check_satisfiable(include: list[dict[str, Any]], exclude: list[dict[str, Any]], where: str) -> None:
    """An exclude clause (fewer than `count`) at or below an include clause's count of its class: no image holds."""
    for index, clause in enumerate(exclude):
        asked = max((c["count"] for c in include if c["class"] == clause["class"]), default=0)
        if clause["count"] <= asked:
            raise _fail(
                where,
                f"exclude[{index}].count",
                f"forbids {clause['count']} or more {clause['class']} while an include clause asks for {asked}: no "
                f"image could be correct (GenEval's counting rows exclude count + 1)",
            )


def iter_metadata_lines(lines: Iterable[str], source_name: str) -> Iterator[dict[str, Any]]:
    """Validated records from JSONL lines (blank lines skipped); errors start with `source_name:lineno:`."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{source_name}:{lineno}"
        try:
            obj = json.loads(line, object_pairs_hook=_refuse_duplicate_keys)
        except json.JSONDecodeError as err:
            raise MetadataError(f"{where}: malformed JSON: {err.msg} at column {err.colno}") from None
        except RecursionError:
            raise MetadataError(f"{where}: malformed JSON: nested too deeply to be a prompt record") from None
        except ValueError as err:  # a key given twice
            raise MetadataError(f"{where}: {err}") from None
        yield validate_metadata(obj, where)


def _refuse_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json's object hook: a key given twice is an error (json keeps the last silently)."""
    keys = [key for key, _ in pairs]
    if repeated := sorted({key for key in keys if keys.count(key) > 1}):
        raise ValueError(f"key(s) given twice in one object: {', '.join(repeated)}")
    return dict(pairs)


def load_metadata(path: str | Path) -> list[dict[str, Any]]:
    """All records of a GenEval `evaluation_metadata.jsonl` file, validated."""
    try:
        with open(path, encoding="utf-8-sig") as lines:  # -sig: a byte-order mark some editors write is skipped
            return list(iter_metadata_lines(lines, str(path)))
    except UnicodeDecodeError as error:
        raise MetadataError(f"{path}: not UTF-8 text ({error.reason}); save it as UTF-8") from None
