"""`deploy/submit.sh` against a local head node (`ray start --head`) with token auth: the job succeeds and
writes its run folder.

The head node is this module's own cluster: its own temp dir, ports and token file, so it never meets the
session's `ray.init()` cluster. It is stopped by signalling the processes it started (never `ray stop`,
which would stop every Ray process on the machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray_fixture import free_ports, random_model  # noqa: F401

from maskfocus.run_io import read_metrics

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 180.0
JOB_TIMEOUT_S = 420.0


@dataclass
class HeadNode:
    dashboard: str
    """The job server's address, http://127.0.0.1:PORT."""
    env: dict[str, str]
    """The environment of the cluster and its clients: RAY_AUTH_MODE=token and the token file."""
    process: subprocess.Popen


def cluster_env(token_file: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH", "RAY_API_SERVER"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_USAGE_STATS_ENABLED="0")
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # stop at once on SIGTERM (nothing to drain)
    return env


def start_head(temp_dir: Path, env: dict[str, str]) -> HeadNode:
    """`ray start --head --block` in its own session; returns once the job server answers."""
    flags = ["--port", "--dashboard-port", "--ray-client-server-port", "--dashboard-agent-listen-port"]
    flags += ["--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port"]
    flags += ["--node-manager-port", "--object-manager-port"]
    ports = dict(zip(flags, free_ports(len(flags)), strict=True))
    dashboard_port = ports["--dashboard-port"]
    command = [RAY, "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0"]
    command += [f"--object-store-memory={200 * 1024 * 1024}", f"--temp-dir={temp_dir}", "--include-dashboard=true"]
    command += ["--dashboard-host=127.0.0.1", "--disable-usage-stats"]
    command += [f"{flag}={port}" for flag, port in ports.items()]
    log = temp_dir / "ray_start.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = HeadNode(f"http://127.0.0.1:{dashboard_port}", env, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        if job_server_status(head.dashboard, Path(env["RAY_AUTH_TOKEN_PATH"]).read_text()) == 200:
            return head
        time.sleep(1)
    stop_head(head)
    raise TimeoutError(f"the head node's job server did not answer in {START_TIMEOUT_S:.0f} s:\n{log.read_text()}")


def job_server_status(dashboard: str, token: str | None) -> int | None:
    """HTTP status of GET /api/jobs/ (None while nothing listens)."""
    request = urllib.request.Request(f"{dashboard}/api/jobs/")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return None


def session_processes(session_id: int) -> list[int]:
    """Pids of the processes in a session (those `ray start` started, in the session it leads)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        except OSError:
            continue
        if int(fields[3]) == session_id:
            pids.append(int(entry.name))
    return pids


def stop_head(head: HeadNode) -> None:
    """SIGTERM to `ray start --block` (it shuts its node down), then SIGKILL to any process it left."""
    if head.process.poll() is None:
        head.process.send_signal(signal.SIGTERM)
        try:
            head.process.wait(60)
        except subprocess.TimeoutExpired:
            head.process.kill()
    deadline = time.monotonic() + 20
    while (left := session_processes(head.process.pid)) and time.monotonic() < deadline:
        time.sleep(1)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def running_head(**extra_env: str) -> Iterator[HeadNode]:
    temp_dir = Path(tempfile.mkdtemp(prefix="mfray-", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    token_file = temp_dir / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    head = start_head(temp_dir, {**cluster_env(token_file), **extra_env})
    try:
        yield head
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def head_node() -> Iterator[HeadNode]:
    """One head node for the module's jobs (its start and stop take ~15 s on 2 cores). Started without
    RAY_JOB_STOP_WAIT_TIME_S: a stopped job gets its wait from deploy/runtime_env.yaml, as on any cluster."""
    with running_head() as head:
        yield head


def tiny_job_settings(model: str, out_dir: Path, iterations: int) -> list[str]:
    """`--set` arguments of a fast job on the random test model."""
    settings = {
        "model.path": model,
        "sampler.num_steps": 4,
        "sampler.compile": "false",
        "train.compile_learner": "false",
        "rollout.prompts_per_iteration": 2,
        "rollout.group_size": 2,
        "selection.num_steps": 2,
        "train.num_iterations": iterations,
        "train.final_eval": "false",
        "train.image_every": 1000,
        "train.out_dir": out_dir,
        "ray.timeout_s": 300,
    }
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={value}")]


def job_status(head: HeadNode, submission_id: str) -> str:
    token = Path(head.env["RAY_AUTH_TOKEN_PATH"]).read_text()
    request = urllib.request.Request(f"{head.dashboard}/api/jobs/{submission_id}")
    request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["status"]


@pytest.mark.slow
def test_submit_script_runs_a_job_on_a_local_head_node_with_token_auth(head_node, random_model, tmp_path):  # noqa: F811
    token = Path(head_node.env["RAY_AUTH_TOKEN_PATH"]).read_text()
    assert job_server_status(head_node.dashboard, token=None) == 401  # token auth is on
    assert job_server_status(head_node.dashboard, token="0" * 64) == 403
    assert job_server_status(head_node.dashboard, token=token) == 200
    overrides = tiny_job_settings(random_model, tmp_path / "runs", iterations=1)
    submission_id = f"maskfocus-test-{secrets.token_hex(4)}"
    submit = [str(REPO / "deploy" / "submit.sh"), "--address", head_node.dashboard, "--submission-id", submission_id]
    env = {k: v for k, v in head_node.env.items() if k != "RAY_AUTH_MODE"}  # submit.sh turns it on: a token exists
    result = subprocess.run(
        [*submit, "configs/shapes_tiny.yaml", "--name", "job", *overrides],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "RAY_AUTH_MODE=token" in result.stderr
    assert job_status(head_node, submission_id) == "SUCCEEDED"
    run_dir = tmp_path / "runs" / "job"
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["iteration"] for r in records] == [0] and records[0]["policy_version"] == 1
    assert (run_dir / "checkpoints" / "iter_000000" / "state.json").is_file()
    assert (run_dir / "model" / "transformer").is_dir()


@pytest.mark.slow
def test_ray_job_stop_lets_the_run_checkpoint_its_last_iteration(head_node, random_model, tmp_path):  # noqa: F811
    """`ray job stop` sends SIGTERM; with RAY_JOB_STOP_WAIT_TIME_S from the job's runtime env the run stops
    after its queued batches, checkpoints the last one off schedule and logs the `--resume` command."""
    submission_id = f"maskfocus-stop-{secrets.token_hex(4)}"
    submit = [str(REPO / "deploy" / "submit.sh"), "--address", head_node.dashboard, "--submission-id", submission_id]
    overrides = [*tiny_job_settings(random_model, tmp_path / "runs", 1000), "--set", "train.checkpoint_every=1000"]
    log = tmp_path / "submit.log"
    with log.open("w") as out:
        client = subprocess.Popen(
            [*submit, "configs/shapes_tiny.yaml", "--name", "job", *overrides],
            env={k: v for k, v in head_node.env.items() if k != "RAY_AUTH_MODE"},
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    metrics = tmp_path / "runs" / "job" / "metrics.jsonl"
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not (metrics.exists() and len(read_metrics(metrics)) >= 2) and time.monotonic() < deadline:
        assert client.poll() is None, log.read_text()[-6000:]
        time.sleep(1)
    stop = subprocess.run(
        [RAY, "job", "stop", "--address", head_node.dashboard, submission_id],
        env=head_node.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert stop.returncode == 0, stop.stdout + stop.stderr
    client.wait(timeout=180)
    assert job_status(head_node, submission_id) == "STOPPED"
    iterations = [r["iteration"] for r in read_metrics(metrics)]
    assert iterations == list(range(len(iterations))) and 2 <= len(iterations) < 1000
    checkpoints = sorted(p.name for p in (tmp_path / "runs" / "job" / "checkpoints").iterdir())
    assert checkpoints == [f"iter_{iterations[-1]:06d}"], log.read_text()[-6000:]
    learned = f"with {len(iterations)} of 1000 iterations learned"
    assert (
        f"stopped on SIGTERM {learned}; resume from {checkpoints[0]} with `deploy/submit.sh --resume "
        in log.read_text()
    )


def submit_command(
    tmp_path: Path,
    *args: str,
    stub: str = 'printf "%s\\n" "$@"\n',
    listing: str = "exit 0\n",
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """deploy/submit.sh with a stand-in `ray` on PATH that runs `listing` for `ray job list` (the script's check
    that the job server answers; by default it does) and `stub` for anything else (by default: prints the
    arguments it was given, one per line)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub_file = bin_dir / "ray"
    stub_file.write_text(f'#!/usr/bin/env bash\nif [[ "$1 $2" == "job list" ]]; then\n{listing}fi\n{stub}')
    stub_file.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "RAY_AUTH_MODE": "disabled"}
    script = str(REPO / "deploy" / "submit.sh")
    return subprocess.run(
        [script, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd or REPO,
        preexec_fn=_sigint_as_at_a_terminal,
    )


def _sigint_as_at_a_terminal() -> None:
    """SIGINT back to its default action in the script: a shell started in the background (`cmd &`, as a CI may run
    the suite) ignores SIGINT, its children inherit that, and bash cannot trap a signal ignored at its start."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_submit_script_submits_a_config_or_a_resume_with_the_arguments_given(tmp_path):
    """A stopped job prints `--resume RUN`; submit.sh passes it without --config, which `maskfocus train` refuses
    together with --resume."""
    fresh = submit_command(tmp_path, "--address", "http://head:8265", "configs/shapes_tiny.yaml", "--iterations", "5")
    assert fresh.returncode == 0, fresh.stderr
    train = fresh.stdout.splitlines()
    assert train[:3] == ["job", "submit", "--address"] and "http://head:8265" in train
    expected = "maskfocus train --config configs/shapes_tiny.yaml --executor ray --address auto --iterations 5"
    assert " ".join(train[train.index("--") + 1 :]) == expected
    resumed = submit_command(tmp_path, "--resume", "/shared/runs/job", "--iterations", "500")
    assert resumed.returncode == 0, resumed.stderr
    train = resumed.stdout.splitlines()
    expected = "maskfocus train --resume /shared/runs/job --executor ray --address auto --iterations 500"
    assert " ".join(train[train.index("--") + 1 :]) == expected
    missing = submit_command(tmp_path, "--resume")
    assert missing.returncode == 2 and "--resume needs the run folder" in missing.stderr


def test_submit_script_without_a_config_takes_the_default_and_passes_every_option(tmp_path):
    """`submit.sh --check ...` used to take `--check` for the config file."""
    for args in (["--check", "--iterations", "5"], []):
        submitted = submit_command(tmp_path, *args)
        assert submitted.returncode == 0, submitted.stderr
        train = submitted.stdout.splitlines()
        expected = "maskfocus train --config configs/shapes_tiny.yaml --executor ray --address auto"
        assert " ".join(train[train.index("--") + 1 :]) == " ".join([expected, *args])


def submitted_parts(tmp_path: Path, *args: str, cwd: Path | None = None) -> tuple[list[str], str]:
    """(`ray job submit`'s own arguments, the `maskfocus train` command) that submit.sh makes of `args`."""
    submitted = submit_command(tmp_path, *args, cwd=cwd)
    assert submitted.returncode == 0, submitted.stderr
    words = submitted.stdout.splitlines()
    split = words.index("--")
    return words[:split], " ".join(words[split + 1 :])


def test_submit_script_finds_resume_config_and_its_own_options_wherever_they_stand(tmp_path):
    """`submit.sh --check --resume RUN` used to add the default --config, which `maskfocus train` refuses with
    --resume; an --address after CONFIG went to `maskfocus train` instead of the job server."""
    job, train = submitted_parts(tmp_path, "--check", "--resume", "/shared/runs/job")
    assert train == "maskfocus train --resume /shared/runs/job --executor ray --address auto --check"
    job, train = submitted_parts(
        tmp_path,
        "configs/amused_geneval.yaml",
        "--iterations",
        "5",
        "--address",
        "http://head:8265",
        "--submission-id=run-7",
    )
    assert train == "maskfocus train --config configs/amused_geneval.yaml --executor ray --address auto --iterations 5"
    assert job[job.index("--address") + 1] == "http://head:8265" and job[job.index("--submission-id") + 1] == "run-7"
    _, train = submitted_parts(tmp_path, "--set", "seed=3", "--config=configs/meissonic_hps.yaml")
    assert train == "maskfocus train --config configs/meissonic_hps.yaml --executor ray --address auto --set seed=3"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address"], "--address needs the job server's address, http://HEAD:8265"),
        (["--submission-id", "--check"], "--submission-id needs an ID"),
        (["--config"], "--config needs a config file"),
    ],
)
def test_submit_script_refuses_an_option_without_its_value(tmp_path, args, message):
    """`submit.sh --address` alone stopped with bash's `$2: unbound variable`."""
    refused = submit_command(tmp_path, *args)
    assert refused.returncode == 2 and f"submit.sh: {message}" in refused.stderr, refused.stderr


def test_submit_script_takes_a_config_from_the_callers_folder_and_refuses_one_the_job_cannot_read(tmp_path):
    """A config path from the caller's folder, one outside the repository, one in a folder the upload leaves out or
    one .gitignore names (Ray's upload honours it) failed only on the cluster, after the upload."""
    _, train = submitted_parts(tmp_path, "../configs/shapes_tiny.yaml", cwd=REPO / "deploy")
    assert train.startswith("maskfocus train --config configs/shapes_tiny.yaml ")
    (outside := tmp_path / "mine.yaml").write_text("seed: 1\n")
    ignored = REPO / "configs" / f"test-{secrets.token_hex(4)}.log"  # *.log: .gitignore
    ignored.write_text("seed: 1\n")
    try:
        for config, message in [
            (str(outside), f"--config {outside}: outside the repository {REPO}"),
            ("tests/../configs/nope.yaml", "--config tests/../configs/nope.yaml: file not found"),
            ("benchmarks/ablation.py", "--config benchmarks/ablation.py: in a folder the upload leaves out"),
            (f"configs/{ignored.name}", f"--config configs/{ignored.name}: .gitignore names it"),
        ]:
            refused = submit_command(tmp_path, config)
            assert refused.returncode == 2 and f"submit.sh: {message}" in refused.stderr, refused.stderr
    finally:
        ignored.unlink()


def test_submit_script_names_each_job_and_says_on_ctrl_c_that_the_job_goes_on(tmp_path):
    """Ctrl-C ends `ray job submit`'s log tail only; the job went on unseen, and a resume then shared its folder."""
    job, _ = submitted_parts(tmp_path)
    named = job[job.index("--submission-id") + 1]
    assert re.fullmatch(r"maskfocus_\d{8}_\d{6}_\d+", named)
    interrupted = submit_command(tmp_path, "--submission-id", "run-9", stub="kill -INT $PPID\nexit 1\n")
    assert interrupted.returncode == 130
    assert "stopped following job run-9; once submitted, it goes on running on the cluster" in interrupted.stderr
    # as typed in a shell, with the RAY_AUTH_MODE the script used (a token is sent only with `token`)
    assert "RAY_AUTH_MODE=disabled ray job stop --address http://127.0.0.1:8265 run-9" in interrupted.stderr
    failed = submit_command(tmp_path, stub="exit 3\n")
    assert failed.returncode == 3 and "stopped following" not in failed.stderr


def test_submit_script_refuses_a_token_path_that_is_not_there(tmp_path, monkeypatch):
    """It sent no token and the job server answered 401."""
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "no_token"))
    refused = submit_command(tmp_path)
    assert refused.returncode == 2 and f"RAY_AUTH_TOKEN_PATH={tmp_path / 'no_token'}: no such file" in refused.stderr


def test_submit_script_says_plainly_when_no_job_server_answers_or_it_refuses(tmp_path):
    """`ray job submit` to an address where no cluster runs ended in a 116-line traceback (new-user walkthrough)."""
    traceback = "Traceback (most recent call last):\n  ...\n"
    refused = "ConnectionError: Failed to connect to Ray at address: http://127.0.0.1:8265."
    unreachable = submit_command(tmp_path, listing=f"printf '{traceback}{refused}\\n' >&2\nexit 1\n")
    assert unreachable.returncode == 2 and unreachable.stdout == ""  # nothing submitted
    assert "no Ray job server answers at http://127.0.0.1:8265; start a cluster" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr
    unauthorized = "RuntimeError: Request failed with status code 401: Unauthorized."
    denied = submit_command(tmp_path, "--address", "http://head:8265", listing=f"echo '{unauthorized}' >&2\nexit 1\n")
    assert denied.returncode == 2 and denied.stdout == ""
    assert f"the job server at http://head:8265 did not list its jobs: {unauthorized}" in denied.stderr


def test_submit_script_help_prints_its_usage_and_submits_nothing(tmp_path):
    for flag in ("--help", "-h"):
        helped = submit_command(tmp_path, "configs/shapes_tiny.yaml", flag)
        assert helped.returncode == 0 and helped.stderr == ""
        assert helped.stdout.startswith("Submit a MaskFocus RL run to a Ray cluster as a job.\n")
        assert "  deploy/submit.sh [--address http://HEAD:8265]" in helped.stdout
        assert not any(line.startswith("#") for line in helped.stdout.splitlines())
        assert helped.stdout.endswith("The training options: maskfocus train --help\n")


@pytest.mark.parametrize(
    "args",
    [
        ["--check", "configs/meissonic_hps.yaml"],
        ["--resume", "/shared/runs/job", "configs/shapes_tiny.yaml"],
        ["configs/shapes_tiny.yaml", "--iterations", "5", "extra"],
        ["--set=seed=3", "configs/shapes_tiny.yaml"],
    ],
)
def test_submit_script_refuses_a_bare_word_no_option_takes_before_submitting(tmp_path, args):
    """`submit.sh --check CONFIG` submitted the default config with CONFIG as a stray argument, which `maskfocus
    train` refused on the cluster after the upload."""
    refused = submit_command(tmp_path, *args, stub="echo submitted\n")
    assert refused.returncode == 2 and "submitted" not in refused.stdout
    assert f"submit.sh: {args[-1]}: a bare word that no option takes; give CONFIG first" in refused.stderr


def test_submit_script_passes_the_values_of_train_options_abbreviated_or_not(tmp_path):
    _, train = submitted_parts(tmp_path, "--check", "--name", "probe", "--iter", "5", "--set", "seed=1")
    assert train.endswith("--address auto --check --name probe --iter 5 --set seed=1")
