"""Checks of the command line's output paths, made before the work whose result they hold: a run of several minutes
should not end in a traceback because `--out` names a folder or a type nobody can write."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from maskfocus.config_base import ConfigError
from maskfocus.stopping import SignalsHeld


def image_suffixes() -> list[str]:
    """The file suffixes PIL can write (image grids)."""
    from PIL import Image

    Image.init()
    return sorted(suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.SAVE)


def figure_suffixes() -> list[str]:
    """The file suffixes matplotlib can write (comparison figures)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    return sorted(f".{suffix}" for suffix in FigureCanvasAgg(Figure()).get_supported_filetypes())


@functools.lru_cache
def writes(kind: Literal["image", "figure"], suffix: str) -> bool:
    """Whether an RGB image grid (PIL) or a figure (matplotlib) saves as `suffix` here: a type both list can still
    fail (PIL's XBM takes no RGB, its HDF5 needs a handler installed; matplotlib's PGF runs xelatex)."""
    import io

    if suffix not in (image_suffixes() if kind == "image" else figure_suffixes()):
        return False
    try:
        if kind == "image":
            from PIL import Image

            Image.new("RGB", (2, 2)).save(io.BytesIO(), format=Image.registered_extensions()[suffix])
        else:
            from matplotlib.figure import Figure

            figure = Figure(figsize=(0.5, 0.5))
            figure.text(0.5, 0.5, "x")  # text is what needs a TeX system in some writers
            figure.savefig(io.BytesIO(), format=suffix[1:])
    except Exception:  # whatever the writer raises, it cannot write this type here
        return False
    return True


def file_in_the_way(folder: Path) -> Path | None:
    """The file (or dangling link) at `folder` or at the first existing folder above it, which stops `folder` from
    being made; None when it can be made (or exists)."""
    for candidate in (folder.absolute(), *folder.absolute().parents):
        if candidate.is_dir():
            return None
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return None


def check_output_folder(option: str, folder: Path) -> None:
    """`folder` (given as `option`) exists as a folder or can be made: no file at it or on its way, and the folder
    (or the first one above it that exists) can be written."""
    if (blocking := file_in_the_way(folder)) is not None:
        where = "is a file" if blocking == folder.absolute() else f"cannot be made: {blocking} is a file"
        raise ConfigError(f"{option} {folder}: {where}; give a folder")
    check_writable(option, folder)


def check_writable(option: str, path: Path) -> None:
    """The first path that exists at or above `path` (given as `option`) can be written (a folder: things made in
    it). A read-only mount refuses even root here."""
    existing = next(found for found in (path.absolute(), *path.absolute().parents) if found.exists())
    if not os.access(existing, os.W_OK | os.X_OK if existing.is_dir() else os.W_OK) or not _can_write(existing):
        where = "" if existing == path.absolute() else f"cannot be made: {existing} "
        raise ConfigError(f"{option} {path}: {where}cannot be written (permissions or a read-only file system)")


def _can_write(existing: Path) -> bool:
    """A file can be made in the folder `existing` (made and deleted at once) or the file `existing` opened for
    appending (not written): os.access answers yes to root even where the file system refuses, as /proc does."""
    try:
        if existing.is_dir():
            with tempfile.TemporaryFile(dir=existing):
                pass
        else:
            with existing.open("ab"):
                pass
    except OSError:
        return False
    return True


RUN_FOLDER_PARTS = ("config.yaml", "metrics.jsonl", "checkpoints")
"""What a run folder holds that a model folder does not."""


def check_replaceable_model_folder(option: str, folder: Path) -> None:
    """A script that deletes and rewrites the model folder `folder` may replace an empty folder or an earlier model
    folder (a `transformer/` and no run's parts), never a run folder, a runs folder or anything else kept there."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    if (folder / "transformer").is_dir() and not any((folder / part).exists() for part in RUN_FOLDER_PARTS):
        return
    raise ConfigError(
        f"{option} {folder}: holds something other than a model folder, and writing it would delete it all; give a "
        "new folder, or an earlier model folder to replace"
    )


def check_output_file(option: str, path: str | Path | None, kind: Literal["image", "figure", "file"]) -> None:
    """`path` (given as `option`) can be written as a `kind`: not an existing folder, no file where a folder on its
    way would be made, and a suffix that kind's writer knows. None (the option not given) passes."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file path")
    if (blocking := file_in_the_way(path.parent)) is not None:
        raise ConfigError(f"{option} {path}: {blocking} is a file, so the folder cannot be made")
    check_writable(option, path)  # before the work whose result it would lose
    if kind == "file":
        return
    if not writes(kind, path.suffix.lower()):
        given = repr(path.suffix) if path.suffix else "none (no suffix)"
        common = ", ".join(suffix for suffix in (".png", ".jpg", ".pdf", ".svg") if writes(kind, suffix))
        writer = "PIL" if kind == "image" else "matplotlib"
        raise ConfigError(
            f"{option} {path}: cannot write {kind}s of type {given}; use {common}, or another type {writer} writes"
        )


def check_distinct_files(paths: dict[str, str | Path | None]) -> None:
    """No two of the given options name the same file: an output written over another output, or over an input the
    command reads (`eval --out` over its `--metadata`), would lose it. Options not given (None) are skipped."""
    seen: dict[Path, str] = {}
    for option, path in paths.items():
        if path is None:
            continue
        resolved = Path(path).expanduser().resolve()
        if resolved in seen:
            raise ConfigError(f"{seen[resolved]} and {option} name the same file {path}; give each its own")
        seen[resolved] = option


def replace_folder(target: Path, write: Callable[[Path], None], on_swapped: Callable[[], None] | None = None) -> None:
    """`write(folder)` into a sibling `.NAME.partial`, then swap it for `target`: a stop, a full disk or a crash
    while writing leaves `target` as it was. Between the two renames the old folder waits as `.NAME.old`, which the
    next call puts back if `target` is missing. `on_swapped` runs right after the swap, before the old folder is
    deleted (a stop during that deletion must not lose the record of the new folder)."""
    partial = target.with_name(f".{target.name}.partial")
    old = target.with_name(f".{target.name}.old")
    restore_interrupted_swap(target)
    for leftover in (partial, old):
        if leftover.exists():
            shutil.rmtree(leftover)
    write(partial)
    try:
        with SignalsHeld():  # a stop between the renames and `on_swapped` left new weights beside the old record
            if target.exists():
                target.rename(old)
            partial.rename(target)
            if on_swapped is not None:
                on_swapped()
    finally:  # also when the held stop lands on leaving: the old folder (GBs of a Meissonic model) goes
        if old.exists() and target.exists():
            shutil.rmtree(old)


def restore_interrupted_swap(target: Path) -> bool:
    """Put `replace_folder`'s `.NAME.old` back as `target` when `target` is missing (a crash between its two
    renames left the old folder as the only copy); whether it did."""
    old = target.with_name(f".{target.name}.old")
    if old.exists() and not target.exists():
        old.rename(target)
        return True
    return False


def write_text_whole(path: Path, text: str) -> None:
    """`path` holds `text`, or what it held before: written beside it, then renamed over it (a process killed mid-write
    left a cut summary.json, which `maskfocus compare` then refused)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
