"""benchmarks/caption_sensitivity.py: true and altered captions differ in just the word under test, the scene
matches only the true one, and the per-scene loss matches a token loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from support import ToyGenerator, load_benchmark, run_benchmark_cli

from maskfocus.shapes import prompts
from maskfocus.shapes.scene import relations
from maskfocus.shapes.world import COLORS, NUMBER_WORDS, OPPOSITE_RELATION

module = load_benchmark("caption_sensitivity")


def changed_words(true: str, altered: str) -> list[tuple[str, str]]:
    """Word pairs that differ, but for the article that follows a colour word ("an orange" / "a green")."""
    a, b = true.split(), altered.split()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y and {x, y} != {"a", "an"}]


def test_color_pairs_name_the_objects_colour_and_another():
    pairs = module.draw_pairs("color", 50, np.random.default_rng(0))
    assert len(pairs) == 50  # the checks below run on every pair asked for
    for scene, true, altered in pairs:
        (obj,) = scene.objects
        ((said, other),) = changed_words(true, altered)
        assert said == obj.color and other in COLORS and other != obj.color


def test_counting_pairs_name_the_true_count_and_a_neighbour():
    pairs = module.draw_pairs("counting", 50, np.random.default_rng(0))
    assert len(pairs) == 50  # the checks below run on every pair asked for
    for scene, true, altered in pairs:
        assert len({obj.shape for obj in scene.objects}) == 1
        ((said, other),) = changed_words(true, altered)
        assert said == NUMBER_WORDS[len(scene.objects)]
        wrong = next(n for n, word in NUMBER_WORDS.items() if word == other)
        assert abs(wrong - len(scene.objects)) == 1


def test_binding_pairs_swap_the_two_colours():
    pairs = module.draw_pairs("binding", 50, np.random.default_rng(0))
    assert len(pairs) == 50  # the checks below run on every pair asked for
    for scene, true, altered in pairs:
        a, b = scene.objects
        assert true == prompts.color_attr(a.shape, a.color, b.shape, b.color)["prompt"]
        assert changed_words(true, altered) == [(a.color, b.color), (b.color, a.color)]


@pytest.mark.parametrize("kind", ["position", "position_near"])
def test_position_pairs_hold_the_true_relation_and_not_the_altered_one(kind):
    pairs = module.draw_pairs(kind, 50, np.random.default_rng(0))
    assert len(pairs) == 50  # the checks below run on every pair asked for
    for scene, true, altered in pairs:
        subject, reference = scene.objects
        if kind == "position_near":
            assert math.hypot(subject.cx - reference.cx, subject.cy - reference.cy) <= 24.0
        holding = relations(subject.box, reference.box)
        said = next(r for r in OPPOSITE_RELATION if f" {r} " in true)
        assert said in holding and OPPOSITE_RELATION[said] not in holding
        assert changed_words(true, altered) == list(zip(said.split(), OPPOSITE_RELATION[said].split(), strict=True))[:1]


def test_object_token_loss_matches_a_token_loop():
    model = ToyGenerator()
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.codebook_size, (3, 16), generator=generator)
    masked = torch.rand(tokens.shape, generator=generator) < 0.6
    objects = tokens != 0
    captions = ["a", "bb", "ccc"]
    loss = module.object_token_loss(model, tokens, masked, objects, captions)
    logits = model.logits(tokens.masked_fill(masked, model.mask_token_id), model.encode_prompts(captions))
    for b in range(3):
        terms = [
            -torch.log_softmax(logits[b, i], -1)[tokens[b, i]].item()
            for i in range(16)
            if masked[b, i] and objects[b, i]
        ]
        assert loss[b].item() == pytest.approx(sum(terms) / len(terms), rel=1e-5) if terms else math.isnan(loss[b])
    same = module.object_token_loss(model, tokens, masked, objects, captions)
    assert torch.equal(loss, same)


def loop_losses(model, tokens, masked, scored, captions) -> list[float | None]:
    """Per scene: the mean of -log p(token) over its masked, scored positions (None when it has none)."""
    logits = model.logits(tokens.masked_fill(masked, model.mask_token_id), model.encode_prompts(captions))
    losses = []
    for b in range(len(tokens)):
        positions = [i for i in range(tokens.shape[1]) if masked[b, i] and scored[b, i]]
        terms = [-torch.log_softmax(logits[b, i], -1)[tokens[b, i]].item() for i in positions]
        losses.append(sum(terms) / len(terms) if terms else None)
    return losses


@pytest.mark.parametrize("all_tokens", [False, True])
def test_sensitivity_scores_object_tokens_or_every_masked_token(monkeypatch, all_tokens):
    """A count word moves the background as much as the objects, so `all_tokens` must score both."""
    model = ToyGenerator()
    background = 0
    tokens = torch.randint(0, model.codebook_size, (4, 16), generator=torch.Generator().manual_seed(1))
    tokens[:, :4] = background
    tokens[:, 4] = 1  # every scene has an object token
    monkeypatch.setattr(
        module,
        "scene_tokens",
        lambda _model, scenes: torch.full((1, 16), background) if not scenes[0].objects else tokens,
    )
    pairs = [
        (scene, f"true {i}", f"altered {i}")
        for i, (scene, _, _) in enumerate(module.draw_pairs("color", 4, np.random.default_rng(0)))
    ]
    cells = module.sensitivity(model, pairs, 0.7, torch.Generator().manual_seed(2), all_tokens=all_tokens)
    masked = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(2)) < 0.7
    scored = torch.ones_like(masked) if all_tokens else tokens != background
    true, altered = (loop_losses(model, tokens, masked, scored, [p[k] for p in pairs]) for k in (1, 2))
    kept = [b for b in range(len(pairs)) if true[b] is not None and altered[b] is not None]
    assert kept  # the comparison means something
    assert cells["true"] == pytest.approx(sum(true[b] for b in kept) / len(kept), rel=1e-5)
    assert cells["altered"] == pytest.approx(sum(altered[b] for b in kept) / len(kept), rel=1e-5)
    assert cells["difference"] == pytest.approx(sum(altered[b] - true[b] for b in kept) / len(kept), abs=1e-5)
    objects_only = loop_losses(model, tokens, masked, tokens != background, [p[1] for p in pairs])
    assert (objects_only != true) == all_tokens  # the background tokens change the score only with all_tokens


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ratios", "0.8", "1.5"], "argument --ratios: must be in (0, 1], got 1.5"),  # read as 1, before
        (["--ratios", "0"], "argument --ratios: must be in (0, 1], got 0.0"),  # a row of nan, before
        (["--scenes", "0"], "argument --scenes: must be >= 1, got 0"),  # a reshape error after the header
    ],
)
def test_shares_and_counts_out_of_range_are_argument_errors(monkeypatch, capsys, argv, message):
    with pytest.raises(SystemExit):
        run_benchmark_cli(module, argv, monkeypatch)
    assert message in capsys.readouterr().err


def test_a_missing_model_is_one_line(monkeypatch, capsys, tmp_path):
    assert run_benchmark_cli(module, [str(tmp_path / "missing")], monkeypatch) == 2
    assert capsys.readouterr().err.startswith(f"caption_sensitivity.py: error: model folder not found: {tmp_path}")
