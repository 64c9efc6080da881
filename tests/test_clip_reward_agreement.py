"""benchmarks/clip_reward_agreement.py: the within-group pairwise AUC."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
from support import load_benchmark, run_benchmark_cli

module = load_benchmark("clip_reward_agreement")


def test_perfect_reversed_and_tied_rankings():
    assert module.pairwise_auc([[(1, 0.9), (0, 0.1), (0, 0.2)]]) == (1.0, 2)
    assert module.pairwise_auc([[(1, 0.1), (0, 0.9)]]) == (0.0, 1)
    assert module.pairwise_auc([[(1, 0.5), (0, 0.5)]]) == (0.5, 1)


def test_pairs_across_groups_and_equal_labels_do_not_count():
    auc, pairs = module.pairwise_auc([[(1, 0.9), (1, 0.1)], [(0, 0.0)], [(0.5, 0.3), (1.0, 0.1), (0.0, 0.2)]])
    # only the third group has pairs: (0.5, 1.0) disagrees, (0.5, 0.0) agrees, (1.0, 0.0) disagrees
    assert pairs == 3 and auc == pytest.approx(1 / 3)


def test_no_informative_pair_gives_nan():
    auc, pairs = module.pairwise_auc([[(1, 0.3), (1, 0.4)], []])
    assert math.isnan(auc) and pairs == 0


def test_matches_the_mann_whitney_count_within_each_group():
    rng = random.Random(0)
    groups = [[(rng.choice([0, 1]), rng.choice([0.1, 0.2, 0.3])) for _ in range(8)] for _ in range(20)]
    wins = total = 0.0
    for group in groups:
        positives = [s for label, s in group if label == 1]
        negatives = [s for label, s in group if label == 0]
        for p in positives:
            for n in negatives:
                total += 1
                wins += (p > n) + 0.5 * (p == n)
    assert module.pairwise_auc(groups) == (pytest.approx(wins / total), int(total))


def test_a_wrong_clip_folder_fails_before_the_generator_loads(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(module, "load_evaluated_generator", lambda *_: pytest.fail("the generator was loaded"))
    argv = ["builtin:shapes-tiny", "--clip", str(tmp_path / "no_clip")]
    assert run_benchmark_cli(module, argv, monkeypatch) == 2
    error = capsys.readouterr().err
    assert error.startswith("clip_reward_agreement.py: error: ") and str(tmp_path / "no_clip") in error
    assert "(--clip;" in error  # it named the config key rewards[].model
    for option in ("--images", "--every"):  # a StatisticsError and a zero slice step, before
        with pytest.raises(SystemExit):
            run_benchmark_cli(module, ["builtin:shapes-tiny", option, "0"], monkeypatch)
        assert f"argument {option}: must be >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one image a row: every AUC was nan (0)
        run_benchmark_cli(module, ["builtin:shapes-tiny", "--images", "1"], monkeypatch)
    assert "argument --images: must be >= 2: the agreement compares images of one row, got 1" in (
        capsys.readouterr().err
    )
    assert module._auc(float("nan"), 0).startswith("- (0 pairs") and module._auc(0.75, 4) == "0.750 (4)"


def test_an_every_that_leaves_a_tag_without_rows_fails_before_anything_loads(monkeypatch, capsys):
    """`--every 100000` sampled, then ended in statistics.StatisticsError over an empty tag."""
    monkeypatch.setattr(
        module, "ClipScorer", SimpleNamespace(from_folder=lambda *_, **__: pytest.fail("CLIP was loaded"))
    )
    assert run_benchmark_cli(module, ["builtin:shapes-tiny", "--every", "100000"], monkeypatch) == 2
    assert "--every 100000 leaves no rows of counting, position, color_attr; give a smaller --every" in (
        capsys.readouterr().err
    )
