"""MODEL_CARD.md of the built-in tiny model, rendered from the pretraining report."""

from __future__ import annotations

from typing import Any

from maskfocus.rewards.geneval import TAGS


def _tag_table(title: str, scores: dict[str, Any]) -> list[str]:
    tags = scores.get("tags", scores)
    lines = [f"| {title} | " + " | ".join(TAGS) + " | overall |", "|---" * (len(TAGS) + 2) + "|"]
    overall = scores.get("overall", sum(tags.values()) / max(1, len(tags)))
    lines.append("| | " + " | ".join(f"{tags.get(tag, float('nan')):.3f}" for tag in TAGS) + f" | {overall:.3f} |")
    return lines


def _sampler_words(sampler: dict[str, Any] | None) -> str:
    if sampler is None:
        return "sampler defaults of `SamplerConfig`"
    return (
        f"sampler of configs/shapes_tiny.yaml (T = {sampler['num_steps']}, CFG {sampler['cfg_scale']}, "
        f"Gumbel temperature {sampler['gumbel_temperature']})"
    )


def render_model_card(report: dict[str, Any]) -> str:
    m = report["measurements"]
    base = m["base_model"]
    seconds = report["stage_seconds"]
    lines = [
        "# shapes-tiny: the built-in masked generator of maskfocus",
        "",
        "A tiny aMUSEd-format text-to-image model (diffusers `VQModel` + `UVit2DModel`, transformers",
        "`CLIPTextModelWithProjection`) and a tiny open_clip CLIP, trained from scratch on the shapes world",
        "(64x64 images of circles, squares, triangles and diamonds in six colours). The generator was trained",
        "on loose captions on purpose, so that it misses counts, positions and colour binding more often than",
        "shapes: the headroom that RL post-training has to close. The scores below say how well it draws.",
        "",
        "## Rebuild",
        "```",
        *(dict.fromkeys(report.get("commands", {}).values()) or [NOT_RECORDED]),
        "```",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + f"; {report['machine']}.",
        "",
        *[f"Note: {note}" for note in report.get("notes", [])],
        "",
        "Time per stage (seconds): "
        + ", ".join(f"{stage} {value} ({_stage_machine(report, stage)})" for stage, value in seconds.items())
        + f"; total {sum(seconds.values())} s.",
        "",
        "## Scores (shapes-geneval, GenEval rules, exact shapes detector)",
        "",
        f"Base model, {base['num_images']} images ({_measured(report, 'eval_images_per_prompt')} per prompt row), "
        f"{_sampler_words(m.get('sampler'))}; evaluation took {m['base_model_eval_seconds']} s:",
        "",
        *_tag_table("base model", base),
        "",
        f"CLIP score of the base model's images (tiny CLIP): {base['clip_score']:.3f}",
        "",
        f"Detector on ground-truth renders of {_rows_words(report)}, and on their VQ round trips (encode, decode):",
        "",
        *_tag_table("ground truth", m["ground_truth_renders"]),
        "",
        *_tag_table("VQ round trip", m["vq_round_trip"]),
        "",
        f"Tiny CLIP zero-shot accuracy on single-object renders: colour {m['clip_zero_shot']['color']:.3f}, "
        f"shape {m['clip_zero_shot']['shape']:.3f}.",
        "",
        "## Sizes",
        "",
        "Parameters: "
        + ", ".join(f"{k} {v:,}" for k, v in m["parameters"].items())
        + f". Folder size: {m['folder_megabytes']} MB.",
        "",
        "## Pretraining settings",
        "",
        "Seed of each stage: " + ", ".join(f"{stage} {seed}" for stage, seed in report.get("stage_seeds", {}).items()),
        "",
        "```json",
        __import__("json").dumps(report.get("config", NOT_RECORDED), indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


NOT_RECORDED = "not recorded: these weights were trained elsewhere and copied into this folder"


def _rows_words(report: dict[str, Any]) -> str:
    """Which prompt rows were measured: all, or (a smoke test's `measure_rows`) only the first N, said plainly."""
    from maskfocus.shapes.evalset import load_eval_set

    rows = _measured(report, "measure_rows")
    if rows is None or rows >= len(load_eval_set()):  # rows[:n] past the end measures every row
        return "every prompt row"
    return f"only the first {rows} prompt rows (a partial measurement)"


def _measured(report: dict[str, Any], key: str) -> Any:
    """A measurement setting as the measurement used it (`measured_config`; older reports: `config`)."""
    return report.get("measured_config", report.get("config", {})).get(key)


def _stage_machine(report: dict[str, Any], stage: str) -> str:
    """The machine `stage` was trained on (reports from before machines were kept per stage: not recorded)."""
    return report.get("stage_machines", {}).get(stage, "machine not recorded")
