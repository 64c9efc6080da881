"""Before a run starts: the files it reads, and its plan in numbers (`maskfocus train --check`).

A missing HPS checkpoint, OWLv2 folder or prompt file used to surface when a worker loaded it: after Ray had
started and the run folder was made. These checks are cheap (file and folder existence), so the train command runs them
with the model-folder check, before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from maskfocus.config import RunConfig
from maskfocus.rewards.clip_score import open_clip_problems
from maskfocus.update import optimizer_steps_per_iteration


def missing_file_problems(config: RunConfig) -> list[str]:
    """One line per file or folder the run reads besides the model folder (training prompts, text encoder, reward
    models) that is not there."""
    problems = []
    if config.rollout.prompt_file and not Path(config.rollout.prompt_file).expanduser().is_file():  # "": no file
        problems.append(f"rollout.prompt_file: file not found: {config.rollout.prompt_file}")
    if config.model.text_encoder is not None and not Path(config.model.text_encoder).expanduser().is_dir():
        problems.append(f"model.text_encoder: folder not found: {config.model.text_encoder}")
    for index, spec in enumerate(config.rewards):
        key = f"rewards.{index}"
        if spec.name in ("clip", "hps"):
            problems.extend(open_clip_problems(spec.model, spec.checkpoint, f"{key}.model", f"{key}.checkpoint"))
        detector = spec.detector
        if spec.name != "geneval" or detector.kind != "owlv2":
            continue
        if not Path(detector.path).expanduser().is_dir():
            problems.append(f"{key}.detector.path: OWLv2 folder not found: {detector.path}")
        clip_fields = (f"{key}.detector.clip_model", f"{key}.detector.clip_checkpoint")
        problems.extend(open_clip_problems(detector.clip_model, detector.clip_checkpoint, *clip_fields))
        if detector.object_names is not None and not Path(detector.object_names).expanduser().is_file():
            problems.append(f"{key}.detector.object_names: file not found: {detector.object_names}")
    return problems


def plan_lines(config: RunConfig, start_iteration: int = 0) -> list[str]:
    """What the run will do, in numbers: rollouts, sampling steps, learned steps and optimizer steps."""
    rollout, grpo = config.rollout, config.grpo
    iterations = max(0, config.train.num_iterations - start_iteration)  # a resume past the end only finishes
    images = rollout.prompts_per_iteration * rollout.group_size
    steps = config.rollout_sampler().num_steps
    learned = steps if config.selection.strategy == "all" else config.selection.num_steps
    optimizer_steps = optimizer_steps_per_iteration(config)
    reward = " + ".join(f"{spec.weight:g} x {spec.name}" for spec in config.rewards)
    lines = [
        f"iterations: {iterations} (of {config.train.num_iterations}) x {rollout.prompts_per_iteration} prompts x "
        f"{rollout.group_size} images = {iterations * images:,} rollouts",
        f"sampling: T = {steps} steps per rollout, CFG {config.sampler.cfg_scale:g}, router "
        f"{'on' if config.router.enabled else 'off'}; reward {reward}",
        f"learning: {learned} of {steps} steps per image ({config.selection.strategy}), {optimizer_steps} optimizer "
        f"step(s) per iteration ({grpo.update}, {grpo.epochs} epoch(s)), lr {config.optim.learning_rate:g}",
    ]
    if config.train.executor == "ray":
        ray = config.ray
        lines.append(
            f"ray: {ray.num_rollout_workers} rollout, {ray.num_reward_workers} reward and {ray.num_learner_workers} "
            f"learner worker(s), max_staleness {ray.max_staleness}"
        )
    else:
        lines.append("executor: local (in this process)")
    if config.train.final_eval:
        count = config.eval.num_images_per_prompt
        lines.append(f"then: {config.eval.benchmark} at {count} image{'s' * (count != 1)} per prompt row")
    return lines


def prompt_file_problems(config: RunConfig) -> list[str]:
    """What would stop or spoil the run in its training prompts (`rollout.prompt_file`), given that the model folder
    is sound: a file without usable prompts, free-form prompts for a GenEval reward (which needs their metadata) and
    words the model's tokenizer drops (it would learn from what is left of the prompt)."""
    rollout = config.rollout
    if not rollout.prompt_file or not Path(rollout.prompt_file).expanduser().is_file():
        return []  # none, or missing: missing_file_problems names it
    from maskfocus.config import ConfigError
    from maskfocus.rewards.geneval import MetadataError
    from maskfocus.trainer import FilePrompts

    try:
        rows = FilePrompts(rollout.prompt_file, config.seed, rollout.tags, rollout.tag_weights).rows
    except (ConfigError, MetadataError) as error:
        return [str(error)]
    problems = []
    if "tag" not in rows[0] and any(spec.name == "geneval" for spec in config.rewards):
        problems.append(
            f"rollout.prompt_file: {rollout.prompt_file} holds free-form prompts, which the geneval reward cannot "
            "score (it needs each prompt's GenEval metadata); give a GenEval-format JSONL, or clip/hps rewards"
        )
    elif "tag" in rows[0]:
        problems += unseen_class_problems(config, rows)
    if (unknown := unknown_word_problem(config.model.path, sorted({row["prompt"] for row in rows}))) is not None:
        problems.append(f"rollout.prompt_file: {rollout.prompt_file}: {unknown}")
    return problems


def unseen_class_problems(config: RunConfig, rows: list[dict]) -> list[str]:
    """Classes or colours of the training prompts that a geneval term's detector cannot see: every image of those
    prompts would score 0 (the real GenEval file against the default shapes detector: no signal at all)."""
    from maskfocus.evaluation import BenchmarkError, check_classes
    from maskfocus.models.base import ModelLoadError
    from maskfocus.rewards.judges import detector_vocabulary

    problems = []
    for index, spec in enumerate(config.rewards):
        if spec.name != "geneval":
            continue
        field = f"rewards.{index}.detector"
        try:
            classes, colors = detector_vocabulary(spec.detector, field)
            check_classes(rows, classes, spec.detector.kind, colors, f"{field}.kind:")
        except BenchmarkError as error:
            where = f"rollout.prompt_file: {config.rollout.prompt_file}"
            problems.append(f"{where}: for {field}: {error}")
        except ModelLoadError as error:  # an object_names file without names
            problems.append(str(error))
    return problems


def unknown_word_problem(model_path: str, prompts: list[str]) -> str | None:
    """The model tokenizer's complaint about the first prompt it cannot read in full, or None."""
    from maskfocus.models.loading import folder_hint, load_tokenizer, resolve_model_path
    from maskfocus.models.tokenizer import UnknownWordError, check_prompts

    tokenizer = load_tokenizer(resolve_model_path(model_path), folder_hint(model_path))
    try:
        check_prompts(tokenizer, prompts)
    except UnknownWordError as error:
        return str(error)
    return None


def reward_server_problems(config: RunConfig) -> list[str]:
    """Each geneval term's reward server (`detector.kind: http`) that no connection reaches from this machine: a
    wrong address failed only after the first rollouts, once the retries ran out."""
    from maskfocus.rewards.geneval_client import server_problem

    servers = [(i, spec.detector.url) for i, spec in enumerate(config.rewards) if spec.detector.kind == "http"]
    problems = [server_problem(url, f"rewards.{index}.detector.url") for index, url in servers]
    return [problem for problem in problems if problem is not None]
