"""What `maskfocus`'s commands and the benchmark scripts share at the command line: argparse types for counts and
fractions, the errors that are the user's to fix, and a `main` wrapper that prints such an error as one line
(`object_counts.py: error: model folder not found: runs/x/model`, exit 2) instead of a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from maskfocus.config_base import ConfigError


def user_errors() -> tuple[type[Exception], ...]:
    """Exceptions whose message says what to fix; a command prints the message alone."""
    from maskfocus.compare_run import CompareError
    from maskfocus.evaluation import BenchmarkError
    from maskfocus.models.base import ModelLoadError
    from maskfocus.models.tokenizer import UnknownWordError
    from maskfocus.rewards.geneval import MetadataError
    from maskfocus.rewards.geneval_client import RewardServerError

    return (
        ConfigError,
        ModelLoadError,
        UnknownWordError,
        MetadataError,
        BenchmarkError,
        RewardServerError,
        CompareError,
        FileNotFoundError,
    )


def _whole_number_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
    return value


def in_process_train_command(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """A probe that patches the in-process trainer: its own options from `parser`, and the `maskfocus train` command
    line of the rest, forced in-process. Asking for Ray (`--executor ray`, `--set train.executor=ray`) is refused
    here, in the probe's words: the train command would blame an --executor the user never typed."""
    parser.add_argument("--executor", choices=["local"], help="in-process only (the Ray learner is not patched)")
    parser.epilog = "Any other argument goes to `maskfocus train` (see `maskfocus train --help`)."
    args, rest = parser.parse_known_args(argv)
    for item in rest:
        key, _, value = item.removeprefix("--set=").partition("=")
        if key == "train.executor" and value != "local":
            parser.error(f"--set {item.removeprefix('--set=')}: this probe trains in-process only")
    return args, ["train", *(rest[1:] if rest[:1] == ["train"] else rest), "--executor", "local"]


def positive_int(text: str) -> int:
    """argparse type of the count options: an error naming the option (not a --set key) for 0 or less."""
    return _whole_number_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type of the seed options: a whole number >= 0 (a negative seed folded onto a large positive one)."""
    return _whole_number_at_least(text, 0)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def fraction(text: str) -> float:
    """argparse type of a share or ratio in (0, 1]."""
    value = _number(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def open_fraction(text: str) -> float:
    """argparse type of a value strictly between 0 and 1 (an EMA decay: 0 keeps only the last weights, 1 only the
    first, neither an average)."""
    value = _number(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {value}")
    return value


def probability(text: str) -> float:
    """argparse type of a confidence threshold in [0, 1]."""
    value = _number(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(text)
    if value < 0.0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0.0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def run_script(main: Callable[[], int | None], prog: str | None = None) -> int:
    """Run a script's `main()`: a user error (see `user_errors`) is one line on stderr and exit status 2; a reader
    gone away (`script.py | head`) ends it quietly with 141; Ctrl-C is one line and 130."""
    prog = prog or Path(sys.argv[0]).name
    try:
        status = main()
        sys.stdout.flush()  # here, so that a reader gone away is caught below rather than at exit
        return status or 0
    except user_errors() as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback through torch (`train` handles its own first)
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


def check_not_inside(option: str, out: Path, source_option: str, source: Path) -> None:
    """A script that replaces its output folder must not be pointed at the folder it reads from, above it, or at a
    part of it (`positional_base.py BASE/vqvae --base BASE` would delete the base's VQ)."""
    out, source = Path(out).resolve(), Path(source).resolve()
    if out == source or out in source.parents or source in out.parents:
        raise ConfigError(
            f"{option} {out}: overlaps {source_option} {source}, which replacing it would damage; give another folder"
        )


def check_model_output(
    out: Path, source_option: str, source: str, kind: str, extra_parts: tuple[str, ...] = ()
) -> Path:
    """For a script that writes a new model folder OUT from a model folder it reads (`kind`: `amused` or
    `meissonic`): OUT can be made and holds nothing but an earlier model folder, the source has a generator's parts
    and `extra_parts`, and OUT does not overlap the source. All before the training that would otherwise end in the
    failure. Returns the resolved source folder."""
    from maskfocus.models.loading import check_generator_folder
    from maskfocus.outputs import check_output_folder, check_replaceable_model_folder

    check_output_folder("OUT", out)
    source_folder = check_generator_folder(source, kind, extra_parts)
    check_not_inside("OUT", out, source_option, source_folder)
    check_replaceable_model_folder("OUT", out)
    return source_folder


TRUST_FLAG = "--trust-checkpoint-code"


def check_trust_flag(model: str, trust_checkpoint_code: bool) -> None:
    """A script's MODEL that is a Meissonic-format folder (its transformer a class of its own) without
    --trust-checkpoint-code is named as the flag to give: the loader's message names the config key model.kind, which
    these scripts do not take. A folder that is not there, or not a model, is left to the loader's checks."""
    from maskfocus.models.base import ModelLoadError
    from maskfocus.models.loading import own_transformer_class, resolve_model_path

    if trust_checkpoint_code:
        return
    try:
        class_name = own_transformer_class(resolve_model_path(model))
    except (ModelLoadError, OSError):
        return
    if class_name is not None:
        raise ModelLoadError(
            f"{model}: a Meissonic-format folder (its transformer is a {class_name}, with its own code); give "
            f"{TRUST_FLAG} to load it (its transformer/transformer.py then runs)"
        )


def script_model_overrides(model: str, trust_checkpoint_code: bool) -> dict:
    """`model_folder_overrides` for a script's MODEL and --trust-checkpoint-code, the flag checked first."""
    from maskfocus.config import model_folder_overrides

    check_trust_flag(model, trust_checkpoint_code)
    return model_folder_overrides(model, trust_checkpoint_code)


SAMPLING_ONLY = {"selection.strategy": "all"}
"""Config overrides for a script that only samples: the run's K critical steps (which need T >= K + 1) do not apply
to it, so a short sampler (`sampler.num_steps=2`) is not refused on their account."""
