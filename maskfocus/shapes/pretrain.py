"""`maskfocus pretrain`: rebuild every weight of the built-in tiny model and tiny CLIP from a seed.

Stages: `vq` (tokenizer), `generator` (text encoder + masked transformer), `clip`. Skipped stages reuse
the weights already in the output folder. Afterwards the model is measured (base shapes-geneval score,
VQ round-trip detector score, CLIP zero-shot accuracy) and MODEL_CARD.md is written beside the weights.
"""

from __future__ import annotations

import functools
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from tqdm import tqdm

from maskfocus import run_lock
from maskfocus.config import Section
from maskfocus.config_base import ConfigError
from maskfocus.outputs import (
    RUN_FOLDER_PARTS,
    check_output_folder,
    replace_folder,
    restore_interrupted_swap,
    write_text_whole,
)
from maskfocus.shapes.pretrain_clip import ClipPretrainConfig
from maskfocus.shapes.pretrain_generator import GeneratorPretrainConfig
from maskfocus.shapes.pretrain_measure import measure
from maskfocus.shapes.pretrain_vq import VQPretrainConfig
from maskfocus.stopping import RunStopped, StopAtOnce, StopSignal

STAGES = ("vq", "generator", "clip")
MEASURE = "measure"
"""The `--stages` entry that trains nothing: the measurement and MODEL_CARD.md of the parts there (it follows the
training stages of any run that leaves every part in place)."""
PRETRAIN_PARTS = ("pretrain_report.json", "pretrain_log.jsonl", "shapes-tiny", "shapes-clip")
STALE_CARD = "MODEL_CARD.stale.md"


class PretrainConfig(Section):
    """Every setting of `maskfocus pretrain`."""

    seed: int = Field(0, ge=0, le=2**63 - 1)
    """Seed of every stage (torch takes at most 2**63 - 1)."""
    vq: VQPretrainConfig = VQPretrainConfig()
    generator: GeneratorPretrainConfig = GeneratorPretrainConfig()
    clip: ClipPretrainConfig = ClipPretrainConfig()
    eval_images_per_prompt: int = Field(4, ge=1)
    """Images per prompt of the base-model evaluation written into the model card."""
    measure_rows: int | None = Field(None, ge=1)
    """Only the first N shapes-geneval rows in the measurements (smoke tests); None = all."""


def default_output() -> Path:
    return Path(__file__).resolve().parents[1] / "pretrained"


class _Logger:
    """Appends metrics to pretrain_log.jsonl and shows them on the progress bar."""

    def __init__(self, path: Path):
        self.handle = path.open("a")
        self.bar: tqdm | None = None

    def __call__(self, record: dict[str, Any]) -> None:
        self.handle.write(json.dumps({"time": round(time.time(), 1), **record}) + "\n")
        self.handle.flush()
        if self.bar is not None:
            self.bar.set_postfix({k: round(v, 4) for k, v in record.items() if isinstance(v, float)})

    def stage(self, name: str, total: int) -> tqdm:
        self.bar = tqdm(total=total, desc=f"pretrain {name}", unit="step")
        return self.bar


def run_pretraining(
    out: Path | None,
    stages: list[str],
    seed: int = 0,
    eval_images_per_prompt: int = 4,
    command: str = "maskfocus pretrain",
    config: PretrainConfig | None = None,
) -> dict[str, Any]:
    unknown = sorted(set(stages) - {*STAGES, MEASURE})
    if unknown or not stages:
        given = f"unknown stage(s) {', '.join(unknown)}" if unknown else "no stage given"
        raise ConfigError(f"--stages: {given}; choose from {', '.join((*STAGES, MEASURE))}")
    config = config or PretrainConfig(seed=seed, eval_images_per_prompt=eval_images_per_prompt)
    out = out or default_output()
    check_pretrain_output(out)
    restore_swapped_parts(out)
    if "generator" in stages and not config.generator.train_text_encoder:
        raise ConfigError(
            "generator.train_text_encoder false keeps a given text encoder frozen, and maskfocus pretrain starts from "
            "none: it would freeze a random one (benchmarks/positional_base.py --clip-text gives the tiny CLIP's)"
        )
    if stages == [MEASURE] and (missing := _missing_parts(out)):
        raise ConfigError(f"--stages measure: {out} lacks {', '.join(missing)}; train those stages first")
    if "vq" in stages and "generator" not in stages and (out / "shapes-tiny" / "transformer").is_dir():
        raise ConfigError(
            f"--stages vq without generator: {out / 'shapes-tiny'} holds a generator trained on its present VQ's "
            "codes, and a new VQ under it would make it draw noise; run --stages vq,generator, or give another --out"
        )
    if "generator" in stages and "vq" not in stages and not (out / "shapes-tiny" / "vqvae").is_dir():
        raise ConfigError(
            f"--stages generator: no trained VQ in {out / 'shapes-tiny' / 'vqvae'} to train it on; run --stages "
            "vq,generator, or copy a model folder with its VQ there first"
        )
    out.mkdir(parents=True, exist_ok=True)
    with run_lock.held(out):  # a second pretraining into this --out would clobber its parts and report
        return _pretrain_locked(out, stages, config, command)


def restore_swapped_parts(out: Path) -> None:
    """A pretraining killed between the two renames of a part's swap left the old part only as `.NAME.old`: put it
    back (under the folder's lock) before the checks look for the part. The VQ alone is swapped (as
    shapes-tiny/.vqvae.old) where no generator is there yet."""
    parts = [out / "shapes-tiny", out / "shapes-clip", out / "shapes-tiny" / "vqvae"]
    parts = [part for part in parts if part.with_name(f".{part.name}.old").exists()]
    if not parts:
        return
    with run_lock.held(out):
        for part in parts:
            if restore_interrupted_swap(part):
                print(f"put back {part} from .{part.name}.old (a pretraining was stopped while it swapped that part)")


def _pretrain_locked(out: Path, stages: list[str], config: PretrainConfig, command: str) -> dict[str, Any]:
    from maskfocus.models.tokenizer import build_word_tokenizer
    from maskfocus.shapes.prompts import vocabulary

    report_path = out / "pretrain_report.json"
    report = load_report(report_path)
    logger = _Logger(out / "pretrain_log.jsonl")
    logger({"stage": "start", "stages": list(stages), "seed": config.seed, "command": command})  # marks each run
    tokenizer = build_word_tokenizer(vocabulary())
    torch.set_num_threads(max(1, torch.get_num_threads()))
    saved: list[str] = []
    record = functools.partial(_record_stage, out, report, config, command, saved)
    try:
        with StopAtOnce():  # SIGTERM as Ctrl-C: each part is swapped in whole (replace_folder) or not at all
            _train_generator_parts(out, stages, config, tokenizer, logger, record)
            if "clip" in stages:
                _train_clip_stage(out, config, tokenizer, logger, record)
            return _measure_and_write_card(out, report, config)
    except KeyboardInterrupt as stop:
        if logger.bar is not None:
            logger.bar.close()  # the stage's bar ends its line before the message
        signal_name = stop.signal_name if isinstance(stop, StopSignal) else "SIGINT"
        raise RunStopped(stopped_message(out, stages, saved), signal_name) from None


def _measure_and_write_card(out: Path, report: dict[str, Any], config: PretrainConfig) -> dict[str, Any]:
    report_path = out / "pretrain_report.json"
    report.update(versions=_versions(), machine=machine_words())
    write_text_whole(report_path, json.dumps(report, indent=2) + "\n")
    if missing := _missing_parts(out):
        print(f"saved the trained stages to {out}; not measured yet (missing {', '.join(missing)})")
        return report
    print("measuring: the base model's shapes-geneval score, the VQ round trip, the CLIP's zero-shot accuracy")
    report["measurements"] = measure(out, config.eval_images_per_prompt, config.measure_rows)
    report["measured_config"] = {
        "eval_images_per_prompt": config.eval_images_per_prompt,
        "measure_rows": config.measure_rows,
    }
    write_text_whole(report_path, json.dumps(report, indent=2) + "\n")
    write_text_whole(out / "MODEL_CARD.md", model_card(report))
    (out / STALE_CARD).unlink(missing_ok=True)
    print(f"wrote weights and MODEL_CARD.md to {out}")
    return report


def _missing_parts(out: Path) -> list[str]:
    """The parts the measurement needs that `out` lacks."""
    return [part for part in ("shapes-tiny/transformer", "shapes-clip") if not (out / part).exists()]


def check_pretrain_output(out: Path) -> None:
    """`--out` is new, empty or an earlier pretraining's output (it writes shapes-tiny/, shapes-clip/, the report,
    the log and MODEL_CARD.md there): never a run folder or a folder holding other things, which it would litter or
    overwrite (a MODEL_CARD.md of the user's, say)."""
    check_output_folder("--out", out)
    if not out.is_dir() or not any(path.name not in run_lock.LOCK_FILES for path in out.iterdir()):
        return
    if any((out / part).exists() for part in RUN_FOLDER_PARTS):
        raise ConfigError(f"--out {out}: is a training run's folder; give a new folder or an earlier --out")
    if not any((out / name).exists() for name in PRETRAIN_PARTS):
        raise ConfigError(
            f"--out {out}: holds other things and none of {', '.join(PRETRAIN_PARTS)}; give a new or empty folder, "
            "or an earlier pretraining's --out"
        )


def load_report(path: Path) -> dict[str, Any]:
    """An earlier run's pretrain_report.json (or a new report): a mapping with its stage_seconds, checked before any
    training rather than after the first stage."""
    if not path.is_file():
        return {"stage_seconds": {}}
    try:
        report = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not JSON ({error}); move it aside to start a new report") from None
    if not isinstance(report, dict) or not isinstance(report.get("stage_seconds"), dict):
        raise ConfigError(f"{path}: not a pretraining report (no stage_seconds mapping); move it aside")
    _seeds_per_stage(report)
    return report


def _seeds_per_stage(report: dict[str, Any]) -> None:
    """A report from before seeds were kept per stage held one seed (config.seed) for every stage it trained: as
    stage_seeds, so that a card rendered from it (`--stages measure`) names each stage's seed."""
    config = report.get("config")
    if not isinstance(config, dict) or "seed" not in config:
        return
    old_seed = config.pop("seed")
    seeds = report.setdefault("stage_seeds", {})
    seeds.update({stage: old_seed for stage in STAGES if stage in report["stage_seconds"] and stage not in seeds})


def stopped_message(out: Path, stages: list[str], saved: list[str]) -> str:
    """What a stop left in `out` and how to finish the work."""
    left = [stage for stage in stages if stage in STAGES and stage not in saved] or [MEASURE]
    done = f"this run saved {', '.join(saved)} in {out}" if saved else f"this run saved nothing in {out}"
    return (
        f"stopped; {done} (a stage in progress is lost: stages keep no checkpoints); finish with the same command "
        f"and --stages {','.join(left)}"
    )


StageRecord = Callable[[str, float], None]
"""Records a saved stage and its seconds in the report (`_record_stage` with the run's folder and settings)."""


def _train_generator_parts(
    out: Path, stages: list[str], config: PretrainConfig, tokenizer, logger: _Logger, record: StageRecord
) -> None:
    """Train (or reuse) the VQ, then the text encoder + transformer; each part is saved as soon as it exists (a new
    VQ over a folder that holds a generator: with the new generator) and then `record`ed."""
    from diffusers import VQModel

    from maskfocus.shapes.pretrain_generator import train_generator
    from maskfocus.shapes.pretrain_vq import train_vqvae
    from maskfocus.shapes.tiny_model import save_folder

    folder = out / "shapes-tiny"
    deferred_vq_seconds = None
    if "vq" in stages:
        start = time.perf_counter()
        bar = logger.stage("vq", config.vq.num_steps)
        tqdm.write(f"pretrain vq: first the distinct patches of {config.vq.table_scenes:,} scenes")
        vqvae = train_vqvae(config.vq, config.seed, logger, bar.update)
        bar.close()
        if (folder / "transformer").is_dir():  # saved with the new generator: saved now, a stop before that
            deferred_vq_seconds = time.perf_counter() - start  # would leave the old generator on the new VQ
        else:
            seconds = time.perf_counter() - start
            replace_folder(
                folder / "vqvae", lambda partial: vqvae.save_pretrained(str(partial)), lambda: record("vq", seconds)
            )
    if "generator" not in stages:
        return
    if "vq" not in stages:  # run_pretraining has checked that it is there
        vqvae = VQModel.from_pretrained(str(folder / "vqvae"), local_files_only=True)
    start = time.perf_counter()
    bar = logger.stage("generator", config.generator.num_steps)
    tqdm.write(f"pretrain generator: first drawing and tokenising {config.generator.num_scenes:,} scenes")
    text_encoder, transformer = train_generator(config.generator, vqvae, tokenizer, config.seed, logger, bar.update)
    bar.close()
    seconds = time.perf_counter() - start

    def record_parts() -> None:
        if deferred_vq_seconds is not None:
            record("vq", deferred_vq_seconds)
        record("generator", seconds)

    replace_folder(
        folder, lambda partial: save_folder(partial, vqvae, tokenizer, text_encoder, transformer), record_parts
    )


def _record_settings(report: dict[str, Any], config: PretrainConfig, stages: list[str]) -> None:
    """The report's settings: a run of some stages writes their sections and seed and keeps the other stages' own
    (a `--stages clip --seed 3` rerun must not claim the generator was trained with seed 3)."""
    _seeds_per_stage(report)
    previous = dict(report.get("config", {}))
    report.setdefault("stage_seeds", {}).update(dict.fromkeys(stages, config.seed))
    current = config.model_dump(mode="json")
    shared = {key: value for key, value in current.items() if key not in (*STAGES, "seed")}
    report["config"] = {**previous, **shared, **{stage: current[stage] for stage in stages}}


def _record_stage(
    out: Path,
    report: dict[str, Any],
    config: PretrainConfig,
    command: str,
    saved: list[str],
    stage: str,
    seconds: float,
) -> None:
    """Write a saved stage's time, settings, seed and command into the report at once, so that a later stop or
    failure leaves a report that says how each saved stage was made; the measurements, notes and MODEL_CARD.md of
    the weights before it no longer hold, so they go (the card is kept as MODEL_CARD.stale.md until a new one)."""
    saved.append(stage)
    report.setdefault("stage_machines", {})[stage] = machine_words()
    report.pop("measurements", None)
    report.pop("measured_config", None)
    report.pop("notes", None)  # written by hand about the weights before this stage (kept in MODEL_CARD.stale.md)
    if (out / "MODEL_CARD.md").is_file():
        (out / "MODEL_CARD.md").replace(out / STALE_CARD)
    report["stage_seconds"][stage] = round(seconds)
    report.setdefault("commands", {})[stage] = command
    _record_settings(report, config, [stage])
    write_text_whole(out / "pretrain_report.json", json.dumps(report, indent=2) + "\n")


def _train_clip_stage(out: Path, config: PretrainConfig, tokenizer, logger: _Logger, record: StageRecord) -> None:
    from maskfocus.shapes.pretrain_clip import save_clip, train_clip

    start = time.perf_counter()
    bar = logger.stage("clip", config.clip.num_steps)
    model, model_cfg = train_clip(config.clip, tokenizer, config.seed, logger, bar.update)
    bar.close()
    seconds = time.perf_counter() - start
    replace_folder(
        out / "shapes-clip",
        lambda partial: save_clip(partial, model, model_cfg, tokenizer),
        lambda: record("clip", seconds),
    )


def machine_words() -> str:
    """The machine a stage or measurement ran on, as the report and card name it."""
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads"


def _versions() -> dict[str, str]:
    import diffusers
    import open_clip
    import transformers

    import maskfocus

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "open_clip": open_clip.__version__,
        "maskfocus": maskfocus.__version__,
    }


def model_card(report: dict[str, Any]) -> str:
    from maskfocus.shapes.card import render_model_card

    return render_model_card(report)
