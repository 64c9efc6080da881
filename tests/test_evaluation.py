"""maskfocus/evaluation.py: the rows `maskfocus eval --grid` shows (the first two of each tag, in the order the tags
come), and result files replaced whole."""

from __future__ import annotations

import json

import pytest

from maskfocus.evaluation import grid_rows, load_rows, spread_over_each_tag


def test_the_grid_shows_the_first_rows_of_each_tag_of_the_benchmark():
    rows = load_rows("shapes-geneval")
    chosen = grid_rows(rows)
    tags = [rows[index]["tag"] for index in chosen]
    assert len(chosen) == 12 and sorted(set(tags)) == sorted({row["tag"] for row in rows})
    assert all(tags.count(tag) == 2 for tag in set(tags)) and chosen == sorted(chosen)
    for index in chosen:  # no earlier row of its tag was passed over
        assert sum(row["tag"] == rows[index]["tag"] for row in rows[:index]) < 2
    assert grid_rows(rows, per_tag=1) == [chosen[i] for i in range(0, 12, 2)]


def test_evaluation_files_are_replaced_whole_or_left_as_they_were(tmp_path, monkeypatch):
    """write_results writes beside the file and renames: a failure mid-write leaves the earlier summary intact."""
    from maskfocus import outputs
    from maskfocus.evaluation_output import write_results

    summary = tmp_path / "eval" / "summary.json"
    write_results([{"correct": True}], {"overall": 0.5, "tags": {}}, tmp_path / "eval" / "results.jsonl", summary)
    assert json.loads(summary.read_text())["overall"] == 0.5

    def cut_short(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(outputs.os, "replace", cut_short)
    with pytest.raises(OSError, match="disk full"):
        write_results([], {"overall": 0.9, "tags": {}}, None, summary)
    assert json.loads(summary.read_text())["overall"] == 0.5
    assert sorted(path.name for path in summary.parent.iterdir()) == ["results.jsonl", "summary.json"]


def test_a_quick_estimate_takes_rows_from_all_through_each_tag():
    """`--per-tag 8` took the first 8 rows of each tag: position then had no "above" or "below", colour binding only
    circle-and-square pairs (review finding)."""
    rows = load_rows("shapes-geneval")
    chosen = spread_over_each_tag(rows, 8)
    assert chosen == sorted(chosen) and len(chosen) == 6 * 8
    position = [rows[index]["prompt"] for index in chosen if rows[index]["tag"] == "position"]
    relations = ("left of", "right of", "above", "below")
    assert all(any(f" {relation} " in prompt for prompt in position) for relation in relations)
    for tag in {row["tag"] for row in rows}:  # evenly spaced: the first row of the tag, then every len/8-th
        indices = [index for index, row in enumerate(rows) if row["tag"] == tag]
        expected = [indices[i * len(indices) // 8] for i in range(8)]
        assert [index for index in chosen if rows[index]["tag"] == tag] == expected
    few = [{"tag": "a", "prompt": "x"}, {"tag": "b", "prompt": "y"}, {"tag": "a", "prompt": "z"}]
    assert spread_over_each_tag(few, 5) == [0, 1, 2] and spread_over_each_tag(few, 1) == [0, 1]


@pytest.mark.parametrize(("eval_dtype", "expected"), [("float32", "float32"), (None, "bfloat16")])
def test_diagnostics_sample_in_the_evaluation_dtype_not_the_rollouts(eval_dtype, expected):
    """count_distribution, failure_reasons and the others said they look at the evaluation's images, but loaded
    the generator in model.dtype (bfloat16 here), not eval.dtype (float32 as shipped; null = model.dtype)."""
    import torch

    from maskfocus.config import default_run_config
    from maskfocus.evaluation import load_evaluated_generator

    config = default_run_config({"model.dtype": "bfloat16", "eval.dtype": eval_dtype})
    model = load_evaluated_generator(config)
    assert {p.dtype for p in model.transformer.parameters()} == {getattr(torch, expected)}
