"""`maskfocus train`: checks what would stop a run at its start, makes or resumes its folder, runs either executor
and prints the final score against the base model's."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from maskfocus import run_lock
from maskfocus.config import ConfigError, RunConfig, load_config, load_config_or_default
from maskfocus.config_base import set_from_option
from maskfocus.config_yaml import parse_set
from maskfocus.ray_job import check_job_path


def idle_settings_notice(config: RunConfig) -> str | None:
    """What `maskfocus train` says when a setting was asked for that this run cannot use (not an error: a resume or
    a shared config file may carry it), or None."""
    if config.grpo.behaviour_weight_cap is None:
        return None
    if config.train.executor == "local":
        why = "the in-process trainer (train.executor local) learns every batch on-policy"
    elif config.ray.max_staleness == 0:
        why = "with ray.max_staleness 0 every batch is learned by the version that sampled it"
    else:
        return None
    return f"grpo.behaviour_weight_cap has no effect in this run: it weights stale batches only, and {why}"


def idle_workers_notice(config: RunConfig) -> str | None:
    """On Ray at most ray.max_staleness + 1 iterations are outstanding (each sampled by one rollout worker and scored
    by one reward worker), so workers beyond that only wait (rollout workers draw the previews), holding their
    CPUs or GPUs."""
    if config.train.executor != "ray":
        return None
    ray_config, busy = config.ray, config.ray.max_staleness + 1
    idle = [
        f"{role} {count}"
        for role, count in (
            ("num_rollout_workers", ray_config.num_rollout_workers),
            ("num_reward_workers", ray_config.num_reward_workers),
        )
        if count > busy
    ]
    if not idle:
        return None
    return (
        f"ray.{' and ray.'.join(idle)}: at most ray.max_staleness + 1 = {busy} iteration(s) are sampled and scored at "
        f"a time, one per worker, so the workers beyond {busy} wait with their resources; raise ray.max_staleness or "
        "use fewer workers"
    )


def meissonic_steps_notice(config: RunConfig) -> str | None:
    """Meissonic conditions on the step index (timestep T-1-i): rollouts with their own T learn under timesteps that
    the evaluation's sampler never uses."""
    rollout_steps, eval_steps = config.rollout_sampler().num_steps, config.sampler.num_steps
    if config.model.kind != "meissonic" or rollout_steps == eval_steps:
        return None
    return (
        f"rollout.num_steps {rollout_steps} differs from sampler.num_steps {eval_steps}: Meissonic conditions on the "
        f"step index, so the rollouts learn under timesteps 0-{rollout_steps - 1} and the evaluation samples under "
        f"0-{eval_steps - 1}; what RL learns may carry over less than with aMUSEd, which takes no timestep"
    )


def cmd_train(args: argparse.Namespace) -> int:
    overrides = parse_set(args.set)
    if args.executor:
        set_from_option(overrides, "train.executor", args.executor, "--executor")
    if args.iterations is not None:
        set_from_option(overrides, "train.num_iterations", args.iterations, "--iterations")
    with contextlib.ExitStack() as lock:  # the run folder's lock, from when the folder changes to the run's end
        prepared = resumed_folder(args, overrides, lock) if args.resume else new_folder(args, overrides, lock)
        if isinstance(prepared, int):  # --check: the report's exit status
            return prepared
        return train_in_folder(args, *prepared)


def resumed_folder(
    args: argparse.Namespace, overrides: dict, lock: contextlib.ExitStack
) -> tuple[RunConfig, Path] | int:
    """The config and folder of `--resume RUN`, checked, locked and its config.yaml updated; or `--check`'s status."""
    from maskfocus.resume_check import (
        check_resumable,
        check_resume_settings,
        check_run_config_file,
        saved_settings,
        seed_note,
    )
    from maskfocus.run_io import record_resumed_config

    check_job_path(args.resume, "--resume")
    run_dir = Path(args.resume)
    for flag, value in (("--config", args.config), ("--name", args.name)):
        if value is not None:
            raise ConfigError(
                f"{flag} with --resume: a resumed run keeps its folder and its own config.yaml; change settings "
                "with --set KEY=VALUE (and --iterations, --executor)"
            )
    config_file = check_run_config_file(run_dir)
    config = load_config(config_file, overrides)
    check_before_writing(config, args.address)
    start = check_resumable(run_dir, config.model.path)
    check_resume_settings(config_file, config, start.iteration)
    if note := seed_note(start.checkpoint, config.seed, saved_settings(config_file).get("seed")):
        print(note)
    if args.check:
        if (held := run_lock.held_note(run_dir)) is not None:  # the resume itself would be refused
            raise ConfigError(held)
        return report_check(config, run_dir, start.iteration, args.address)
    lock.enter_context(run_lock.held(run_dir))  # before the folder changes: its job may still be running
    record_resumed_config(run_dir, config)
    source = Path(start.checkpoint).name if start.checkpoint is not None else "the base model (no checkpoint)"
    print(f"resuming from {source}: {iterations_left(config, start.iteration)}")
    return config, run_dir


def iterations_left(config: RunConfig, start_iteration: int) -> str:
    """What a resume at `start_iteration` learns, or, with nothing left, what it does instead."""
    total, last = config.train.num_iterations, config.train.num_iterations - 1
    if start_iteration < last:
        return f"iterations {start_iteration}-{last} to learn"
    if start_iteration == last:
        return f"iteration {last} to learn"
    evaluation = " and its evaluation" if config.train.final_eval else ""
    return (
        f"nothing left to learn (all {total} iterations are); this writes the final model{evaluation} again, "
        f"and --iterations above {total} learns more"
    )


def learns(args: argparse.Namespace, config: RunConfig, run_dir: Path) -> bool:
    """Whether this start learns any iteration (a resume of a finished run only writes its final model)."""
    from maskfocus.run_state import resume_state

    return not args.resume or resume_state(run_dir, True).iteration < config.train.num_iterations


def new_folder(args: argparse.Namespace, overrides: dict, lock: contextlib.ExitStack) -> tuple[RunConfig, Path] | int:
    """The config and new, locked folder of a run; or `--check`'s status."""
    from maskfocus.run_io import new_run_folder, run_folder_for

    config = load_config_or_default(args.config, overrides)
    check_job_path(config.train.out_dir, "train.out_dir")
    check_before_writing(config, args.address)
    if args.check:
        return report_check(config, run_folder_for(config, args.name), None, args.address)
    return config, new_run_folder(config, args.name, lock)


def train_in_folder(args: argparse.Namespace, config: RunConfig, run_dir: Path) -> int:
    """The run itself, once its folder is made (or resumed) and locked."""
    print(f"run folder: {run_dir}")
    from maskfocus.compiled import compile_notice

    if learns(args, config, run_dir) and (
        notice := compile_notice(config.sampler.compile, config.train.compile_learner)
    ):
        print(notice)
    for notice in (idle_settings_notice(config), idle_workers_notice(config), meissonic_steps_notice(config)):
        if notice:
            print(notice)
    try:
        summary = run_executor(config, run_dir, bool(args.resume), args.address)
    except KeyboardInterrupt as stop:  # a second Ctrl-C: stopped at once, between checkpoints
        from maskfocus.run_io import resume_hint
        from maskfocus.stopping import RunStopped

        message = f"stopped at once, between checkpoints; {resume_hint(run_dir)}"
        raise RunStopped(message, getattr(stop, "signal_name", "SIGINT")) from None
    if "eval" in summary:
        from maskfocus.evaluation_output import format_table

        print(format_table(summary["eval"]))
        print(gain_line(run_dir, summary["eval"]["overall"]))
    print(f"done: {run_dir}")
    return 0


def run_executor(config: RunConfig, run_dir: Path, resume: bool, address: str | None) -> dict:
    """Train with the config's executor (Ray or in-process); returns the run's summary."""
    if config.train.executor == "ray":
        from maskfocus.driver_run import train_ray

        return train_ray(config, run_dir, resume=resume, address=address)
    from maskfocus.trainer import train_local

    return train_local(config, run_dir, resume=resume)


def check_before_writing(config: RunConfig, address: str | None) -> None:
    """What would stop the run at its start, checked before its folder is made or changed: nothing left behind.
    Every missing folder or file is named at once (a cluster being set up may lack several)."""
    from maskfocus.models import check_device
    from maskfocus.models.base import ModelLoadError
    from maskfocus.models.image_codec import check_resolution
    from maskfocus.models.loading import check_generator_folder
    from maskfocus.preflight import missing_file_problems, prompt_file_problems, reward_server_problems

    if address is not None and config.train.executor == "local":
        raise ConfigError(
            f"--address {address}: this run trains in-process (train.executor local) and would not use the cluster; "
            "give --executor ray to run on it, or leave --address out"
        )
    problems = []
    try:
        folder = check_generator_folder(config.model.path, config.model.kind)
        check_resolution(folder, config.model.resolution)
        if config.model.kind == "meissonic":
            from maskfocus.models.meissonic import check_checkpoint_code

            check_checkpoint_code(folder, config.model.trust_checkpoint_code)
    except ModelLoadError as error:
        problems.append(str(error))
    if config.train.executor == "local":  # on Ray the workers' nodes hold the GPUs, and the driver picks its own
        try:
            check_device(config.model.device)
        except ModelLoadError as error:
            problems.append(str(error))
    problems += missing_file_problems(config)
    if not problems:  # the prompts are read with the model's tokenizer
        problems += prompt_file_problems(config)
    unreachable = reward_server_problems(config)
    if config.train.executor == "local":
        problems += unreachable
    else:  # the reward workers, on other nodes, may reach it
        for problem in unreachable:
            print(f"note: {problem}; on Ray the reward workers must reach it from their nodes")
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"the run cannot start, {len(problems)} problems:\n  " + "\n  ".join(problems))
    if config.train.executor == "ray":
        from maskfocus.actors.cluster import check_cluster_reachable, check_supported

        check_supported(config)
        check_cluster_reachable(config.ray, address)


def report_check(config: RunConfig, run_dir: Path, resume_from: int | None, address: str | None) -> int:
    """`--check`: the checks passed; print the plan, the cluster and the folder, and write nothing."""
    from maskfocus.models.loading import resolve_model_path
    from maskfocus.preflight import plan_lines

    print(f"model: {config.model.path} ({config.model.kind}, {resolve_model_path(config.model.path)})")
    for line in plan_lines(config, resume_from or 0):
        print(line)
    checked = "config, model folder, other files read"
    if config.train.executor == "ray":
        from maskfocus.actors.cluster import cluster_address, probed_address

        given = cluster_address(config.ray, address)
        print("cluster: a local Ray" if given is None else f"cluster: {given[1]} (from {given[0]})")
        checked += ", the cluster answers" if given is not None and probed_address(given[1]) else ""
    if resume_from is None:
        print(f"run folder: {run_dir} (not made)")
    else:
        print(f"run folder: {run_dir} (resumes at iteration {resume_from}; unchanged)")
    print(f"checks passed: {checked}; nothing written: run the same command without --check to start")
    return 0


def gain_line(run_dir: Path, overall: float) -> str:
    """The final overall score against the base model's, where the base's evaluation is known."""
    from maskfocus.compare import base_summary, unlike_evaluations
    from maskfocus.compare_run import load_run

    run = load_run(run_dir)
    base = base_summary([run], None)
    hint = f"compare runs: maskfocus compare {run_dir.parent}"
    if base is None:
        return f"overall {overall:.3f} (no base-model evaluation to compare with); {hint}"
    gain = f"overall {base['overall']:.3f} (base model) -> {overall:.3f} ({overall - base['overall']:+.3f})"
    if differences := unlike_evaluations([run], base):  # as `maskfocus compare` notes them
        gain += f", not like for like: {'; '.join(differences)}"
    return f"{gain}; {hint}"
