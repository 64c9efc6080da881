"""maskfocus/preflight.py: the files a run reads besides its model, and the plan `maskfocus train --check` prints."""

from __future__ import annotations

from maskfocus.config import default_run_config
from maskfocus.preflight import missing_file_problems, plan_lines


def test_the_shipped_config_names_no_missing_file():
    assert missing_file_problems(default_run_config()) == []


def test_each_missing_file_or_folder_is_named_by_its_key(tmp_path):
    (clip_folder := tmp_path / "clip").mkdir()
    (clip_folder / "open_clip_config.json").write_text('{"model_cfg": {}}')
    (hps_weights := tmp_path / "HPS.pt").touch()
    present = default_run_config(
        {
            "model.text_encoder": str(tmp_path),
            "rewards": [
                {"name": "clip", "model": str(clip_folder)},
                {"name": "hps", "checkpoint": str(hps_weights)},
            ],
        }
    )
    assert missing_file_problems(present) == []
    assert missing_file_problems(default_run_config({"rewards": [{"name": "clip"}]})) == []  # builtin:shapes-clip
    owlv2 = {
        "kind": "owlv2",
        "path": str(tmp_path / "owlv2"),
        "clip_model": "ViT-L-14-quickgelu",
        "clip_checkpoint": str(tmp_path / "vitl14.bin"),
        "object_names": str(tmp_path / "names.txt"),
        "score_threshold": 0.1,
        "counting_score_threshold": 0.3,
        "nms_iou": 0.5,
    }
    missing = default_run_config(
        {
            "rollout.prompt_file": str(tmp_path / "prompts.jsonl"),
            "model.text_encoder": str(tmp_path / "text_encoder"),
            "rewards": [
                {"name": "clip", "model": str(tmp_path / "no_clip"), "checkpoint": str(tmp_path / "no_clip.pt")},
                {"name": "hps", "checkpoint": str(tmp_path / "no_hps.pt")},
                {"name": "geneval", "detector": owlv2},
            ],
        }
    )
    assert missing_file_problems(missing) == [
        f"rollout.prompt_file: file not found: {tmp_path / 'prompts.jsonl'}",
        f"model.text_encoder: folder not found: {tmp_path / 'text_encoder'}",
        f"rewards.0.model: CLIP model folder not found: {tmp_path / 'no_clip'}",
        f"rewards.0.checkpoint: checkpoint file not found: {tmp_path / 'no_clip.pt'}",
        f"rewards.1.checkpoint: checkpoint file not found: {tmp_path / 'no_hps.pt'}",
        f"rewards.2.detector.path: OWLv2 folder not found: {tmp_path / 'owlv2'}",
        f"rewards.2.detector.clip_checkpoint: checkpoint file not found: {tmp_path / 'vitl14.bin'}",
        f"rewards.2.detector.object_names: file not found: {tmp_path / 'names.txt'}",
    ]


def test_the_plan_of_the_shipped_config_in_numbers():
    lines = plan_lines(default_run_config())
    assert lines[0] == "iterations: 250 (of 250) x 4 prompts x 8 images = 8,000 rollouts"
    assert lines[1].startswith("sampling: T = 12 steps per rollout, CFG 3, router on; reward 1 x geneval")
    assert lines[2].startswith("learning: 3 of 12 steps per image (critical), 3 optimizer step(s) per iteration")
    assert lines[3] == "ray: 1 rollout, 1 reward and 1 learner worker(s), max_staleness 1"
    assert lines[4] == "then: shapes-geneval at 4 images per prompt row"


def test_the_plan_counts_what_each_setting_changes():
    config = default_run_config(
        {
            "selection.strategy": "all",
            "grpo.update": "accumulate",
            "grpo.epochs": 2,
            "rollout.num_steps": 6,
            "train.executor": "local",
            "train.final_eval": False,
        }
    )
    lines = plan_lines(config, start_iteration=200)
    assert lines[0] == "iterations: 50 (of 250) x 4 prompts x 8 images = 1,600 rollouts"
    assert lines[1].startswith("sampling: T = 6 steps per rollout")
    assert lines[2].startswith("learning: 6 of 6 steps per image (all), 2 optimizer step(s) per iteration")
    assert lines[3:] == ["executor: local (in this process)"]


def test_a_resume_past_the_end_plans_no_iterations_not_a_negative_number():
    assert plan_lines(default_run_config({"train.num_iterations": 5}), start_iteration=10)[0] == (
        "iterations: 0 (of 5) x 4 prompts x 8 images = 0 rollouts"
    )


def test_a_misspelt_architecture_is_named_even_with_its_weights_file_there(tmp_path):
    """With `checkpoint` set, only the file was checked; the name failed later, in open_clip, on the reward worker."""
    (weights := tmp_path / "HPS.pt").touch()
    config = default_run_config({"rewards": [{"name": "hps", "model": "ViT-H-41", "checkpoint": str(weights)}]})
    assert missing_file_problems(config) == [
        "rewards.0.model: 'ViT-H-41' is neither a local folder nor an open_clip architecture name (e.g. ViT-H-14, "
        "ViT-L-14)"
    ]


def test_an_empty_prompt_file_means_none_and_a_home_path_is_expanded(tmp_path, monkeypatch):
    """The trainer reads "" as no prompt file, and now expands `~` as the model and reward paths do."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "prompts.txt").write_text("a photo of a red circle\n")
    for path in ("", "~/prompts.txt"):
        assert missing_file_problems(default_run_config({"rollout.prompt_file": path})) == []
    from maskfocus.trainer import FilePrompts

    assert next(FilePrompts("~/prompts.txt", 0, ("single_object",)))["prompt"] == "a photo of a red circle"


def test_prompt_files_that_would_spoil_the_run_are_named_before_it_starts(tmp_path, capsys):
    """Unknown words trained on what the tokenizer kept of each prompt ("a"); a .txt with the geneval reward ended
    in KeyError 'tag' after the run folder was made; an empty file passed `--check`."""
    import json

    from support import cli_error

    from maskfocus.preflight import prompt_file_problems

    clip_only = [{"name": "clip"}]
    (words := tmp_path / "words.txt").write_text("a photo of a red circle\na big dragon\n")
    (good := tmp_path / "good.txt").write_text("a photo of a red circle\n")
    (empty := tmp_path / "empty.txt").write_text("\n\n")
    record = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
    (jsonl := tmp_path / "good.jsonl").write_text(json.dumps(record) + "\n")

    def problems(path, rewards=None):
        overrides = {"rollout.prompt_file": str(path), **({"rewards": rewards} if rewards else {})}
        return prompt_file_problems(default_run_config(overrides))

    assert problems(good, clip_only) == [] and problems(jsonl) == []
    [unknown] = problems(words, clip_only)
    assert unknown.startswith(f"rollout.prompt_file: {words}: prompt 'a big dragon' uses word(s) the model does not")
    [free_form] = problems(good)
    assert f"{good} holds free-form prompts, which the geneval reward cannot score" in free_form
    assert problems(empty, clip_only) == [f"rollout.prompt_file: {empty} has no prompt"]
    out = ["--set", f"train.out_dir={tmp_path / 'runs'}", "--set", f"rollout.prompt_file={words}", "--check"]
    assert "big, dragon" in cli_error(capsys, "train", "--executor", "local", *out)
    assert not (tmp_path / "runs").exists()


def test_training_prompts_a_geneval_detector_cannot_see_are_named_before_the_run(tmp_path):
    """The real GenEval file under the default shapes detector scored every image 0 without a word."""
    import json

    from maskfocus.preflight import prompt_file_problems

    def row(name, color=None):
        clause = {"class": name, "count": 1, **({"color": color} if color else {})}
        return {
            "tag": "color_attr" if color else "single_object",
            "include": [clause],
            "prompt": f"a photo of a {name}",
        }

    def problems(rows, detector=None):
        (path := tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        term = {"name": "geneval", "mode": "partial", **({"detector": detector} if detector else {})}
        return prompt_file_problems(default_run_config({"rollout.prompt_file": str(path), "rewards": [term]}))

    assert problems([row("circle", "red")]) == []
    [unseen, *_] = problems([row("circle"), row("bicycle")])  # the tokenizer's unknown words follow
    assert unseen.endswith(
        "for rewards.0.detector: the shapes detector cannot detect bicycle; it knows: "
        + "circle, square, triangle, diamond"
        + " (real-image classes need `rewards.0.detector.kind: owlv2` or `rewards.0.detector.kind: http`)"
    )
    [colour, *_] = problems([row("circle", "pink")])  # a GenEval colour the shapes world lacks
    assert "the shapes detector cannot tell the colour(s) pink" in colour
    [schema] = problems([row("circle", "teal")])
    assert schema.endswith(
        "prompts.jsonl:1: include[0].color: expected one of red, orange, yellow, green, blue, "
        "purple, pink, brown, black, white; got 'teal'"
    )
    (names := tmp_path / "names.txt").write_text("circle\n")
    owl = {"kind": "owlv2", "path": "/o", "clip_model": "c", "object_names": str(names)}
    owl |= {"score_threshold": 0.1, "counting_score_threshold": 0.2, "nms_iou": 0.5}
    assert problems([row("circle")], owl) == []
    [square] = problems([row("square")], owl)
    assert "for rewards.0.detector: the owlv2 detector cannot detect square; it knows: circle" in square


def test_a_reward_server_no_connection_reaches_is_named_before_an_in_process_run(tmp_path, capsys):
    """A wrong address failed after the first rollouts, once the retries ran out. On Ray it is only a note: the
    reward workers, on other nodes, may reach an address the head cannot."""
    from support import cli_error, refusing_port

    from maskfocus.cli import main

    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}"
        runs = tmp_path / "runs"
        term = f"rewards=[{{name: geneval, mode: binary, detector: {{kind: http, url: '{url}'}}}}]"
        args = ["train", "--set", term, "--set", f"train.out_dir={runs}", "--check"]
        error = cli_error(capsys, *args, "--executor", "local")
        assert f"rewards.0.detector.url {url}: no GenEval reward server answers there" in error
        assert main([*args, "--executor", "ray"]) == 0
    assert f"note: rewards.0.detector.url {url}: no GenEval reward server answers there" in capsys.readouterr().out
    assert not runs.exists()


def test_a_cuda_device_on_a_machine_without_one_stops_an_in_process_run_before_its_folder(tmp_path, capsys):
    """`--check` passed it, and a real start made the run folder (config.yaml only) before the model load said
    torch sees no CUDA device."""
    import pytest
    import torch
    from support import cli_error

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    runs = tmp_path / "runs"
    args = ["train", "--executor", "local", "--set", "model.device=cuda", "--set", f"train.out_dir={runs}"]
    for extra in (["--check"], ["--name", "cuda_run", "--iterations", "1"]):
        assert "model.device cuda: torch sees no CUDA device on this machine" in cli_error(capsys, *args, *extra)
    assert not runs.exists()
