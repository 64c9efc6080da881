"""maskfocus/compare.py's group labels: the keys that split the runs, cut short and spelled as a user writes them."""

from __future__ import annotations

from support import make_run

from maskfocus.compare import comparison_table, group_runs
from maskfocus.compare_run import load_run
from maskfocus.config import default_run_config


def test_an_added_reward_term_shows_as_one_key(tmp_path):
    plain = make_run(tmp_path / "plain", {}, 0.5)
    shipped_term = default_run_config().rewards[0].model_dump(mode="json")
    extra_term = {"rewards": [shipped_term, {"name": "clip", "weight": 0.1}]}
    with_clip = make_run(tmp_path / "clip", extra_term, 0.5)
    groups, _ = group_runs([load_run(plain), load_run(with_clip)])
    labels = list(groups)
    assert labels[1].startswith("rewards.1={name: clip, weight: 0.1, ") and labels[1].count("=") == 1
    assert labels[0] == "rewards.1=<absent>"


def test_labels_spell_settings_as_yaml_does(tmp_path):
    """A label reads as the `--set` that makes the run: `false` and `null`, not Python's `False` and `None`."""
    uncapped = make_run(tmp_path / "uncapped", {}, 0.5)
    capped = make_run(tmp_path / "capped", {"grpo.behaviour_weight_cap": 2.0}, 0.5)
    no_router = make_run(tmp_path / "no_router", {"grpo.behaviour_weight_cap": 2.0, "router.enabled": False}, 0.5)
    groups, common = group_runs([load_run(folder) for folder in (uncapped, capped, no_router)])
    assert list(groups) == ["grpo.behaviour_weight_cap=null", "the usual settings", "router.enabled=false"]
    table = comparison_table(groups, None, common)
    assert "each row names where it departs): router.enabled=true, grpo.behaviour_weight_cap=2.0" in table
