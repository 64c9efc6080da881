"""Training prompt sources: the shapes world and a GenEval-format prompt file, with a resumable cursor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maskfocus.config import ConfigError
from maskfocus.shapes.prompts import _prompt_space
from maskfocus.trainer import PromptStream

REAL_METADATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "geneval" / "evaluation_metadata.jsonl"
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_file_prompts_draw_only_the_requested_tags_and_resume_at_the_cursor():
    if not REAL_METADATA.is_file():
        pytest.skip(f"real GenEval metadata not found at {REAL_METADATA}")
    stream = PromptStream(3, ("counting", "position"), prompt_file=str(REAL_METADATA))
    first = stream.take(40)
    assert {row["tag"] for row in first} == {"counting", "position"}
    assert stream.cursor == 40
    more = stream.take(5)
    resumed = PromptStream(3, ("counting", "position"), cursor=40, prompt_file=str(REAL_METADATA))
    assert resumed.take(5) == more


def test_rows_are_returned_as_copies(tmp_path):
    path = write_rows(
        tmp_path / "p.jsonl",
        [{"tag": "single_object", "prompt": "a photo of a cat", "include": [{"class": "cat", "count": 1}]}],
    )
    stream = PromptStream(0, TAGS, prompt_file=str(path))
    row = stream.take(1)[0]
    assert row["prompt"] == "a photo of a cat"
    row["include"][0]["count"] = 5
    assert stream.take(1)[0]["include"][0]["count"] == 1


def test_missing_file_and_no_matching_tag_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="rollout.prompt_file: no such file"):
        PromptStream(0, TAGS, prompt_file=str(tmp_path / "absent.jsonl"))
    path = write_rows(
        tmp_path / "p.jsonl",
        [{"tag": "counting", "prompt": "a photo of two cats", "include": [{"class": "cat", "count": 2}]}],
    )
    with pytest.raises(ConfigError, match="no record .* has a tag in rollout.tags"):
        PromptStream(0, ("colors",), prompt_file=str(path))


def test_without_a_file_the_shapes_world_stream_is_used():
    rows = PromptStream(0, ("colors",)).take(3)
    assert len(rows) == 3 and all(row["tag"] == "colors" for row in rows)


def test_text_file_gives_free_form_prompts_and_an_empty_one_is_an_error(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat wearing a hat\n\nan astronaut riding a horse\n")
    rows = PromptStream(1, TAGS, prompt_file=str(path)).take(20)
    assert {row["prompt"] for row in rows} == {"a cat wearing a hat", "an astronaut riding a horse"}
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ConfigError, match="has no prompt"):
        PromptStream(1, TAGS, prompt_file=str(tmp_path / "empty.txt"))


def test_tag_weights_set_how_often_each_tag_is_drawn():
    rows = PromptStream(0, TAGS, tag_weights=(0, 3, 1, 0, 0, 0)).take(4000)
    tags = [row["tag"] for row in rows]
    assert set(tags) == {"two_object", "counting"}
    share = tags.count("two_object") / len(tags)
    assert share == pytest.approx(0.75, abs=0.03)  # binomial std at n = 4000 is 0.007


def test_without_tag_weights_the_stream_is_the_uniform_one_of_older_runs():
    rng = np.random.default_rng(5)
    stream = PromptStream(5, ("single_object", "counting"))
    rows = stream.take(20)
    assert len(rows) == 20
    for row in rows:  # the pre-weights draw: a tag index, then a prompt index
        tag = ("single_object", "counting")[rng.integers(2)]
        space = _prompt_space(tag)
        assert row == space[rng.integers(len(space))]


def test_file_prompts_follow_tag_weights_and_reject_a_weighted_tag_without_records(tmp_path):
    rows = [
        {"tag": "counting", "prompt": f"a photo of {n} cats", "include": [{"class": "cat", "count": n}]}
        for n in (2, 3, 4)
    ]
    rows.append({"tag": "colors", "prompt": "a photo of a red cat", "include": [{"class": "cat", "count": 1}]})
    path = write_rows(tmp_path / "p.jsonl", rows)
    drawn = PromptStream(0, ("counting", "colors"), prompt_file=str(path), tag_weights=(1, 1)).take(2000)
    # uniform over records would give colors 1/4 of the draws; by tag it is 1/2
    assert sum(row["tag"] == "colors" for row in drawn) / 2000 == pytest.approx(0.5, abs=0.04)
    with pytest.raises(ConfigError, match="tag 'position' has weight 1 but no record"):
        PromptStream(0, ("counting", "position"), prompt_file=str(path), tag_weights=(1, 1))


def test_the_config_s_held_out_mode_reaches_the_shapes_world_stream():
    from maskfocus.config import default_run_config
    from maskfocus.shapes.evalset import load_eval_set
    from maskfocus.shapes.prompts import equivalence_key

    eval_keys = {equivalence_key(row) for row in load_eval_set() if row["tag"] == "position"}
    for held_out, leaks in (("text", True), ("meaning", False)):
        config = default_run_config({"rollout": {"tags": ["position"], "held_out": held_out}})
        rows = PromptStream.from_config(config).take(400)
        assert any(equivalence_key(row) in eval_keys for row in rows) == leaks, held_out
