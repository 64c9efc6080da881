"""`maskfocus eval` and `sample` choices made before sampling: which prompt rows (`--per-tag`, `--limit`), eager or
compiled sampling, and a model that cannot sample refused as a user error."""

from __future__ import annotations

import json

import pytest
from support import cli_error


def test_a_small_eval_samples_eagerly_and_the_benchmark_compiles(monkeypatch):
    import maskfocus.evaluation
    from maskfocus.cli import main

    seen = []

    class Sampled(Exception):
        pass

    def run_evaluation(model, rows, eval_config, sampler, **kwargs):
        seen.append((len(rows), sampler.compile))
        raise Sampled

    monkeypatch.setattr(maskfocus.evaluation, "run_evaluation", run_evaluation)
    for limit in ("2", "100"):  # 8 images eager; 400 images (4 per row) compiled
        with pytest.raises(Sampled):
            main(["eval", "--limit", limit, "--no-clip"])
    assert seen == [(2, False), (100, True)]


def test_eval_per_tag_takes_evenly_spaced_rows_of_each_tag_before_the_limit(monkeypatch):
    import maskfocus.evaluation
    from maskfocus.cli import main

    seen = []

    class Sampled(Exception):
        pass

    def run_evaluation(model, rows, eval_config, sampler, **kwargs):
        seen.append([(row["tag"], row["prompt"]) for row in rows])
        raise Sampled

    monkeypatch.setattr(maskfocus.evaluation, "run_evaluation", run_evaluation)
    all_rows = maskfocus.evaluation.load_rows("shapes-geneval")
    for args in (["--per-tag", "2"], ["--per-tag", "2", "--limit", "5"]):
        with pytest.raises(Sampled):
            main(["eval", *args, "--no-clip"])
    tags = [tag for tag, _ in seen[0]]
    assert len(seen[0]) == 12 and all(tags.count(tag) == 2 for tag in set(tags)) and len(set(tags)) == 6
    for tag in set(tags):  # the first and the middle row of its tag, in file order
        same_tag = [row["prompt"] for row in all_rows if row["tag"] == tag]
        assert [prompt for row_tag, prompt in seen[0] if row_tag == tag] == [same_tag[0], same_tag[len(same_tag) // 2]]
    assert seen[1] == seen[0][:5]


@pytest.mark.parametrize("written", [("results", "summary", "grid"), ("summary",), ()])
def test_eval_says_where_it_wrote_each_file_it_wrote(monkeypatch, capsys, tmp_path, written):
    """eval printed its table and seconds but no word of --out, --summary or --grid, where sample names its grid."""
    import numpy as np

    import maskfocus.evaluation
    from maskfocus.cli import main

    def run_evaluation(model, rows, eval_config, sampler, records_out=None, **kwargs):
        records = [{"row": 0, "image": 0, "correct": True}]
        if records_out is not None:
            records_out.write_text(json.dumps(records[0]) + "\n")
        summary = {"tags": {"single_object": 1.0}, "overall": 1.0, "num_images": 1, "seconds": 0.5}
        return records, summary, np.zeros((1, 8, 8, 3), dtype=np.uint8)

    monkeypatch.setattr(maskfocus.evaluation, "run_evaluation", run_evaluation)
    paths = {"results": tmp_path / "r.jsonl", "summary": tmp_path / "s.json", "grid": tmp_path / "g.png"}
    options = {"results": "--out", "summary": "--summary", "grid": "--grid"}
    given = [text for what in written for text in (options[what], str(paths[what]))]
    assert main(["eval", "--limit", "1", "--num-images-per-prompt", "1", "--no-clip", *given]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[printed.index("0.5 s") + 1 :] == [f"{what}: {paths[what]}" for what in written]
    assert all(paths[what].is_file() for what in written)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "model.device=meta"], "--set model.device: maskfocus samples and trains on cpu or cuda"),
        (["--model", "builtin:shapes-clip"], "builtin:shapes-clip is the built-in CLIP (a reward and judge model)"),
        (["--model", ""], "--model is empty: give a model folder"),
    ],
)
def test_a_model_that_cannot_sample_is_a_user_error_not_a_traceback(capsys, tmp_path, args, message):
    """A meta device passed the config and failed in torch; the built-in CLIP given as the generator was told to
    rebuild the built-in weights; an empty --model fell back to model.path without a word."""
    assert message in cli_error(capsys, "sample", "--prompt", "a red circle", "--out", str(tmp_path / "g.png"), *args)
