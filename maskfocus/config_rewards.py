"""The reward terms' config sections: `rewards: [{name, weight, ...}]` and the GenEval detector.

Part of the one config tree of `maskfocus.config` (which re-exports these names).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from maskfocus.config_base import Section

OWLV2_THRESHOLDS = ("score_threshold", "counting_score_threshold", "nms_iou")
"""Detector fields a `kind: owlv2` detector must set explicitly: their defaults are GenEval's (Mask2Former). A null
value for any of them means "not set"."""

GenEvalMode = Literal["binary", "partial", "graded"]
GENEVAL_MODES: tuple[str, ...] = get_args(GenEvalMode)
"""A GenEval term's reward: correctness, the fraction of clauses met, or clauses graded by how close a count came."""


def settings_not_read(section: Section, readers: dict[str, tuple[str, ...]], reader: str) -> list[str]:
    """The fields of `section` that `reader` (its kind or name) does not read, yet set away from their defaults:
    they would be ignored without a word. `readers`: field -> the kinds or names that read it."""
    defaults = type(section).model_fields
    return [
        name
        for name, names in readers.items()
        if reader not in names and getattr(section, name) != defaults[name].default
    ]


class GenEvalDetectorConfig(Section):
    """How a `geneval` reward term (and `maskfocus eval`) finds the objects of an image."""

    kind: Literal["shapes", "owlv2", "http"] = "shapes"
    """shapes = the exact shapes-world detector; owlv2 = an OWLv2 folder (transformers) with GenEval's CLIP colour
    classification; http = a Flow-GRPO-compatible GenEval reward server (the original Mask2Former evaluator)."""
    path: str | None = None
    """owlv2: detector folder in transformers format (config.json, weights, tokenizer, preprocessor_config.json)."""
    clip_model: str | None = None
    """owlv2: open_clip model of the colour classifier: a local-dir folder, or an architecture name together with
    `clip_checkpoint`. GenEval uses ViT-L-14 with OpenAI weights, whose architecture name is `ViT-L-14-quickgelu`
    (OpenAI's models use QuickGELU; plain `ViT-L-14` would load the weights but compute something else)."""
    clip_checkpoint: str | None = None
    """owlv2: weights file for an architecture-name `clip_model`."""
    object_names: str | None = None
    """owlv2: text file with one class name per line; null = GenEval's 80 COCO classes (object_names.txt)."""
    score_threshold: float = Field(0.3, ge=0.0, le=1.0)
    """shapes/owlv2: a detection counts when its confidence is above this (GenEval: 0.3, tuned for its Mask2Former).
    owlv2 must set it explicitly: its sigmoid scores run much lower."""
    counting_score_threshold: float = Field(0.9, ge=0.0, le=1.0)
    """shapes/owlv2: the same for prompts tagged `counting` (GenEval: 0.9, Mask2Former). owlv2 must set it
    explicitly: 0.9 would drop nearly every OWLv2 detection and fail almost every counting prompt."""
    nms_iou: float = Field(0.5, gt=0.0, le=1.0)
    """owlv2 (set it explicitly there): per-class non-maximum suppression IoU (OWLv2 predicts one box per image
    patch, so neighbouring patches repeat an object); 1.0 disables it. Unused by the other kinds."""
    batch_size: int = Field(16, ge=1)
    """owlv2/http: images per detector forward or per server request."""
    url: str = "http://127.0.0.1:18085"
    """http: the reward server's address (Flow-GRPO's default port is 18085)."""
    timeout_s: float = Field(120.0, gt=0.0)
    """http: seconds each blocking socket operation of a request (connecting, sending, each read) may wait before
    the attempt counts as failed. Not a deadline for the whole request: a server that keeps sending a little at a
    time can hold one attempt longer (urllib's timeout), and each retry gets its own timeouts."""
    num_retries: int = Field(3, ge=0)
    """http: retries of a failed request (timeout, connection error, HTTP 5xx) before the reward raises."""
    retry_backoff_s: float = Field(1.0, ge=0.0)
    """http: seconds before the first retry, doubled for each further one."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        """urllib refuses any other scheme only at the first request, after the model has loaded and sampled."""
        if not _is_http_address(url):
            raise ValueError(f"must be an http:// or https:// address such as http://127.0.0.1:18085, got {url!r}")
        return url

    @model_validator(mode="before")
    @classmethod
    def _null_threshold_is_unset(cls, data: Any) -> Any:
        """A null threshold means "not set": the kind's default, or the owlv2 error below. Run folders written while
        these fields were `float | None` hold null for all three, and still resume and compare."""
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if not (key in OWLV2_THRESHOLDS and value is None)}
        return data

    @model_validator(mode="after")
    def _check_kind_fields(self) -> GenEvalDetectorConfig:
        self._refuse_other_kinds_settings()
        if self.kind == "owlv2" and (self.path is None or self.clip_model is None):
            raise ValueError("kind owlv2 needs `path` (the OWLv2 folder) and `clip_model` (the colour CLIP)")
        missing = [name for name in OWLV2_THRESHOLDS if name not in self.model_fields_set]
        if self.kind == "owlv2" and missing:
            raise ValueError(
                f"kind owlv2 needs explicit {', '.join(f'`{name}`' for name in missing)} (all of "
                f"{', '.join(OWLV2_THRESHOLDS)}): the 0.3 / 0.9 score defaults are GenEval's, tuned for its "
                "Mask2Former, and OWLv2's sigmoid scores run much lower. Set them in this detector section, "
                "calibrated against the http (Mask2Former) judge on a few hundred images (configs/amused_geneval.yaml "
                "has uncalibrated starting points; `maskfocus eval` takes "
                f"{', '.join(DETECTOR_OPTIONS[name] for name in OWLV2_THRESHOLDS)})"
            )
        return self

    def _refuse_other_kinds_settings(self) -> None:
        """Under the default `kind: shapes`, a setting only another kind reads means a forgotten `kind`: OWLv2 paths
        trained against the shapes detector (reward 0 on real images). A kind chosen explicitly may keep the other
        kinds' settings (`--set rewards.0.detector.kind=http` on an owlv2 config), which it does not read."""
        if self.kind == "shapes" and (ignored := settings_not_read(self, DETECTOR_FIELD_KINDS, self.kind)):
            uses = "; ".join(f"`{name}` is read by kind {' and '.join(DETECTOR_FIELD_KINDS[name])}" for name in ignored)
            raise ValueError(
                f"this detector's kind is {self.kind}, which would ignore {', '.join(f'`{n}`' for n in ignored)} "
                f"({uses}); set `kind` to the detector these settings are for, or remove them"
            )


DETECTOR_FIELD_KINDS = {
    "path": ("owlv2",),
    "clip_model": ("owlv2",),
    "clip_checkpoint": ("owlv2",),
    "object_names": ("owlv2",),
    "score_threshold": ("shapes", "owlv2"),
    "counting_score_threshold": ("shapes", "owlv2"),
    "nms_iou": ("owlv2",),
    "batch_size": ("owlv2", "http"),
    "url": ("http",),
    "timeout_s": ("http",),
    "num_retries": ("http",),
    "retry_backoff_s": ("http",),
}
"""The detector kinds that read each setting (`kind` applies to all; the http server keeps its own thresholds)."""


DEFAULT_REWARD_MODELS = {"clip": "builtin:shapes-clip", "hps": "ViT-H-14"}
"""The `model` of a clip / hps reward term when the YAML leaves it out."""


DETECTOR_OPTIONS = {
    "kind": "--detector",
    "path": "--detector-path",
    "clip_model": "--color-clip",
    "clip_checkpoint": "--color-clip-checkpoint",
    "url": "--server-url",
    "score_threshold": "--score-threshold",
    "counting_score_threshold": "--counting-score-threshold",
    "nms_iou": "--nms-iou",
}
"""The detector settings `maskfocus eval` takes as options: config key -> option."""

DETECTOR_OPTION_KINDS = {key: DETECTOR_FIELD_KINDS[key] for key in DETECTOR_OPTIONS if key != "kind"}
"""The detector kinds that use each setting `maskfocus eval` takes as an option."""


def _is_http_address(url: str) -> bool:
    """http(s), a host, and a port (if any) that is a number in 0-65535."""
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018 (reading it raises ValueError for a bad port)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def geneval_term_name(mode: str, strict: bool) -> str:
    """Metric name of a GenEval term: `geneval_<mode>`, with `_strict` when extra objects cost reward."""
    return f"geneval_{mode}_strict" if strict else f"geneval_{mode}"


def repeated_metric_names(specs: Sequence[RewardSpec]) -> list[str]:
    """The metric names (reward/<name> in metrics.jsonl) that more than one term would log under."""
    names = [geneval_term_name(spec.mode, spec.strict) if spec.name == "geneval" else spec.name for spec in specs]
    return sorted({name for name in names if names.count(name) > 1})


class RewardSpec(Section):
    """One term of the reward r = sum_k weight_k * r_k."""

    name: Literal["geneval", "clip", "hps"]
    """geneval = GenEval rules on detected objects; clip = CLIP score of image and prompt; hps = HPS v2.1 score."""
    weight: float = 1.0
    """Weight of this term."""
    mode: GenEvalMode = "binary"
    """geneval only: 1/0 correctness; the fraction of clauses met (partial); or graded: as partial, but a clause
    that misses a number earns how close the count came (a counting prompt for n objects loses 1/(2n) per object
    off n instead of half), so near misses rank above far ones. Shapes and owlv2 detectors only.
    With `detector.kind: http`, partial is the reward server's `scores`, which is Flow-GRPO's own partial credit,
    not GenEval's clause fraction: the mean of per-clause count-distance terms, 1 - |count - found| / count
    (negative when far more objects than asked are found), with added terms for colours and positions and exclude
    clauses ignored (maskfocus/rewards/geneval_client.py); the client clips it to [0, 1]."""
    strict: bool = False
    """geneval only: also forbid what the prompt does not ask for (more of a named class than its count, any other
    class), through added exclude clauses. GenEval's rules only ask for "at least", which RL can exploit by drawing
    many objects; the evaluation keeps GenEval's rules. With `detector.kind: http` in mode binary only: the server's
    correctness honours the exclude clauses sent to it, its partial `scores` do not."""
    model: str = "builtin:shapes-clip"
    """clip/hps: open_clip model: a local-dir folder (open_clip_config.json + weights), `builtin:shapes-clip`, or an
    architecture name (`ViT-H-14`) with `checkpoint`. Left out: builtin:shapes-clip for clip, ViT-H-14 for hps."""
    checkpoint: str | None = None
    """clip: weights file for an architecture-name `model` (e.g. ViT-H-14 laion2B's open_clip_pytorch_model.bin);
    hps: the HPS v2.1 checkpoint file (HPS_v2.1_compressed.pt), required."""
    detector: GenEvalDetectorConfig = GenEvalDetectorConfig()
    """geneval only: the detector (shapes, owlv2 or http) and its settings."""

    @model_validator(mode="before")
    @classmethod
    def _default_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model") is None and data.get("name") in DEFAULT_REWARD_MODELS:
            return {**data, "model": DEFAULT_REWARD_MODELS[data["name"]]}
        return data

    @model_validator(mode="after")
    def _check_name_fields(self) -> RewardSpec:
        if self.name == "hps" and self.checkpoint is None:
            raise ValueError("an hps term needs `checkpoint`: the HPS v2.1 file (HPS_v2.1_compressed.pt)")
        self._refuse_other_terms_settings()
        if self.mode == "graded" and self.detector.kind == "http":
            raise ValueError(
                "mode graded needs the per-clause counts of a local detector (kind shapes or owlv2); the http reward "
                "server returns only binary and partial scores: use mode binary or partial"
            )
        if self.strict and self.detector.kind == "http" and self.mode != "binary":
            raise ValueError(
                f"`strict: true` with detector kind http works in mode binary only: the reward server's {self.mode} "
                "score is Flow-GRPO's count-distance credit, which ignores the exclude clauses strict adds; use mode "
                "binary, a local detector (shapes, owlv2) or strict: false"
            )
        return self

    def _refuse_other_terms_settings(self) -> None:
        """A setting only another term reads (mode, strict and detector: geneval; model and checkpoint: clip and hps),
        changed from its default, would be ignored without a word."""
        reads = {"mode": ("geneval",), "strict": ("geneval",), "detector": ("geneval",)}
        reads |= {"model": ("clip", "hps"), "checkpoint": ("clip", "hps")}
        if ignored := settings_not_read(self, reads, self.name):
            uses = "; ".join(f"`{name}` is read by {' and '.join(reads[name])} terms" for name in ignored)
            raise ValueError(
                f"this {self.name} term would ignore {', '.join(f'`{n}`' for n in ignored)} ({uses}); remove them, or "
                "give the term the name they are for"
            )
