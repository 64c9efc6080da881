"""`maskfocus eval`'s detector options (`--detector`, `--score-threshold`, ...): made from the detector config's
fields, one per key of config_rewards.DETECTOR_OPTIONS, and read back into that section's overrides."""

from __future__ import annotations

import argparse


def detector_overrides(args: argparse.Namespace) -> dict:
    """Command-line changes to the evaluation detector (the config's geneval `detector` section)."""
    from maskfocus.config_rewards import DETECTOR_OPTIONS

    given = {key: getattr(args, f"detector_{key}", None) for key in DETECTOR_OPTIONS}
    return {key: value for key, value in given.items() if value is not None}


DETECTOR_OPTION_HELP = {
    "kind": "GenEval judge (default: the detector of the config's geneval reward, else shapes)",
    "path": "OWLv2 folder (transformers format) for --detector owlv2",
    "clip_model": "colour classifier for --detector owlv2: an open_clip folder, or an architecture name (GenEval's: "
    "ViT-L-14-quickgelu) with --color-clip-checkpoint",
    "clip_checkpoint": "weights file of an architecture-name --color-clip",
    "url": "Flow-GRPO-compatible GenEval reward server for --detector http",
    "score_threshold": "detection confidence cut (GenEval: 0.3)",
    "counting_score_threshold": "the same for counting prompts (GenEval: 0.9)",
    "nms_iou": "OWLv2's per-class NMS IoU",
}
"""Help of each option in config_rewards.DETECTOR_OPTIONS, by config key."""


def add_detector_options(evaluate: argparse.ArgumentParser) -> None:
    """`maskfocus eval`'s detector options, one per key of config_rewards.DETECTOR_OPTIONS (which its error messages
    name), each stored as `detector_<key>` for `detector_overrides`."""
    from maskfocus.config_rewards import DETECTOR_OPTIONS, OWLV2_THRESHOLDS, GenEvalDetectorConfig

    for key, option in DETECTOR_OPTIONS.items():
        spec = option_spec(GenEvalDetectorConfig.model_fields[key].annotation, key)
        spec.setdefault("metavar", option[2:].upper().replace("-", "_"))
        text = DETECTOR_OPTION_HELP[key] + ("; --detector owlv2 needs all three" if key in OWLV2_THRESHOLDS else "")
        evaluate.add_argument(option, dest=f"detector_{key}", help=text, **spec)


def option_spec(annotation: object, key: str) -> dict:
    """argparse's `choices` or `type` for a config field's annotation (through `X | None`); the config's own checks
    then name a number's range."""
    import typing

    from maskfocus.config_base import scalar_kinds

    kinds = scalar_kinds(annotation) - {type(None)}
    literals = [kind for kind in kinds if typing.get_origin(kind) is typing.Literal]
    if literals:
        return {"choices": tuple(value for kind in literals for value in typing.get_args(kind)), "metavar": None}
    if len(kinds) == 1 and (kind := next(iter(kinds))) in (float, int, str):
        return {"type": kind}
    raise TypeError(f"no command-line option type for {key}: {annotation}")
