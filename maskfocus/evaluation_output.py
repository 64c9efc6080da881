"""An evaluation's outputs: the per-image records written as they are judged, the results and summary files (each
whole, or as it was), and the per-tag table `maskfocus eval` and `train` print."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maskfocus.outputs import write_text_whole
from maskfocus.rewards.geneval import TAGS


class RecordWriter:
    """Per-image records appended to `<path>.partial` as they are judged, renamed to `path` once all are: a failed
    or stopped evaluation keeps what it judged and leaves an earlier `path` as it was (no path: nothing on disk)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.partial = path.with_name(path.name + ".partial") if path is not None else None
        self.handle = None

    def __enter__(self) -> RecordWriter:
        if self.partial is not None:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            self.handle = self.partial.open("w")
        return self

    def write(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.handle is not None:
            self.handle.writelines(json.dumps(record) + "\n" for record in records)
            self.handle.flush()
        return records

    def __exit__(self, error_type: type[BaseException] | None, *exc_info: object) -> None:
        if self.handle is not None:
            self.handle.close()
            if error_type is None:
                self.partial.replace(self.path)


def write_results(
    records: Sequence[dict[str, Any]], summary: dict[str, Any], out: Path | None, summary_path: Path | None
) -> None:
    """Each file whole, or as it was (written beside, then renamed)."""
    if out is not None:
        write_text_whole(out, "".join(json.dumps(record) + "\n" for record in records))
    if summary_path is not None:
        write_text_whole(summary_path, json.dumps(summary, indent=2) + "\n")


def format_table(summary: dict[str, Any]) -> str:
    """Per-tag scores as a small fixed-width table."""
    lines = [f"{'tag':<14} {'score':>6}", "-" * 21]
    for tag in TAGS:
        if tag in summary["tags"]:
            lines.append(f"{tag:<14} {summary['tags'][tag]:>6.3f}")
    lines.append("-" * 21)
    lines.append(f"{'overall':<14} {summary['overall']:>6.3f}")
    if len(summary["tags"]) < len(TAGS):  # e.g. `--limit`: the first rows of shapes-geneval are all single_object
        scored = len(summary["tags"])
        what = "the 1 tag" if scored == 1 else f"the mean of the {scored} tags"
        lines[-1] += (
            f"  ({what} scored here, not the mean of all {len(TAGS)}; --limit takes rows in file order, "
            "--per-tag N takes N rows of each tag)"
        )
    if summary.get("clip_score") is not None:
        lines.append(f"{'clip_score':<14} {summary['clip_score']:>6.3f}")
    lines.append(f"{summary['num_images']} images")
    if summary.get("num_unscored"):
        lines[-1] += f" ({summary['num_unscored']} more the judge could not score: left out)"
    return "\n".join(lines)
