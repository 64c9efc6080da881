"""`maskfocus` command line: pretrain | sample | eval | train | compare.

User errors (bad config, unknown words, malformed metadata, missing weights) print one clear message
and exit with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from maskfocus.cli_eval_options import add_detector_options, detector_overrides
from maskfocus.cli_train import cmd_train
from maskfocus.config import (
    DEFAULT_CONFIG,
    ConfigError,
    ModelConfig,
    RunConfig,
    SamplerConfig,
    load_config_or_default,
)
from maskfocus.config_base import set_from_option, set_in
from maskfocus.config_yaml import parse_set
from maskfocus.outputs import check_distinct_files, check_output_file, write_text_whole
from maskfocus.script_args import SAMPLING_ONLY, nonnegative_int, positive_int, run_script

SAMPLER_OPTIONS = {
    "steps": "sampler.num_steps",
    "cfg": "sampler.cfg_scale",
    "gumbel": "sampler.gumbel_temperature",
    "batch_size": "sampler.batch_size",
}
"""The sampler shortcuts of `sample` and `eval`: argparse dest -> config key."""


def _sampler_overrides(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """The `--set KEY=VALUE` overrides, then the sampler shortcuts (`--steps`, `--cfg`, ...) on top, and the option
    that gave each shortcut's key (for error messages). Sampling and evaluation select no training steps:
    `selection.strategy: all` has no K to check against a smaller --steps."""
    overrides = {**SAMPLING_ONLY, **parse_set(getattr(args, "set", None) or [])}
    options = {}
    for dest, key in SAMPLER_OPTIONS.items():
        if getattr(args, dest, None) is not None:
            options[key] = "--" + dest.replace("_", "-")
            set_from_option(overrides, key, getattr(args, dest), options[key])
    return overrides, options


def _model_config(args: argparse.Namespace, config: RunConfig) -> ModelConfig:
    """The run config's model section, with `--model PATH` replacing its path."""
    if args.model is not None and not args.model.strip():
        raise ConfigError("--model is empty: give a model folder (e.g. runs/NAME/model), or leave it out (model.path)")
    return config.model.model_copy(update={"path": args.model}) if args.model else config.model


def _eager_for_few(args: argparse.Namespace, sampler: SamplerConfig, num_images: int) -> SamplerConfig:
    """The sampler settings without the compile for fewer than COMPILE_PAYS_OFF_IMAGES images, unless the command
    line sets sampler.compile itself."""
    from maskfocus.compiled import COMPILE_PAYS_OFF_IMAGES

    asked, _ = set_in(parse_set(args.set), "sampler.compile")
    if not sampler.compile or num_images >= COMPILE_PAYS_OFF_IMAGES or asked:
        return sampler
    return sampler.model_copy(update={"compile": False})


def cmd_sample(args: argparse.Namespace) -> int:
    from maskfocus.images import save_grid
    from maskfocus.models import load_generator
    from maskfocus.sampling import check_negative_prompt, sample_images_in_batches, seeded_generator

    if not args.prompt.strip():
        raise ConfigError("--prompt is empty: give the text to draw (an empty one samples CFG's unconditional branch)")
    config = load_config_or_default(args.config, *_sampler_overrides(args))
    check_output_file("--out", args.out, "image")
    model = load_generator(_model_config(args, config))
    prompts = [args.prompt] * args.num_images
    model.check_prompts(prompts[:1])
    check_negative_prompt(model, config.sampler)
    sampler = _eager_for_few(args, config.sampler, args.num_images)
    images = sample_images_in_batches(model, prompts, sampler, seeded_generator(args.seed, device=model.device))
    columns = min(args.num_images, 8)
    path = save_grid(args.out, images, columns=columns, scale=args.scale)
    print(f"wrote {len(images)} image(s) of {args.prompt!r} to {path}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from maskfocus.evaluation import (
        build_eval_clip_score,
        build_eval_judge,
        check_classes,
        check_server_answers,
        grid_rows,
        load_rows,
        run_evaluation,
        spread_over_each_tag,
    )
    from maskfocus.evaluation_output import format_table, write_results
    from maskfocus.images import save_grid
    from maskfocus.models import load_generator
    from maskfocus.stopping import stop_named

    overrides, options = _sampler_overrides(args)
    if args.num_images_per_prompt is not None:
        set_from_option(overrides, "eval.num_images_per_prompt", args.num_images_per_prompt, "--num-images-per-prompt")
    config = load_config_or_default(args.config, overrides, options)
    check_output_file("--out", args.out, "file")
    check_output_file("--summary", args.summary, "file")
    check_output_file("--grid", args.grid, "image")
    check_distinct_files(
        {
            "--config": args.config,
            "--metadata": args.metadata,
            "--out": args.out,
            "--summary": args.summary,
            "--grid": args.grid,
        }
    )
    if args.metadata is not None and args.benchmark is not None:
        raise ConfigError(f"--metadata {args.metadata} and --benchmark {args.benchmark}: give one prompt set")
    if args.metadata is not None and Path(args.metadata).is_dir():
        raise ConfigError(f"--metadata {args.metadata}: is a folder; give a GenEval-format JSONL file")
    if args.metadata is not None and not Path(args.metadata).is_file():
        raise ConfigError(f"--metadata {args.metadata}: no such file (a GenEval-format JSONL is expected)")
    benchmark = args.benchmark or config.eval.benchmark
    rows = load_rows(benchmark, args.metadata)
    if args.per_tag is not None:
        rows = [rows[index] for index in spread_over_each_tag(rows, args.per_tag)]
    rows = rows[: args.limit]
    if not rows:
        raise ConfigError(f"no prompt rows in {f'--metadata {args.metadata}' if args.metadata else benchmark}")
    judge = build_eval_judge(config, detector_overrides(args))
    check_server_answers(judge)
    if judge.known_classes is not None:
        check_classes(rows, judge.known_classes, judge.name, judge.known_colors)
    model = load_generator(_model_config(args, config), dtype=config.eval.weights_dtype(config.model))
    clip_score = None if args.no_clip else build_eval_clip_score(config, judge.name)
    records_out = Path(args.out) if args.out else None
    shown = grid_rows(rows) if args.grid else []  # the rows the grid shows: their images are kept
    kept = f"the records judged so far are in {records_out}.partial" if records_out else "nothing was written"
    with stop_named("evaluating", lambda: kept):  # Ctrl-C or SIGTERM: say what was kept
        records, summary, images = run_evaluation(
            model,
            rows,
            config.eval,
            _eager_for_few(args, config.sampler, len(rows) * config.eval.num_images_per_prompt),
            clip_score=clip_score,
            keep_rows=shown,
            judge=judge,
            records_out=records_out,
        )
    write_results(records, summary, None, Path(args.summary) if args.summary else None)  # records: written as judged
    grid = None
    if args.grid and images is not None:  # one labelled row per prompt: the first two of each tag, framed by verdict
        labels = [f"{rows[index].get('tag', '?')}: {rows[index]['prompt']}" for index in shown]
        judged = {(record["row"], record["image"]): record["correct"] for record in records}
        per_row = config.eval.num_images_per_prompt
        verdicts = [judged.get((index, image)) for index in sorted(shown) for image in range(per_row)]
        grid = save_grid(args.grid, images, columns=per_row, scale=2, labels=labels, verdicts=verdicts)
    print(format_table(summary))
    print(f"{summary['seconds']} s")
    _print_written({"results": records_out, "summary": args.summary, "grid": grid})
    return 0


def _print_written(files: dict[str, str | Path | None]) -> None:
    """One `WHAT: PATH` line per file a command wrote, in the order given; None: not written."""
    for what, path in files.items():
        if path is not None:
            print(f"{what}: {path}")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from maskfocus.config import section_with_overrides
    from maskfocus.shapes.pretrain import PretrainConfig, run_pretraining

    stages = [stage.strip() for stage in args.stages.split(",") if stage.strip()]
    settings = parse_set(args.set)
    options = {}
    for key, value in (("seed", args.seed), ("eval_images_per_prompt", args.eval_images_per_prompt)):
        if value is not None:
            options[key] = f"--{key.replace('_', '-')}"
            set_from_option(settings, key, value, options[key])
    config = section_with_overrides(PretrainConfig, settings, "of maskfocus pretrain", options)
    out = Path(args.out) if args.out else None
    try:
        run_pretraining(out, stages=stages, command="maskfocus " + " ".join(sys.argv[1:]), config=config)
    except KeyboardInterrupt:  # before the stages began (run_pretraining reports a stop during them)
        from maskfocus.stopping import RunStopped

        raise RunStopped("stopped before any stage was trained; nothing was saved", "SIGINT") from None
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from maskfocus.compare import (
        base_summary,
        check_curve_key,
        comparison_table,
        group_runs,
    )
    from maskfocus.compare_folders import (
        check_outputs_spare_the_runs,
        find_run_folders,
        load_readable_runs,
        unreadable_run_folders,
    )
    from maskfocus.compare_plot import plot_comparison

    check_output_file("--out", args.out, "figure")
    check_output_file("--markdown", args.markdown, "file")
    check_distinct_files({"--out": args.out, "--markdown": args.markdown})
    paths = [Path(p) for p in args.runs]
    folders = find_run_folders(paths)
    outputs = {"--out": args.out, "--markdown": args.markdown}
    check_outputs_spare_the_runs(outputs, folders, Path(args.base) if args.base else None)
    runs, problems = load_readable_runs(folders, args.curve)
    for problem in problems:
        print(f"left out: {problem}", file=sys.stderr)
    for folder in unreadable_run_folders(paths):
        print(f"left out {folder}: it holds a run's metrics or checkpoints but no config.yaml", file=sys.stderr)
    check_curve_key(runs, args.curve)
    groups, common = group_runs(runs, tuple(args.ignore))
    base = base_summary(runs, Path(args.base) if args.base else None)
    table = comparison_table(groups, base, common)
    print(table, end="")
    if args.markdown:
        write_text_whole(Path(args.markdown), table)
        print(f"table: {args.markdown}")
    print(f"picture: {plot_comparison(groups, Path(args.out), base, window=args.window, curve_key=args.curve)}")
    return 0


def package_version() -> str:
    """The installed package's version (pyproject.toml), or where it runs from a checkout without installing."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maskfocus")
    except PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskfocus", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"maskfocus {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="sample images for one prompt into a grid PNG")
    sample.add_argument("--prompt", required=True, help='text prompt, e.g. "a photo of two red circles"')
    sample.add_argument("--num-images", type=positive_int, default=8, help="images in the grid (default %(default)s)")
    sample.add_argument("--out", default="grid.png", help="PNG of the image grid (default grid.png, replaced if there)")
    sample.add_argument("--config", help=f"run YAML (default {DEFAULT_CONFIG.name})")
    sample.add_argument("--model", help="model folder (default: the config's model.path)")
    sample.add_argument(
        "--seed", type=nonnegative_int, default=0, help="sampling seed (default %(default)s; same seed, same images)"
    )
    sample.add_argument("--steps", type=positive_int, help="override sampler.num_steps")
    sample.add_argument("--cfg", type=float, help="override sampler.cfg_scale")
    sample.add_argument("--gumbel", type=float, help="override sampler.gumbel_temperature")
    sample.add_argument(
        "--scale", type=scale_factor, default=3, help="upscale factor of the PNG tiles, 1 to 32 (default %(default)s)"
    )
    _add_set_option(
        sample,
        "override a config key (repeatable); sampling is eager below 400 images, where compiling costs more than it "
        "saves, unless --set sampler.compile=true",
    )
    sample.set_defaults(func=cmd_sample)

    evaluate = commands.add_parser("eval", help="GenEval-style evaluation with a per-tag table")
    evaluate.add_argument("--benchmark", help="built-in prompt set (default: the config's eval.benchmark)")
    evaluate.add_argument("--metadata", help="GenEval-format JSONL instead of a built-in benchmark")
    evaluate.add_argument(
        "--num-images-per-prompt", type=positive_int, help="images per prompt row (default: eval.num_images_per_prompt)"
    )
    evaluate.add_argument("--out", help="one JSON record per image (replaced if there)")
    evaluate.add_argument(
        "--summary",
        help="summary JSON {overall, tags, num_images, clip_score, seconds, evaluated; num_unscored when the judge "
        "could not score some images}; replaced if there",
    )
    evaluate.add_argument(
        "--grid",
        help="PNG of the first two prompts of each tag, a labelled row of their images each (replaced if there)",
    )
    evaluate.add_argument("--config", help=f"run YAML (default {DEFAULT_CONFIG.name})")
    evaluate.add_argument("--model", help="model folder, e.g. runs/NAME/model (default: the config's model.path)")
    evaluate.add_argument("--limit", type=positive_int, help="only the first N prompt rows (smoke tests)")
    evaluate.add_argument(
        "--per-tag",
        type=positive_int,
        help="only N prompt rows of each tag, evenly spaced through its rows: a quick overall over every tag (before "
        "--limit)",
    )
    evaluate.add_argument("--steps", type=positive_int, help="override sampler.num_steps")
    evaluate.add_argument("--cfg", type=float, help="override sampler.cfg_scale")
    evaluate.add_argument("--gumbel", type=float, help="override sampler.gumbel_temperature")
    evaluate.add_argument("--batch-size", type=positive_int, help="override sampler.batch_size")
    evaluate.add_argument("--no-clip", action="store_true", help="skip the CLIP score")
    add_detector_options(evaluate)
    _add_set_option(
        evaluate,
        "override a config key (repeatable); below 400 images (e.g. with --limit) sampling is eager unless --set "
        "sampler.compile=true",
    )
    evaluate.set_defaults(func=cmd_eval)

    train = commands.add_parser("train", help="RL post-training (MaskFocus GRPO) from one YAML config")
    train.add_argument("--config", help=f"run YAML (default {DEFAULT_CONFIG.name})")
    train.add_argument("--executor", choices=["local", "ray"], help="override train.executor")
    train.add_argument("--iterations", type=positive_int, help="override train.num_iterations")
    train.add_argument(
        "--name",
        help="run folder name under train.out_dir (default: a timestamp; the folder of runs is the config's "
        "train.out_dir, runs/ under the current folder for the shipped configs: --set train.out_dir=DIR moves it)",
    )
    train.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its latest checkpoint")
    train.add_argument(
        "--address", help="Ray cluster address (default: the config's ray.address, else RAY_ADDRESS, else a local Ray)"
    )
    train.add_argument(
        "--check",
        action="store_true",
        help="check the config and every folder and file the run reads (model, prompts, text encoder, rewards), the "
        "weight transport and the Ray address; print the run's plan, and stop (nothing is written)",
    )
    _add_set_option(train, "override any config key, e.g. --set selection.strategy=random (repeatable)")
    train.set_defaults(func=cmd_train)

    compare = commands.add_parser(
        "compare", help="compare runs: final per-tag scores by config (mean ± seed spread) and reward curves"
    )
    compare.add_argument("runs", nargs="+", help="run folders, or folders with runs up to 3 levels below (e.g. runs)")
    compare.add_argument(
        "--out",
        default="compare.png",
        help="PNG of the reward curves and final scores (default compare.png, replaced if there)",
    )
    compare.add_argument("--markdown", help="also write the table to this file (replaced if there)")
    compare.add_argument(
        "--base",
        help="the base model's `maskfocus eval --summary` JSON (default: the built-in model's measurement, when every "
        "run started from the built-in model; else no base row)",
    )
    compare.add_argument(
        "--window", type=positive_int, default=10, help="moving-average window of the curves (default %(default)s)"
    )
    compare.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="KEY",
        help="a config key or section that must not split groups, e.g. train.executor or ray (repeatable)",
    )
    compare.add_argument(
        "--curve", default="reward/mean", help="metrics.jsonl key to draw per run, e.g. loss/kl or reward/tag/position"
    )
    compare.set_defaults(func=cmd_compare)

    pretrain = commands.add_parser("pretrain", help="rebuild the built-in tiny model and CLIP from a seed")
    pretrain.add_argument(
        "--out",
        help="folder for the weights (default: the package's pretrained/, whose shipped weights are then replaced "
        "in place; give --out DIR to keep them)",
    )
    pretrain.add_argument(
        "--stages",
        default="vq,generator,clip",
        help="comma list of vq,generator,clip (default %(default)s); measure alone only measures what is there and "
        "writes MODEL_CARD.md",
    )
    pretrain.add_argument("--seed", type=int, help="seed of every pretraining stage (default 0)")
    pretrain.add_argument(
        "--eval-images-per-prompt", type=int, help="images per row of the final shapes-geneval measure (default 4)"
    )
    _add_set_option(pretrain, "override a pretraining setting, e.g. --set generator.num_steps=4000 (repeatable)")
    pretrain.set_defaults(func=cmd_pretrain)
    return parser


def scale_factor(text: str) -> int:
    """argparse type of `sample --scale`: 1 to 32 (a 64-pixel tile at 32x is 2,048 pixels wide)."""
    value = positive_int(text)
    if value > 32:
        raise argparse.ArgumentTypeError(f"must be <= 32, got {value}")
    return value


def _add_set_option(command: argparse.ArgumentParser, help_text: str) -> None:
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help_text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from maskfocus.stopping import RunFailed, RunStopped

    def command() -> int:
        try:
            return args.func(args)
        except RunStopped as stopped:  # Ctrl-C or SIGTERM: the message says how to resume
            print(f"maskfocus {args.command}: {stopped}", file=sys.stderr)
            return stopped.exit_code
        except RunFailed as failed:  # the cause and how to resume, not pages of the driver's own frames
            where = f"; the full traceback is in {failed.error_log}" if failed.error_log else ""
            print(f"maskfocus {args.command}: {failed}{where}", file=sys.stderr)
            return 1

    return run_script(command, prog=f"maskfocus {args.command}")


if __name__ == "__main__":
    sys.exit(main())
