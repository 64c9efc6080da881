"""`maskfocus compare`'s run folders: finding them among the paths given, naming the ones it cannot read, and
keeping its outputs off their files."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from pathlib import Path

from maskfocus.compare_run import CompareError, RunRecord, load_run
from maskfocus.run_lock import LOCK_FILES

RUN_SEARCH_DEPTH = 3
"""How deep below a folder given to compare its runs are looked for (runs/, runs/ablation/, runs/ablation/lr/)."""


def find_run_folders(paths: list[Path]) -> list[Path]:
    """Each path is a run folder (it holds config.yaml) or a folder with runs below it (`runs/`, holding
    `runs/ablation/seed0` of `train --name ablation/seed0` too)."""
    folders: list[Path] = []
    for path in paths:
        if path.is_file():
            raise CompareError(f"{path}: a file; give the run folder that holds it (or a folder of run folders)")
        if not path.is_dir():
            raise CompareError(f"{path}: no such folder")
        if (path / "config.yaml").is_file():
            folders.append(path)
            continue
        runs = runs_below(path)
        if not runs:
            unreadable = [
                str(folder) for folder in ([path] if _holds_a_run(path) else runs_below(path, holds=_holds_a_run))
            ]
            also = f"; {', '.join(unreadable)}: a run's metrics or checkpoints but no config.yaml" if unreadable else ""
            raise CompareError(f"{path}: neither a run folder (no config.yaml) nor a folder of run folders{also}")
        folders.extend(runs)
    seen: set[Path] = set()
    unique = []
    for folder in folders:  # a run named twice (alone and in its parent folder) counts once
        if folder.resolve() not in seen:
            seen.add(folder.resolve())
            unique.append(folder)
    return unique


def runs_below(folder: Path, depth: int = RUN_SEARCH_DEPTH, holds: Callable[[Path], bool] | None = None) -> list[Path]:
    """The run folders (holding config.yaml; or, with `holds`, the folders it picks) below `folder`, in name
    order, looking at most `depth` levels down and never inside a run (its model/ and checkpoints/ hold none)."""
    holds = holds or _is_run
    found = []
    for child in sorted(path for path in folder.iterdir() if path.is_dir()):
        if holds(child):
            found.append(child)
        elif depth > 1 and not _is_run(child):
            found += runs_below(child, depth - 1, holds)
    return found


def _is_run(folder: Path) -> bool:
    return (folder / "config.yaml").is_file()


def load_readable_runs(folders: list[Path], curve_key: str) -> tuple[list[RunRecord], list[str]]:
    """The runs whose files read, and why each other one does not: one damaged run (a summary.json cut by a killed
    process, a broken metrics line) is left out of a comparison of many, not the end of it. With a single run, or
    none readable, its error is the command's."""
    runs, problems = [], []
    for folder in folders:
        try:
            runs.append(load_run(folder, curve_key))
        except CompareError as error:
            if len(folders) == 1:
                raise
            problems.append(str(error))
    if not runs:
        raise CompareError("no run could be read:\n  " + "\n  ".join(problems))
    return runs, problems


RUN_FILES = (
    "config.yaml",
    "config.before_resume_*.yaml",
    "metrics.jsonl",
    "metrics.superseded.jsonl",
    "reward_curve.png",
    "error.log",
    *LOCK_FILES,
)
RUN_SUBFOLDERS = (
    "eval",
    "eval.before_resume_*",
    "checkpoints",
    "model",
    "model.before_resume_*",
    "images",
    "ray_train",
)
"""What a run folder holds of its own (glob patterns); anything else there (an earlier comparison, say) may be
replaced."""


def check_outputs_spare_the_runs(outputs: dict[str, str | Path | None], runs: list[Path], base: Path | None) -> None:
    """No output (option -> path; None = not given) replaces a run's own file (its config.yaml, metrics, reward
    curve, evaluation, ...) or the --base summary: `--markdown RUN/config.yaml` had overwritten the config."""
    for option, path in outputs.items():
        if path is None or not Path(path).is_file():
            continue
        target = Path(path).resolve()
        if base is not None and target == base.resolve():
            raise CompareError(f"{option} {path}: is the --base summary, which compare reads; write it elsewhere")
        for folder in runs:
            if folder.resolve() not in target.parents:
                continue
            inside = target.relative_to(folder.resolve()).parts
            if (len(inside) == 1 and _matches(inside[0], RUN_FILES)) or _matches(inside[0], RUN_SUBFOLDERS):
                raise CompareError(f"{option} {path}: is a file of the run {folder}; write it elsewhere")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def unreadable_run_folders(paths: list[Path]) -> list[Path]:
    """Folders below the folders given (not run folders themselves; as deep as runs are looked for) that hold a
    run's metrics or checkpoints but no config.yaml: `find_run_folders` leaves them out, and the user should hear
    why."""
    parents = [path for path in paths if path.is_dir() and not _is_run(path)]
    return [folder for parent in parents for folder in runs_below(parent, holds=_holds_a_run)]


def _holds_a_run(folder: Path) -> bool:
    """A run's metrics or checkpoints without the config.yaml that compare needs to read them."""
    has_run_files = (folder / "metrics.jsonl").is_file() or (folder / "checkpoints").is_dir()
    return has_run_files and not (folder / "config.yaml").is_file()
