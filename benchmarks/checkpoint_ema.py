"""Would an exponential moving average (EMA) of the weights score higher than the last weights? Measured offline.

From a finished run's checkpoints (run with a small `train.checkpoint_every`, e.g. 5), this folds the saved
transformer weights into an EMA with decay `d` per iteration, in iteration order: at a checkpoint `gap` iterations
after the previous one, ema <- d**gap * ema + (1 - d**gap) * weights. With a checkpoint every iteration that is the
usual EMA; with one every few it weighs each saved state for the iterations it stands in for. The EMA starts at
the first checkpoint (its weight after 250 iterations at d = 0.95 is under 1e-5). For each decay it writes a model
folder (a copy of the run's final `model/`, transformer replaced) to score with
`maskfocus eval --config configs/shapes_tiny.yaml --model DIR --no-clip`.

Usage: python benchmarks/checkpoint_ema.py RUN_DIR --decays 0.9 0.95 [--out DIR] [--last N]

Results: benchmarks/RESULTS.md, "Probes of the twenty-third session".
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from maskfocus.config_base import ConfigError
from maskfocus.outputs import check_output_folder, check_replaceable_model_folder, replace_folder
from maskfocus.run_state import complete_checkpoints
from maskfocus.script_args import open_fraction, positive_int, run_script

StateDict = Mapping[str, torch.Tensor]


def checkpoint_iterations(run_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, checkpoint folder) of every complete checkpoint, in iteration order."""
    found = []
    for folder in complete_checkpoints(run_dir):
        if (folder / "transformer.safetensors").is_file():
            found.append((int(folder.name.removeprefix("iter_")), folder))
    if not found:
        raise ConfigError(f"{run_dir}/checkpoints: no checkpoint with a transformer.safetensors")
    return sorted(found)


def check_run_model(run_dir: Path) -> None:
    """The run's final model/ (which every EMA folder copies) holds transformer weights: checked before any folder is
    written, so that a run stopped before saving it is one error rather than a half-written --out."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: is a file; give the run folder (the one holding checkpoints/ and model/)")
    if not run_dir.is_dir():
        raise ConfigError(f"run folder not found: {run_dir}")
    if run_dir.name in ("model", "checkpoints") and (run_dir.parent / "checkpoints").is_dir():
        raise ConfigError(f"{run_dir}: give the run folder above it, {run_dir.parent}")
    model = run_dir / "model"
    if not any((model / "transformer").glob("*.safetensors")):
        raise ConfigError(f"{model}: no transformer/*.safetensors; the run has not saved its final model folder")


def check_out(out: Path, run_dir: Path, decays: list[float]) -> None:
    """--out can be made, and replacing its decay folders (`write_model`) deletes neither the run, the model/ they
    copy nor anything but an earlier model folder; --out itself is never replaced, so the run folder or one above it
    is a fine --out."""
    check_output_folder("--out", out)
    model = (run_dir / "model").resolve()
    if model in (out.resolve(), *out.resolve().parents):
        raise ConfigError(f"--out {out}: is or lies inside {model}, which every EMA folder copies; give another folder")
    for decay in decays:
        target = (out / f"decay{decay:g}").resolve()
        if target in (run_dir.resolve(), *run_dir.resolve().parents):
            raise ConfigError(f"--out {out}: its {target.name} would replace {run_dir}; give another folder")
        if target.exists() and not target.is_dir():
            raise ConfigError(f"--out {out}: {target} is a file, where the EMA model folder {target.name} goes")
        check_replaceable_model_folder("--out", target)


def ema_of_checkpoints(states: Iterable[tuple[int, StateDict]], decay: float) -> dict[str, torch.Tensor]:
    """The EMA (decay per iteration) of state dicts given as (iteration, weights) in increasing iteration order."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"decay must be in [0, 1), got {decay}")
    ema: dict[str, torch.Tensor] | None = None
    previous = None
    for iteration, weights in states:
        if ema is None:
            ema = {name: tensor.detach().double().clone() for name, tensor in weights.items()}
        else:
            if iteration <= previous:
                raise ValueError(f"iterations must increase, got {iteration} after {previous}")
            keep = decay ** (iteration - previous)
            for name, tensor in weights.items():
                ema[name].mul_(keep).add_(tensor.double(), alpha=1.0 - keep)
        previous = iteration
    if ema is None:
        raise ValueError("no state dict to average")
    return ema


def write_model(run_dir: Path, weights: Mapping[str, torch.Tensor], dtypes: StateDict, target: Path) -> Path:
    """A copy of the run's final model folder whose transformer holds `weights` (cast back to `dtypes`), swapped in
    whole for an earlier one (an interrupted copy leaves the earlier folder, not half a model)."""

    def write(folder: Path) -> None:
        shutil.copytree(run_dir / "model", folder)
        file = next((folder / "transformer").glob("*.safetensors"))
        save_file({name: tensor.to(dtypes[name].dtype).contiguous() for name, tensor in weights.items()}, str(file))

    if target.exists():
        print(f"replacing the earlier {target}")
    replace_folder(target, write)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "run_dir",
        type=Path,
        help="a run folder with checkpoints/iter_* (score the written folders with maskfocus eval)",
    )
    parser.add_argument(
        "--decays", type=open_fraction, nargs="+", default=[0.9, 0.95], help="each in (0, 1) (default %(default)s)"
    )
    parser.add_argument(
        "--last", type=positive_int, default=None, help="use only the checkpoints of the last N iterations"
    )
    parser.add_argument("--out", type=Path, default=None, help="where the model folders go (default RUN_DIR/ema)")
    args = parser.parse_args()
    out = args.out or args.run_dir / "ema"
    check_run_model(args.run_dir)
    check_out(out, args.run_dir, args.decays)
    found = checkpoint_iterations(args.run_dir)
    if args.last is not None:
        found = [(it, folder) for it, folder in found if it > found[-1][0] - args.last]
    states = [(it, load_file(str(folder / "transformer.safetensors"))) for it, folder in found]
    for decay in args.decays:
        target = write_model(args.run_dir, ema_of_checkpoints(states, decay), states[-1][1], out / f"decay{decay:g}")
        print(f"decay {decay:g}: {len(states)} checkpoints (iterations {found[0][0]}-{found[-1][0]}) -> {target}")


if __name__ == "__main__":
    sys.exit(run_script(main))
