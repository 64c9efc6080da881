"""`maskfocus train --executor local` end to end in a subprocess: metrics, images, checkpoint, resume. (The float32
master weights of a bfloat16 run: tests/test_driver.py, for both executors.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ray_fixture import one_thread, random_model, tiny_config  # noqa: F401
from support import cli_error

from maskfocus.config import load_config
from maskfocus.run_io import load_checkpoint_weights
from maskfocus.run_state import latest_checkpoint
from maskfocus.sampling import sample_with_config

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--set",
    "rollout.prompts_per_iteration=2",
    "--set",
    "rollout.group_size=2",
    "--set",
    "sampler.num_steps=4",
    "--set",  # compiling costs more than it saves on a few tiny batches
    "sampler.compile=false",
    "--set",
    "train.compile_learner=false",
    "--set",
    "selection.num_steps=2",
    "--set",
    "train.final_eval=false",
    "--set",
    "train.checkpoint_every=2",
    "--set",
    "train.image_every=2",
    "--set",  # the CLIP score is continuous: every group has a learning signal even when GenEval gives all 0
    "rewards=[{name: clip, weight: 1.0}]",
]


def train(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "maskfocus.cli",
        "train",
        "--executor",
        "local",
        "--name",
        "run",
        "--set",
        f"train.out_dir={tmp_path}",
        *TINY,
        *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    """One 3-iteration run (26 s measured here with its imports and model loads, so two tests share it). Its
    rollouts take 3 steps where the previews take sampler.num_steps = 4 (rollouts at sampler.num_steps, the default,
    run in the other end-to-end tests: the Ctrl-C test here, tests/test_driver.py)."""
    out = tmp_path_factory.mktemp("short")
    result = train(out, "--iterations", "3", "--set", "rollout.num_steps=3")
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "run"


def test_short_run_writes_metrics_images_and_a_reloadable_checkpoint(short_run):
    run = short_run
    assert not (run / "run.lock").exists()  # held while it trained, released at its end
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2]
    for key in (
        "reward/mean",
        "loss/policy",
        "loss/kl",
        "loss/ratio_mean",
        "loss/clip_fraction",
        "loss/grad_norm",
        "loss/entropy",
        "select/mean_step",
        "reward/zero_adv_group_fraction",
        "perf/learner_seconds",
    ):
        assert key in records[0], key
    assert records[0]["perf/optimizer_steps"] == 2  # per_step: one optimizer step per selected step (K = 2)
    assert "select/step_02" in records[0] and "select/step_03" not in records[0]  # the rollouts' T = 3
    assert sorted(p.name for p in (run / "images").glob("*.png")) == ["iter_000000.png", "iter_000002.png"]
    from PIL import Image

    for picture in (run / "images" / "iter_000000.png", run / "reward_curve.png"):  # whole images, not just files
        with Image.open(picture) as image:
            image.load()
            assert image.width >= 64 and image.height >= 64, picture
    saved = load_config(run / "config.yaml")  # the settings it ran with, command-line ones included
    assert (saved.train.num_iterations, saved.rollout.num_steps, saved.train.executor) == (3, 3, "local")
    checkpoint = latest_checkpoint(run)
    assert checkpoint is not None and checkpoint.name == "iter_000002"
    from safetensors.torch import load_file

    from maskfocus.models.amused import AmusedGenerator, builtin_folder

    base = load_file(str(next((builtin_folder() / "transformer").glob("*.safetensors"))))
    trained = AmusedGenerator.from_folder(run / "model").transformer.state_dict()
    moved = any(not torch.equal(base[k], v) for k, v in trained.items())
    state = load_checkpoint_weights(checkpoint, AmusedGenerator.from_folder(run / "model").transformer)
    assert state["iteration"] == 2 and state["prompt_cursor"] == 6
    assert moved, "the final model folder should hold the trained weights"


def test_resume_after_a_crash_between_checkpoints_redoes_the_lost_iterations_once(short_run, tmp_path):
    """As if the run had died during iteration 2, mid-write of its record: its checkpoint is missing and its
    metrics line cut short. The resume continues from iter_000001's iteration and prompt cursor, metrics.jsonl
    ends with each iteration once, and the superseded record and the cut line are kept aside. The resume also
    extends the run by one iteration, which config.yaml then records."""
    run = shutil.copytree(short_run, tmp_path / "run")
    shutil.rmtree(run / "checkpoints" / "iter_000002")
    first_record_2 = (run / "metrics.jsonl").read_text().splitlines()[2]
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"iteration": 3, "reward/me')
    resumed = subprocess.run(
        [sys.executable, "-m", "maskfocus.cli", "train", "--resume", str(run), "--iterations", "4"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [0, 1, 2, 3]
    assert [r["prompt_cursor"] for r in records] == [2, 4, 6, 8]
    assert latest_checkpoint(run).name == "iter_000003"
    superseded = (run / "metrics.superseded.jsonl").read_text().splitlines()
    assert superseded == [first_record_2, '{"iteration": 3, "reward/me']
    # the extension to 4 iterations is printed and recorded, the 3-iteration config kept; no scheduler warning
    assert "the resume changes train.num_iterations: 3 -> 4 " in resumed.stdout
    assert load_config(run / "config.yaml").train.num_iterations == 4
    assert load_config(run / "config.before_resume_iter_000001.yaml").train.num_iterations == 3
    assert "lr_scheduler.step()" not in resumed.stderr
    # the schedule stretched over 4 iterations is said; the 3-iteration run's model is set aside, a new one written
    assert "learning-rate schedule: now spans 4 iterations, 8 optimizer steps (was 3, 6); " in resumed.stdout
    assert (run / "model.before_resume_iter_000001" / "transformer").is_dir() and (run / "model").is_dir()
    # the progress bar counts the run's iterations from the resume point: 2/4 ... 4/4, not 0/2 ... 2/2
    assert "2/4" in resumed.stderr and "4/4" in resumed.stderr and "0/2 [" not in resumed.stderr


@pytest.mark.parametrize("signal_name, exit_code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_stop_during_the_final_evaluation_says_the_training_is_saved_and_how_to_evaluate(
    tmp_path, monkeypatch, capsys, signal_name, exit_code
):
    """The stop handler is gone once the iterations are done; a Ctrl-C or a SIGTERM (`ray job stop`) in the 3-4 min
    evaluation still ends with the exit code of a stop and a message: the model is saved, and the commands that
    evaluate it."""
    import os
    import signal

    import maskfocus.trainer as trainer
    from maskfocus.cli import main
    from maskfocus.models import load_generator
    from maskfocus.run_io import save_checkpoint

    def interrupted_evaluation(*args, **kwargs):
        os.kill(os.getpid(), getattr(signal, signal_name))
        pytest.fail(f"{signal_name} did not stop the evaluation")

    def trained(config, run_dir, resume=False):  # the iterations are done: the last checkpoint, then finish_run
        model = load_generator(config.model, dtype="float32")
        save_checkpoint(run_dir, config.train.num_iterations - 1, model.trainable_module(), None, {})
        return trainer.finish_run(config, run_dir, model, model.trainable_module())

    monkeypatch.setattr(trainer, "run_evaluation", interrupted_evaluation)
    monkeypatch.setattr(trainer, "train_local", trained)
    out = ["--set", f"train.out_dir={tmp_path}", "--set", "train.final_eval=true", "--iterations", "2"]
    try:
        status = main(["train", "--executor", "local", "--name", "run", *out])
    except KeyboardInterrupt:
        pytest.fail(f"{signal_name} during the final evaluation ended in a bare KeyboardInterrupt")
    run, error = tmp_path / "run", capsys.readouterr().err
    assert status == exit_code
    assert f"stopped on {signal_name} during the final evaluation" in error
    assert (run / "model" / "transformer").is_dir() and not (run / "eval").exists()
    assert f"training finished and is saved (model: {run / 'model'}, last checkpoint: iter_000001)" in error
    evaluate = f"maskfocus eval --config {run / 'config.yaml'} --model {run / 'model'}"
    assert f"`{evaluate} --out {run / 'eval' / 'results.jsonl'} --summary {run / 'eval' / 'summary.json'}`" in error
    assert f"`maskfocus train --resume {run}`" in error
    assert not (run / "run.lock").exists()


@pytest.mark.parametrize(
    ("step", "effect", "exit_code"),
    [("save_model_folder", "SIGTERM", 143), ("build_eval_judge", "SIGTERM", 143), ("build_eval_judge", "error", 1)],
)
def test_a_stop_or_failure_after_the_last_iteration_says_what_is_saved_and_how_to_finish(
    tmp_path, monkeypatch, capsys, step, effect, exit_code
):
    """Only the evaluation itself had a stop handler: a SIGTERM while the final model was written or the judge
    loaded ended the process without a word, its run lock left behind; a failure there was a bare traceback."""
    import os
    import signal

    import maskfocus.trainer as trainer
    from maskfocus.cli import main
    from maskfocus.models import load_generator
    from maskfocus.run_io import save_checkpoint

    def interrupted(*args, **kwargs):
        if effect == "error":
            raise RuntimeError("CUDA out of memory")
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not stop the run")

    def trained(config, run_dir, resume=False):  # the iterations are done: the last checkpoint, then finish_run
        model = load_generator(config.model, dtype="float32")
        save_checkpoint(run_dir, config.train.num_iterations - 1, model.trainable_module(), None, {})
        return trainer.finish_run(config, run_dir, model, model.trainable_module())

    monkeypatch.setattr(trainer, step, interrupted)
    monkeypatch.setattr(trainer, "train_local", trained)
    out = ["--set", f"train.out_dir={tmp_path}", "--set", "train.final_eval=true", "--iterations", "2"]
    status = main(["train", "--executor", "local", "--name", "run", *out])
    run, error = tmp_path / "run", capsys.readouterr().err
    assert status == exit_code and not (run / "run.lock").exists()
    resume = f"`maskfocus train --resume {run}`"
    if step == "save_model_folder":
        assert "stopped on SIGTERM while writing the final model; the training finished and is checkpointed " in error
        assert f"(last checkpoint: iter_000001); {resume} writes the final model and its evaluation" in error
        return
    happened = "stopped on SIGTERM" if effect == "SIGTERM" else "the run failed"
    assert f"{happened} during the final evaluation" in error and (run / "model" / "transformer").is_dir()
    assert f"evaluate it with `maskfocus eval --config {run / 'config.yaml'}" in error and resume in error
    if effect == "error":
        assert "RuntimeError: CUDA out of memory" in error and "CUDA out of memory" in (run / "error.log").read_text()


def test_the_final_evaluation_judges_as_maskfocus_eval_of_the_runs_config_does(tmp_path, monkeypatch):
    """It used a bare shapes detector at GenEval's thresholds, recorded as judge "detector": `maskfocus compare`
    then set it apart from a `maskfocus eval` summary of the same settings (judge "shapes"), and a run whose
    geneval reward sets its own thresholds was judged at others than `maskfocus eval --config RUN/config.yaml`."""
    import maskfocus.trainer as trainer
    from maskfocus.config import config_from_dict
    from maskfocus.models import load_generator

    judges = []

    def judged(model, rows, eval_config, sampler, detect_batch=None, judge=None, **kwargs):
        judges.append((detect_batch, judge))
        return [], {"overall": 0.0, "tags": {}}, None

    monkeypatch.setattr(trainer, "run_evaluation", judged)
    reward = {"name": "geneval", "mode": "partial", "detector": {"score_threshold": 0.5}}
    config = config_from_dict({"rewards": [reward], "train": {"final_eval": True, "num_iterations": 1}})
    model = load_generator(config.model, dtype="float32")
    trainer.finish_run(config, tmp_path, model, model.trainable_module())
    [(detect_batch, judge)] = judges
    assert detect_batch is None and judge.name == "shapes" and judge.thresholds.score == 0.5


def test_the_final_model_folder_holds_the_text_encoder_the_run_used(tmp_path, monkeypatch):
    """Given as `~/...` (the model loads it so), it failed after all the training."""
    import shutil

    import maskfocus.trainer as trainer
    from maskfocus.config import config_from_dict
    from maskfocus.models import load_generator
    from maskfocus.models.loading import resolve_model_path

    replacement = shutil.copytree(resolve_model_path("builtin:shapes-tiny") / "text_encoder", tmp_path / "encoder")
    (replacement / "MARK").write_text("the run's")
    monkeypatch.setenv("HOME", str(tmp_path))
    config = config_from_dict({"model": {"text_encoder": "~/encoder"}, "train": {"final_eval": False}})
    model = load_generator(config.model, dtype="float32")
    trainer.finish_run(config, tmp_path / "run", model, model.trainable_module())
    assert (tmp_path / "run" / "model" / "text_encoder" / "MARK").read_text() == "the run's"


def test_unknown_key_in_a_train_override_is_a_clear_error(tmp_path, capsys):
    out = ["--set", f"train.out_dir={tmp_path}"]
    error = cli_error(capsys, "train", "--executor", "local", *out, "--set", "grpo.clip=0.1")
    assert "grpo.clip" in error and not any(tmp_path.iterdir())


def shipped_config(**model: str):
    return load_config(ROOT / "configs" / "shapes_tiny.yaml", {"model": model})


def test_bfloat16_rollouts_sample_from_a_copy_that_follows_the_float32_master():
    from maskfocus.models import load_generator
    from maskfocus.trainer import rollout_model, sync_weights

    config = shipped_config(dtype="bfloat16")
    master = load_generator(config.model, dtype="float32")
    copy = rollout_model(config, master)
    assert copy is not master
    assert all(p.dtype == torch.float32 for p in master.trainable_module().parameters())
    assert all(p.dtype == torch.bfloat16 for p in copy.trainable_module().parameters())
    with torch.no_grad():
        for parameter in master.trainable_module().parameters():
            parameter.add_(0.01)
    sync_weights(copy, master)
    for (name, mine), theirs in zip(
        copy.trainable_module().state_dict().items(), master.trainable_module().state_dict().values(), strict=True
    ):
        assert torch.equal(mine, theirs.to(mine.dtype)), name


def test_float32_rollouts_sample_from_the_master_itself():
    from maskfocus.models import load_generator
    from maskfocus.trainer import rollout_model

    config = shipped_config(dtype="float32")
    master = load_generator(config.model, dtype="float32")
    assert rollout_model(config, master) is master


def test_ctrl_c_stops_after_the_iteration_with_a_checkpoint_and_the_resume_command(tmp_path):
    """SIGINT mid-run (as Ctrl-C sends it): the run finishes its iteration, checkpoints it off the checkpoint_every
    schedule, and exits 130 with the `--resume` command; metrics.jsonl ends at that iteration."""
    command = [sys.executable, "-m", "maskfocus.cli", "train", "--executor", "local", "--name", "run"]
    command += ["--set", f"train.out_dir={tmp_path}", *TINY, "--set", "train.checkpoint_every=1000"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = tmp_path / "stderr.txt"  # a file, not a pipe: a full pipe would block the run
    with log.open("w") as stderr_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr_file)
        metrics = tmp_path / "run" / "metrics.jsonl"
        deadline = time.monotonic() + 300
        while not (metrics.exists() and metrics.read_text().count("\n") >= 1) and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        assert json.loads((tmp_path / "run" / "run.lock").read_text())["pid"] == process.pid  # held while it trains
        process.send_signal(signal.SIGINT)
        process.wait(timeout=300)
    stderr = log.read_text()
    assert process.returncode == 130, stderr[-3000:]
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    last = records[-1]["iteration"]
    assert [r["iteration"] for r in records] == list(range(last + 1)) and last < 249
    assert latest_checkpoint(tmp_path / "run").name == f"iter_{last:06d}"
    assert f"stopped on SIGINT after iteration {last} ({last + 1} of 250 done)" in stderr
    assert f"maskfocus train --resume {tmp_path / 'run'}" in stderr
    assert not (tmp_path / "run" / "model").exists()  # a stopped run is not finished
    assert not (tmp_path / "run" / "run.lock").exists()  # a stop releases the folder for the resume it prints


def test_the_in_process_learner_gets_the_rollouts_T_and_the_previews_keep_the_samplers(
    random_model,  # noqa: F811
    tmp_path,
    monkeypatch,
    one_thread,  # noqa: F811
):
    """Meissonic's timestep is T-1-i, so the learner must be given the T that sampled a state (the built-in aMUSEd
    format ignores it: this checks the wiring, not the logits). The preview grid shows what evaluation samples."""
    import maskfocus.trainer as trainer
    from maskfocus.update import PolicyUpdater

    learner_steps: list[int] = []
    preview_steps: list[int] = []

    class RecordingUpdater(PolicyUpdater):
        def __init__(self, model, grpo, optim, num_sampling_steps, *args, **kwargs):
            learner_steps.append(num_sampling_steps)
            super().__init__(model, grpo, optim, num_sampling_steps, *args, **kwargs)

    def recording_sample(model, prompts, sampler, *args, **kwargs):
        preview_steps.append(sampler.num_steps)
        return sample_with_config(model, prompts, sampler, *args, **kwargs)

    monkeypatch.setattr(trainer, "PolicyUpdater", RecordingUpdater)
    monkeypatch.setattr(trainer, "sample_with_config", recording_sample)  # the previews' sampler (rollouts: rollout.py)
    config = tiny_config(random_model, tmp_path, rollout={"num_steps": 3}, train={"num_iterations": 1})
    trainer.train_local(config, tmp_path, show_progress=False)
    assert learner_steps == [3] and preview_steps == [4] == [config.sampler.num_steps]


def test_a_stop_during_the_final_evaluation_of_a_ray_job_names_the_jobs_resume_command(tmp_path, monkeypatch):
    """It named `maskfocus train --resume` inside a job too, where a resume goes through deploy/submit.sh."""
    from maskfocus.config import default_run_config
    from maskfocus.ray_job import JOB_MARKER
    from maskfocus.trainer import after_training_message

    config = default_run_config()
    for model_written in (True, False):
        message = after_training_message(tmp_path, config, "stopped on SIGTERM", model_written)
        assert f"`maskfocus train --resume {tmp_path}`" in message
    monkeypatch.setenv(JOB_MARKER, "{}")
    for model_written in (True, False):
        message = after_training_message(tmp_path, config, "stopped on SIGTERM", model_written)
        assert f"`deploy/submit.sh --resume {tmp_path}`" in message and "maskfocus train --resume" not in message
