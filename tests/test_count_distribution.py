"""benchmarks/count_distribution.py: the count table and the success rates, against hand-counted scenes."""

from __future__ import annotations

import pytest
from support import load_benchmark, run_benchmark_cli

from maskfocus.rewards.geneval import Detection


def squares(*scores: float) -> dict[str, list[Detection]]:
    return {"square": [Detection(box=(4.0 * i, 0.0, 4.0 * i + 3, 3.0), score=s) for i, s in enumerate(scores)]}


ASK_TWO = {
    "tag": "counting",
    "include": [{"class": "square", "count": 2}],
    "exclude": [{"class": "square", "count": 3}],
}


def test_table_and_success_by_threshold_match_hand_counts():
    module = load_benchmark("count_distribution")
    images = [
        squares(0.95, 0.95),  # exactly two at every threshold
        squares(0.95, 0.95, 0.6),  # two above 0.9; the faint third makes three above 0.5 and 0.3
        squares(0.95, 0.4),  # one above 0.9 and 0.5; two above 0.3
        squares(0.95, 0.95, 0.95, 0.95),  # four everywhere
    ]
    table, success = module.tabulate(images, [ASK_TWO] * 4, [0.9, 0.5, 0.3])
    assert table == {(2, 2): 2, (2, 1): 1, (2, 4): 1}
    assert success == {0.9: 2 / 4, 0.5: 1 / 4, 0.3: 2 / 4}


def test_count_found_ignores_other_classes_and_counts_strictly_above():
    module = load_benchmark("count_distribution")
    detections = {**squares(0.9, 0.91), "circle": [Detection(box=(0.0, 8.0, 3.0, 11.0), score=0.99)]}
    assert module.count_found(detections, ASK_TWO, 0.9) == 1
    assert module.count_found(detections, ASK_TWO, 0.5) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--images", "0"], "argument --images: must be >= 1, got 0"),  # a ZeroDivisionError, before
        (["--thresholds", "0.9", "1.5"], "argument --thresholds: must be in [0, 1], got 1.5"),  # every image failed
    ],
)
def test_counts_and_thresholds_out_of_range_are_argument_errors(monkeypatch, capsys, argv, message):
    module = load_benchmark("count_distribution")
    with pytest.raises(SystemExit):
        run_benchmark_cli(module, ["builtin:shapes-tiny", *argv], monkeypatch)
    assert message in capsys.readouterr().err
