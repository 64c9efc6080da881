"""maskfocus/compare.py's like-for-like check of how runs and the base were evaluated (`evaluated`): the prompt
set, the judge's thresholds, the scored tags, the built-in base's measurement, and summaries of older versions."""

from __future__ import annotations

import dataclasses

from support import make_run

from maskfocus.compare import builtin_base_summary, comparison_table, group_runs
from maskfocus.compare_run import load_run
from maskfocus.config import default_run_config
from maskfocus.evaluation import build_eval_judge, evaluated_block, load_rows, rows_fingerprint
from maskfocus.rewards.geneval import Thresholds

NOTE = "not like for like"


def shipped_evaluation(**changes) -> dict:
    """The `evaluated` a float32 evaluation of the shipped config records, with `changes`."""
    config = default_run_config()
    rows = load_rows(config.eval.benchmark)
    evaluated = evaluated_block(rows, config.eval, config.sampler, build_eval_judge(config), "float32")
    return {**evaluated, **changes}


def table_of(tmp_path, run_evaluated: dict, base: dict, run_tags: dict | None = None) -> str:
    run = load_run(make_run(tmp_path / "run", {}, 0.5))
    run.final["evaluated"] = run_evaluated
    if run_tags is not None:
        run.final["tags"] = run_tags
    groups, common = group_runs([run])
    return comparison_table(groups, base, common)


def test_the_builtin_base_was_evaluated_as_the_shipped_config_evaluates_a_run():
    """The shipped report predates `evaluated`: it is rebuilt from the report's settings, and must equal what a
    run's final evaluation (or `maskfocus eval`) of the shipped config records, or every compare would carry a
    note; a run sampled with other settings gets one."""
    base = builtin_base_summary()
    assert base["evaluated"] == shipped_evaluation()
    assert base["evaluated"]["rows"] == rows_fingerprint(load_rows("shapes-geneval"))


def test_evaluations_of_other_prompt_rows_or_thresholds_are_flagged(tmp_path):
    """--limit 12 and --per-tag 2 both score 12 rows; before the fingerprint and thresholds were recorded, the
    two (and a --score-threshold 1.0 evaluation) compared as equal."""
    rows = load_rows("shapes-geneval")
    tags = {"single_object": 0.5}
    base = {"overall": 0.4, "tags": tags, "evaluated": shipped_evaluation(prompts=12, rows=rows_fingerprint(rows[:12]))}
    assert NOTE not in table_of(tmp_path / "a", dict(base["evaluated"]), base, tags)
    per_tag = shipped_evaluation(prompts=12, rows=rows_fingerprint(rows[::49][:12]))
    assert "the evaluations differ in rows (their `evaluated`)" in table_of(tmp_path / "b", per_tag, base, tags)
    strict = {**base["evaluated"], "thresholds": dataclasses.asdict(Thresholds(score=1.0))}
    assert "the evaluations differ in thresholds (their `evaluated`)" in table_of(tmp_path / "c", strict, base, tags)


def test_evaluations_that_scored_different_tags_are_flagged(tmp_path):
    base = {"overall": 0.4, "tags": {"single_object": 0.9, "counting": 0.2}}
    table = table_of(tmp_path, shipped_evaluation(), {**base, "evaluated": shipped_evaluation()}, {"single_object": 1})
    assert "note: the evaluations scored different tags" in table


def test_keys_an_older_summary_does_not_record_are_not_compared_and_its_judge_name_is_read(tmp_path):
    """A final evaluation of an earlier version: judge "detector" (the shapes detector), the sampler's compile
    recorded, no rows or thresholds: like for like with today's evaluation of the same settings."""
    older = {key: value for key, value in shipped_evaluation().items() if key not in ("rows", "thresholds", "dtype")}
    older = {**older, "judge": "detector", "sampler": {**older["sampler"], "compile": True}}
    base = {"overall": 0.4, "tags": {"single_object": 0.9}, "evaluated": shipped_evaluation()}
    assert NOTE not in table_of(tmp_path, older, base, {"single_object": 1.0})
