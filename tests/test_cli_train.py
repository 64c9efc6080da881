"""`maskfocus train` (maskfocus/cli_train.py): what is checked before a run folder is made or changed, `--check`,
and settings given with a resume."""

from __future__ import annotations

import json

import pytest
from support import cli_error, save_base_checkpoint


def test_a_resolution_the_vq_cannot_tile_is_refused_before_the_run_folder_is_made(tmp_path, capsys):
    """It passed --check and failed once the model loaded: in-process after the folder was made, on Ray in a worker."""
    runs = tmp_path / "runs"
    for check in ([], ["--check"]):
        error = cli_error(capsys, "train", "--set", "model.resolution=102", "--set", f"train.out_dir={runs}", *check)
        assert "model.resolution 102 is not a multiple of the VQ's downscale 4: use 100 or 104" in error
    assert not runs.exists()


def test_train_checks_the_model_folder_before_it_makes_or_changes_a_run_folder(tmp_path, capsys):
    """Without the check, a Ray run started its workers, which each failed to load the model, and stopped with
    a dead worker; in-process, a run folder was left behind holding only its config."""
    from maskfocus.config import default_run_config, dump_config

    missing, runs = tmp_path / "missing", tmp_path / "runs"
    error = cli_error(capsys, "train", "--set", f"model.path={missing}", "--set", f"train.out_dir={runs}")
    assert f"model folder not found: {missing}" in error
    assert not runs.exists()
    (partial := tmp_path / "partial" / "transformer").mkdir(parents=True)
    settings = [
        "--set",
        f"model.path={partial.parent}",
        "--set",
        "model.kind=meissonic",
        "--set",
        f"train.out_dir={runs}",
    ]
    error = cli_error(capsys, "train", *settings)
    assert "missing part(s) vqvae, text_encoder, tokenizer (a Meissonic folder needs" in error
    assert not runs.exists()
    run = tmp_path / "run"
    run.mkdir()
    dump_config(default_run_config({"model.path": str(missing)}), run / "config.yaml")
    before = (run / "config.yaml").read_text()
    error = cli_error(capsys, "train", "--resume", str(run), "--iterations", "300")
    assert f"model folder not found: {missing}" in error
    assert [path.name for path in run.iterdir()] == ["config.yaml"] and (run / "config.yaml").read_text() == before


def test_train_on_ray_checks_the_cluster_address_before_it_makes_a_run_folder(tmp_path, capsys):

    from support import refusing_port

    runs = tmp_path / "runs"
    with refusing_port() as port:
        error = cli_error(capsys, "train", "--address", f"127.0.0.1:{port}", "--set", f"train.out_dir={runs}")
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers there" in error
    assert not runs.exists()


def test_a_resume_checks_its_settings_against_the_runs_own_config(monkeypatch, tmp_path, capsys):
    """A run with two reward terms and T = 24: `--set rewards.1.weight` and K = 15 are valid for it, not for the
    default config (one reward, T = 12), which the resume used to check them against first."""
    import maskfocus.cli
    import maskfocus.trainer
    from maskfocus.config import default_run_config, dump_config

    run = tmp_path / "run"
    run.mkdir()
    rewards = [{"name": "geneval", "mode": "partial"}, {"name": "geneval", "mode": "binary"}]
    settings = {"rewards": rewards, "sampler.num_steps": 24, "train.executor": "local"}
    dump_config(default_run_config(settings), run / "config.yaml")
    resumed = []
    monkeypatch.setattr(maskfocus.trainer, "train_local", lambda config, run_dir, resume: resumed.append(config) or {})
    args = ["train", "--resume", str(run), "--set", "rewards.1.weight=0.2", "--set", "selection.num_steps=15"]
    assert maskfocus.cli.main(args) == 0
    assert resumed[0].rewards[1].weight == 0.2 and resumed[0].selection.num_steps == 15
    for flag in ("--config", "--name"):
        error = cli_error(capsys, "train", "--resume", str(run), flag, "x")
        assert f"{flag} with --resume: a resumed run keeps its folder and its own config.yaml" in error


def test_train_check_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    from maskfocus.cli import main

    runs = tmp_path / "runs"
    argv = ["train", "--check", "--executor", "local", "--name", "probe", "--set", f"train.out_dir={runs}"]
    assert main([*argv, "--iterations", "10"]) == 0
    out = capsys.readouterr().out
    assert "iterations: 10 (of 10) x 4 prompts x 8 images = 320 rollouts" in out
    assert f"run folder: {runs / 'probe'} (not made)" in out
    assert "checks passed: config, model folder, other files read; nothing written" in out
    assert not runs.exists()


def test_train_check_of_a_resume_names_the_iteration_and_changes_nothing(tmp_path, capsys):

    from maskfocus.cli import main
    from maskfocus.config import default_run_config, dump_config

    run = tmp_path / "run"
    save_base_checkpoint(run, 49, {"prompt_cursor": 200, "policy_version": 50, "num_updates": 150})
    dump_config(default_run_config({"train.executor": "local"}), run / "config.yaml")
    before = sorted((path.relative_to(run), path.stat().st_mtime_ns) for path in run.rglob("*"))
    assert main(["train", "--resume", str(run), "--check", "--iterations", "300"]) == 0
    out = capsys.readouterr().out
    assert "iterations: 250 (of 300) x 4 prompts x 8 images = 8,000 rollouts" in out
    assert f"run folder: {run} (resumes at iteration 50; unchanged)" in out
    assert sorted((path.relative_to(run), path.stat().st_mtime_ns) for path in run.rglob("*")) == before


def test_train_names_every_missing_model_and_reward_file_before_it_makes_a_run_folder(tmp_path, capsys):
    """A missing HPS checkpoint surfaced when the reward worker loaded it, after the run folder was made; the model
    folder, checked first, hid the rest."""
    runs = tmp_path / "runs"
    for check in ([], ["--check"]):
        error = cli_error(
            capsys,
            "train",
            *check,
            "--set",
            f"train.out_dir={runs}",
            "--set",
            f"rewards=[{{name: hps, checkpoint: {tmp_path / 'HPS.pt'}}}, {{name: clip, model: {tmp_path / 'clip'}}}]",
            "--set",
            f"model.path={tmp_path / 'model'}",
        )
        assert error.splitlines()[0] == "maskfocus train: error: the run cannot start, 3 problems:"
        assert error.splitlines()[1].startswith(f"  model folder not found: {tmp_path / 'model'}; ")
        assert error.splitlines()[2:] == [
            f"  rewards.0.checkpoint: checkpoint file not found: {tmp_path / 'HPS.pt'}",
            f"  rewards.1.model: CLIP model folder not found: {tmp_path / 'clip'}",
        ]
        assert not runs.exists()


def test_train_check_on_ray_names_the_cluster_and_only_claims_a_probe_it_made(tmp_path, capsys, monkeypatch):
    import socket

    from maskfocus.cli import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    argv = ["train", "--check", "--set", f"train.out_dir={tmp_path}"]
    assert main([*argv, "--address", "local"]) == 0
    out = capsys.readouterr().out
    assert "cluster: local (from --address)" in out and "the cluster answers" not in out
    with socket.socket() as server:  # something that accepts connections at host:port
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        assert main([*argv, "--address", address]) == 0
    out = capsys.readouterr().out
    assert f"cluster: {address} (from --address)" in out and "the cluster answers" in out
    assert main(argv) == 0
    assert "cluster: a local Ray" in capsys.readouterr().out
    error = cli_error(capsys, *argv, "--set", "ray.weight_transport=collective")  # the driver refused it, later
    assert "collective" in error and "GPU" in error


def test_a_second_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, capsys, monkeypatch):
    """The second Ctrl-C stops at once; it ended in a traceback, then in a bare 'interrupted'."""
    import maskfocus.trainer
    from maskfocus.cli import main

    def stopped_at_once(config, run_dir, resume):
        raise KeyboardInterrupt

    monkeypatch.setattr(maskfocus.trainer, "train_local", stopped_at_once)
    args = ["train", "--executor", "local", "--set", f"train.out_dir={tmp_path}", "--name", "run"]
    assert main(args) == 130
    error = capsys.readouterr().err
    assert error == (
        "maskfocus train: stopped at once, between checkpoints; no checkpoint was written yet (`maskfocus train "
        f"--resume {tmp_path / 'run'}` starts the run again from the base model)\n"
    )


def test_a_failed_ray_run_is_its_cause_and_resume_command_with_the_traceback_in_a_file(tmp_path, capsys, monkeypatch):
    """A dead worker or a timeout ended in pages of the driver's frames, the resume command at their bottom."""
    import maskfocus.driver_run
    from maskfocus.cli import main
    from maskfocus.stopping import RunFailed

    log = tmp_path / "error.log"

    def failed(config, run_dir, resume, address):
        raise RunFailed("the Ray run stopped: reward worker 0 is dead; no checkpoint was written yet", log)

    monkeypatch.setattr(maskfocus.driver_run, "train_ray", failed)
    assert main(["train", "--set", f"train.out_dir={tmp_path}", "--name", "run"]) == 1
    error = capsys.readouterr().err
    assert error == (
        "maskfocus train: the Ray run stopped: reward worker 0 is dead; no checkpoint was written yet; the full "
        f"traceback is in {log}\n"
    )


def test_inside_a_ray_job_a_relative_run_folder_is_refused_and_resumes_go_through_submit_sh(
    tmp_path, capsys, monkeypatch
):
    """A job runs in a temporary copy of the working directory: `runs/NAME` landed there, out of reach, and Ray
    deleted it later; the resume hint named `maskfocus train`, not the submit script."""
    import torch

    from maskfocus.ray_job import JOB_MARKER
    from maskfocus.run_io import resume_hint, save_checkpoint

    monkeypatch.setenv(JOB_MARKER, "{}")
    monkeypatch.chdir(tmp_path)
    for argv, option in (
        (["--set", "train.out_dir=runs"], "train.out_dir runs"),
        (["--resume", "runs/x"], "--resume runs/x"),
    ):
        error = cli_error(capsys, "train", *argv)
        assert f"error: {option}: " in error and "relative path inside a Ray job" in error, error
        assert "absolute path on a disk every node mounts" in error
    assert not (tmp_path / "runs").exists()
    save_checkpoint(tmp_path, 2, torch.nn.Linear(2, 2), None, {})
    assert resume_hint(tmp_path) == f"resume from iter_000002 with `deploy/submit.sh --resume {tmp_path}`"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"grpo.behaviour_weight_cap": 2.0, "train.executor": "local"}, "the in-process trainer"),
        ({"grpo.behaviour_weight_cap": 2.0, "train.executor": "ray", "ray.max_staleness": 0}, "ray.max_staleness 0"),
        ({"grpo.behaviour_weight_cap": 2.0, "train.executor": "ray", "ray.max_staleness": 1}, None),
        ({"train.executor": "local"}, None),
    ],
)
def test_a_stale_batch_correction_that_cannot_act_is_announced(overrides, reason):
    from maskfocus.cli_train import idle_settings_notice
    from maskfocus.config import default_run_config

    notice = idle_settings_notice(default_run_config(overrides))
    if reason is None:
        assert notice is None
    else:
        assert notice.startswith("grpo.behaviour_weight_cap has no effect in this run") and reason in notice


def test_a_local_ray_too_small_for_the_actors_is_refused_before_ray_starts(tmp_path, capsys):
    """It was refused only once ray.init had started a local Ray and the run folder existed; --check passed."""
    runs = tmp_path / "runs"
    small = [
        "--executor",
        "ray",
        "--set",
        "ray.num_cpus=1",
        "--set",
        "ray.rollout_cpus=2",
        "--set",
        f"train.out_dir={runs}",
    ]
    for check in ([], ["--check"]):
        error = cli_error(capsys, "train", *small, *check)
        assert "actors reserve 3 CPUs (ray.*_cpus x ray.num_*_workers), but this local Ray has 1 CPUs" in error
    assert not runs.exists()


def test_workers_the_staleness_bound_leaves_waiting_are_announced():
    """At most max_staleness + 1 iterations are outstanding, one per worker: 4 rollout workers at max_staleness 0
    reserved 4 GPUs and sampled on 1."""
    from maskfocus.cli_train import idle_workers_notice
    from maskfocus.config import default_run_config

    ray = {"train.executor": "ray", "ray.num_cpus": 8}
    notice = idle_workers_notice(default_run_config({**ray, "ray.num_rollout_workers": 4, "ray.max_staleness": 0}))
    assert notice.startswith("ray.num_rollout_workers 4: at most ray.max_staleness + 1 = 1 iteration(s) are sampled")
    both = {**ray, "ray.num_rollout_workers": 3, "ray.num_reward_workers": 3, "ray.max_staleness": 1}
    assert idle_workers_notice(default_run_config(both)).startswith(
        "ray.num_rollout_workers 3 and ray.num_reward_workers 3: at most ray.max_staleness + 1 = 2"
    )
    fits = {**ray, "ray.num_rollout_workers": 2, "ray.max_staleness": 1}
    assert idle_workers_notice(default_run_config(fits)) is None
    local = {"train.executor": "local", "ray.num_rollout_workers": 4, "ray.max_staleness": 0}
    assert idle_workers_notice(default_run_config(local)) is None


def test_meissonic_rollouts_with_their_own_step_count_are_announced():
    """Meissonic's timestep is the step index, so rollouts at another T condition on timesteps evaluation never uses."""
    from maskfocus.cli_train import meissonic_steps_notice
    from maskfocus.config import default_run_config

    meissonic = {"model.kind": "meissonic", "model.path": "/m", "sampler.num_steps": 64}
    notice = meissonic_steps_notice(default_run_config({**meissonic, "rollout.num_steps": 16}))
    assert notice.startswith("rollout.num_steps 16 differs from sampler.num_steps 64: Meissonic conditions")
    assert "timesteps 0-15 and the evaluation samples under 0-63" in notice
    assert meissonic_steps_notice(default_run_config({**meissonic, "rollout.num_steps": 64})) is None
    assert meissonic_steps_notice(default_run_config({"rollout.num_steps": 6})) is None  # aMUSEd-like: no timestep


def test_an_address_with_the_in_process_executor_is_refused(tmp_path, capsys):
    """It was ignored without a word, even by --check."""
    argv = ["train", "--executor", "local", "--address", "10.0.0.1:6379", "--set", f"train.out_dir={tmp_path}"]
    for check in ([], ["--check"]):
        error = cli_error(capsys, *argv, *check)
        assert "--address 10.0.0.1:6379: this run trains in-process (train.executor local)" in error
    assert not any(tmp_path.iterdir())


def test_train_says_when_its_gain_compares_unlike_evaluations(tmp_path):
    """An evaluation at 1 image per row (588 images) was set against the base model's 2,352 without a word, and one
    sampled at another CFG scale still is not like for like."""
    from support import make_run

    from maskfocus.cli_train import gain_line
    from maskfocus.compare import base_summary
    from maskfocus.compare_run import load_run

    run = make_run(tmp_path / "runs" / "a", {}, 0.55)
    summary = run / "eval" / "summary.json"
    data = json.loads(summary.read_text())
    base = base_summary([load_run(run)], None)
    data["tags"] = {tag: 0.55 for tag in base["tags"]}  # the made run's own two tags would be a difference too
    summary.write_text(json.dumps({**data, "num_images": base["num_images"] // 4}))
    counts = sorted([base["num_images"] // 4, base["num_images"]])
    expected = f", not like for like: the evaluations scored different numbers of images ({counts}); compare runs:"
    assert expected in gain_line(run, 0.55)
    summary.write_text(json.dumps({**data, "num_images": base["num_images"]}))
    assert "not like for like" not in gain_line(run, 0.55)
    # sampled otherwise than the base (a review found this only `maskfocus compare` said)
    evaluated = {**base["evaluated"], "sampler": {**base["evaluated"]["sampler"], "cfg_scale": 1.0}}
    summary.write_text(json.dumps({**data, "num_images": base["num_images"], "evaluated": evaluated}))
    differs = ", not like for like: the evaluations differ in sampler (their `evaluated`); compare runs: maskfocus"
    assert differs in gain_line(run, 0.55)
    summary.write_text(json.dumps({**data, "tags": {"single_object": 0.5, "colors": 0.6}, "evaluated": evaluated}))
    fewer_tags = "scored different tags (not every one scored color_attr, counting, position, two_object); "
    assert fewer_tags in gain_line(run, 0.55)


def test_a_resume_says_what_is_left_and_a_finished_run_what_the_resume_does_instead(tmp_path, capsys, monkeypatch):
    """A finished run resumed printed "nothing left to learn", then the compile notice for a first iteration that
    never came; one iteration left was "iterations 3-3" (new-user walkthrough)."""

    import maskfocus.trainer
    from maskfocus.cli import main
    from maskfocus.config import default_run_config, dump_config

    run = tmp_path / "run"
    save_base_checkpoint(run, 3, {"prompt_cursor": 16, "policy_version": 4, "num_updates": 12})
    dump_config(default_run_config({"train.executor": "local", "train.num_iterations": 4}), run / "config.yaml")
    monkeypatch.setattr(maskfocus.trainer, "train_local", lambda config, run_dir, resume: {})
    said = {}
    for iterations in ("4", "5", "7"):
        assert main(["train", "--resume", str(run), "--iterations", iterations]) == 0
        said[iterations] = capsys.readouterr().out
    finished = (
        "resuming from iter_000003: nothing left to learn (all 4 iterations are); this writes the final model and its "
        "evaluation again, and --iterations above 4 learns more"
    )
    assert finished in said["4"] and "the first iteration compiles" not in said["4"]
    assert (
        "resuming from iter_000003: iteration 4 to learn" in said["5"] and "the first iteration compiles" in said["5"]
    )
    assert "resuming from iter_000003: iterations 4-6 to learn" in said["7"]
