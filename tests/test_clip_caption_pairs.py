"""benchmarks/clip_caption_pairs.py: the tiny CLIP always prefers the true colour word, and the batched
share and mean difference equal scoring one pair at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import load_benchmark, run_benchmark_cli

from maskfocus.rewards.clip_score import ClipScorer
from maskfocus.shapes.render import render_batch

module = load_benchmark("clip_caption_pairs")


@pytest.fixture(scope="module")
def clip():
    return ClipScorer.from_folder()


def test_tiny_clip_prefers_the_true_colour_word(clip):
    cells = module.preference(clip, module.PAIRS.draw_pairs("color", 32, np.random.default_rng(0)))
    assert cells["true_wins"] == 1.0 and cells["stderr"] == 0.0 and cells["difference"] > 0.1


def test_share_and_difference_match_scoring_one_pair_at_a_time(clip):
    pairs = module.PAIRS.draw_pairs("position", 12, np.random.default_rng(0))
    cells = module.preference(clip, pairs)
    wins, differences = [], []
    for scene, true, altered in pairs:
        image = torch.from_numpy(render_batch([scene])).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            scores = [clip.score(image, [caption]).item() for caption in (true, altered)]
        wins.append(scores[0] > scores[1])
        differences.append(scores[0] - scores[1])
    assert cells["true_wins"] == pytest.approx(sum(wins) / len(wins))
    assert cells["difference"] == pytest.approx(sum(differences) / len(differences), abs=1e-5)


def test_a_missing_clip_folder_is_one_line_and_pairs_must_be_positive(monkeypatch, capsys, tmp_path):
    assert run_benchmark_cli(module, [str(tmp_path / "no_clip")], monkeypatch) == 2
    error = capsys.readouterr().err
    assert error.startswith("clip_caption_pairs.py: error: ") and str(tmp_path / "no_clip") in error
    with pytest.raises(SystemExit):
        run_benchmark_cli(module, ["--pairs", "0"], monkeypatch)
    assert "argument --pairs: must be >= 1, got 0" in capsys.readouterr().err
