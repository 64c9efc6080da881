"""What changes when `maskfocus train` runs as a Ray job (`ray job submit`, deploy/submit.sh): the command runs in a
temporary copy of the working directory on the head node, and the user resumes through submit.sh. No Ray here:
the job server marks its driver process with an environment variable."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from maskfocus.config import ConfigError

JOB_MARKER = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Set by Ray's job supervisor in every job's entrypoint process (the job's runtime environment, as JSON)."""


def in_ray_job() -> bool:
    return bool(os.environ.get(JOB_MARKER))


def check_job_path(path: Path | str, option: str) -> None:
    """Inside a job, a relative run folder would land in the job's temporary working directory, which Ray deletes
    later, and the folder printed would name nothing the user can reach: refuse it, naming `option`."""
    if in_ray_job() and not Path(path).is_absolute():
        raise ConfigError(
            f"{option} {path}: a relative path inside a Ray job resolves in the job's temporary working directory "
            f"({Path.cwd()}), which Ray deletes later; give an absolute path on a disk every node mounts, e.g. "
            "--set train.out_dir=/shared/runs (deploy/cluster.yaml)"
        )


def resume_command(run_dir: Path) -> str:
    """The command that continues the run in `run_dir`: through submit.sh when this process is a Ray job."""
    folder = shlex.quote(str(run_dir))
    return f"deploy/submit.sh --resume {folder}" if in_ray_job() else f"maskfocus train --resume {folder}"
