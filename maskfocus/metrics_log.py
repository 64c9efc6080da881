"""metrics.jsonl: one record per learned iteration, appended as the run goes; rewound to a resume's checkpoint
(the records it will redo move to metrics.superseded.jsonl), read back for curves, comparisons and counts."""

from __future__ import annotations

import json
import math
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

from tqdm import tqdm

from maskfocus.config_base import ConfigError


class MetricsLog:
    """Appends one JSON record per line; flushes every write so a crash loses nothing.

    Opened at `start_iteration` (a resume), it first moves the records of that iteration and later ones, which the
    run is about to redo from its checkpoint, to metrics.superseded.jsonl, so that metrics.jsonl holds each
    iteration once and in order; a last line cut short by a crash is dropped there too."""

    def __init__(self, path: Path, start_iteration: int = 0, log_every: int = 1):
        self.path = path
        rewind_metrics(path, start_iteration)
        if note := unrecorded_note(path, start_iteration, log_every):
            tqdm.write(note)
        self.handle = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.handle.write(json.dumps(clean) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _parse_metrics(path: Path) -> tuple[list[dict[str, Any]], str | None]:
    """The records of a metrics JSONL, and its last line if a crash cut it short (None if not)."""
    records, lines = [], path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):
                return records, line
            raise ConfigError(f"{path}:{number}: not a JSON record ({error}); only the last may be cut short") from None
        if not isinstance(record, dict):
            raise ConfigError(f"{path}:{number}: not a JSON record of one iteration (got {type(record).__name__})")
        records.append(record)
    return records, None


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """One record per logged iteration; a last line cut short by a crash mid-write is left out."""
    return _parse_metrics(path)[0]


def running_counts(path: Path, keys: tuple[str, ...]) -> dict[str, int]:
    """The running counts `keys` as the last record of a run's metrics JSONL left them, so that a resume carries
    them on (call it after MetricsLog has rewound the file); 0 each for a new run."""
    records = read_metrics(path) if path.exists() else []
    last = records[-1] if records else {}
    return {key: int(last.get(key) or 0) for key in keys}


def unrecorded_note(path: Path, start_iteration: int, log_every: int = 1) -> str | None:
    """A resume's word on iterations before `start_iteration` (learned, in the checkpoint) without a record in
    `path`: a run killed between a checkpoint and its record (SIGKILL after `ray job stop`'s wait) loses those after
    its last record. They are the multiples of the stopped run's `train.log_every` (a resume may change it): the most
    common gap between its records (a finished run's last record is off that cadence), with fewer records the given
    `log_every`."""
    if start_iteration == 0:
        return None
    records, _ = _parse_metrics(path) if path.exists() else ([], None)
    iterations = {record.get("iteration") for record in records}
    logged = sorted(it for it in iterations if isinstance(it, int) and it < start_iteration)
    gaps = Counter(later - earlier for earlier, later in pairwise(logged))
    every = gaps.most_common(1)[0][0] if gaps else log_every
    first = (logged[-1] // every + 1) * every if logged else 0
    missing = list(range(first, start_iteration, every))
    if not missing:
        return None
    shown = ", ".join(map(str, missing[:8])) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
    return (
        f"note: {path} has no record of iteration(s) {shown}, which the checkpoint has learned (the run stopped "
        "between a checkpoint and its records): the curves skip them; the training goes on unaffected"
    )


def rewind_metrics(path: Path, start_iteration: int) -> int:
    """Before a run (re)starts at `start_iteration`: move the records it will write again, and a cut-short last
    line, from `path` to `<stem>.superseded.jsonl` beside it (appended, never lost). Returns how many moved."""
    if not path.exists():
        return 0
    records, torn = _parse_metrics(path)
    kept = [record for record in records if record.get("iteration", -1) < start_iteration]
    moved = [json.dumps(record) for record in records if record.get("iteration", -1) >= start_iteration]
    moved += [torn] if torn is not None else []
    if not moved:
        text = path.read_text()
        if text and not text.endswith("\n"):  # a whole last record whose newline a crash cut: the next would join it
            with path.open("a") as log:
                log.write("\n")
        return 0
    with path.with_name(path.stem + ".superseded.jsonl").open("a") as superseded:
        superseded.write("".join(line + "\n" for line in moved))
    staged = path.with_name(path.name + ".partial")
    staged.write_text("".join(json.dumps(record) + "\n" for record in kept))
    staged.replace(path)  # metrics.jsonl is whole at every moment
    return len(moved)
