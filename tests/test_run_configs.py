"""The real-checkpoint run configs load, carry the reference hyperparameters (ALGORITHM.md section 6) and
document their resources."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskfocus.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RUNS = {
    "meissonic_geneval.yaml": ("meissonic", "geneval"),
    "meissonic_hps.yaml": ("meissonic", "hps"),
    "amused_geneval.yaml": ("amused", "geneval"),
}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_config_loads_with_the_reference_hyperparameters(name):
    config = load_config(CONFIGS / name)
    kind, reward = RUNS[name]
    assert config.model.kind == kind and config.model.trust_checkpoint_code == (kind == "meissonic")
    assert [spec.name for spec in config.rewards] == [reward]
    assert (config.sampler.num_steps, config.sampler.cfg_scale, config.sampler.negative_prompt != "") == (64, 5.0, True)
    assert (config.selection.strategy, config.selection.num_steps) == ("critical", 6)
    assert (config.rollout.group_size, config.rollout.prompts_per_iteration) == (2, 4)
    assert (config.grpo.clip_eps, config.grpo.beta, config.grpo.update) == (None, 0.01, "per_step")
    assert (config.optim.learning_rate, config.optim.grad_clip, config.optim.final_lr_fraction) == (2e-6, 1.0, 0.0)
    assert config.train.num_iterations == 1200 and config.train.executor == "ray"


def test_meissonic_runs_at_1024_px_on_four_learner_gpus():
    for name in ("meissonic_geneval.yaml", "meissonic_hps.yaml"):
        config = load_config(CONFIGS / name)
        assert config.model.resolution == 1024
        assert (config.ray.num_learner_workers, config.ray.learner_gpus) == (4, 1.0)


def test_geneval_configs_use_a_real_detector():
    for name in ("meissonic_geneval.yaml", "amused_geneval.yaml"):
        detector = load_config(CONFIGS / name).rewards[0].detector
        assert detector.kind == "owlv2" and detector.path and detector.clip_model == "ViT-L-14-quickgelu"


@pytest.mark.parametrize("name", sorted(RUNS))
def test_config_documents_gpus_memory_and_time(name):
    text = (CONFIGS / name).read_text()
    for heading in ("GPUs per role", "Memory per GPU", "Expected time per iteration"):
        assert heading in text


def test_the_cluster_lets_a_stopped_job_of_every_shipped_config_checkpoint():
    """`ray job stop` kills the job after RAY_JOB_STOP_WAIT_TIME_S; a stopped run may wait up to its config's
    ray.timeout_s for the queued batches and the checkpoint (the GPU configs set 1800 s; the head once waited 660)."""
    import yaml

    runtime_env = yaml.safe_load((CONFIGS.parent / "deploy" / "runtime_env.yaml").read_text())
    stop_wait = int(runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"])  # the job supervisor reads it from there
    timeouts = {path.name: load_config(path).ray.timeout_s for path in sorted(CONFIGS.glob("*.yaml"))}
    assert len(timeouts) >= 4 and max(timeouts.values()) == 1800
    assert all(timeout < stop_wait for timeout in timeouts.values()), (stop_wait, timeouts)


def test_the_cluster_yaml_installs_the_repository_it_copies_into_an_image_of_the_tested_ray_and_python():
    """It used to pip-install `/path/to/maskfocus`, which nothing copied to the nodes, on Ray's default AMI (whose
    Python predates the project's 3.11)."""
    import ray
    import yaml

    cluster = yaml.safe_load((CONFIGS.parent / "deploy" / "cluster.yaml").read_text())
    [mounted] = [remote for remote, local in cluster["file_mounts"].items() if local == "."]
    assert any(
        command.startswith("pip install") and command.split("#")[0].rstrip().endswith(mounted)
        for command in cluster["setup_commands"]
    )
    assert ".gitignore" in cluster["rsync_filter"]
    assert cluster["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    # the container cannot mount NFS itself: the host mounts the shared disk and the container gets it
    assert any("mount -t nfs4" in command and "/shared" in command for command in cluster["initialization_commands"])
    assert not any("mount" in command for command in cluster["setup_commands"])
    assert "-v /shared:/shared" in cluster["docker"]["run_options"]
