"""The reward worker's job on a toy rollout: rewards -> advantages, gains -> steps, NaN groups skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import ToyGenerator

from maskfocus.config import ConfigError, GRPOConfig, RouterConfig, SamplerConfig, SelectionConfig, config_from_dict
from maskfocus.rollout import rollout
from maskfocus.router import token_entropy
from maskfocus.sampling import seeded_generator
from maskfocus.scoring import score_trajectory, tag_rewards, trajectory_gains


class FixedReward:
    """Returns preset rewards, shaped like WeightedReward's output."""

    def __init__(self, values):
        self.values = torch.tensor(values, dtype=torch.float32)

    def __call__(self, images, metadata):
        return self.values, {"fixed": self.values}


def toy_trajectory(router: bool = True):
    model = ToyGenerator()
    metadata = [{"prompt": "a"}, {"prompt": "b"}]
    sampler = SamplerConfig(num_steps=6, cfg_scale=2.0)
    trajectory = rollout(model, metadata, 4, sampler, RouterConfig(enabled=router), seeded_generator(0))
    return model, trajectory


def test_rollout_records_groups_routes_and_images():
    _, trajectory = toy_trajectory()
    assert trajectory.tokens_BL.shape == (8, 16) and trajectory.masks_BTL.shape == (8, 6, 16)
    assert trajectory.images_BHWC.dtype == np.uint8 and trajectory.images_BHWC.shape[0] == 8
    assert trajectory.prompts_B == ["a"] * 4 + ["b"] * 4
    assert (trajectory.routes_BT.view(2, 4, 6).sum(1) == 2).all()  # half of each group explores every step


def test_a_rollout_samples_each_prompt_in_a_contiguous_group_with_the_samplers_settings(monkeypatch):
    """What the rollout hands the sampler: the prompts in groups of G (Trajectory.prompts_B is rebuilt from the
    metadata, so interleaved prompts passed the test above), the draw temperature and the negative prompt, and a
    router over groups of G (a router over groups of G / 2 still routes two of each four)."""
    import maskfocus.sampling as sampling
    from maskfocus.router import route_lowest_entropy

    calls = []
    sample_prompts = sampling.sample_prompts

    def spy(model, prompts, **options):
        calls.append((list(prompts), options))
        return sample_prompts(model, prompts, **options)

    monkeypatch.setattr(sampling, "sample_prompts", spy)
    sampler = SamplerConfig(num_steps=6, cfg_scale=2.0, temperature=0.8, negative_prompt="n", gumbel_temperature=3.0)
    metadata = [{"prompt": "a"}, {"prompt": "b"}]
    trajectory = rollout(ToyGenerator(), metadata, 4, sampler, RouterConfig(), seeded_generator(0))
    ((prompts, options),) = calls
    assert prompts == ["a"] * 4 + ["b"] * 4
    assert (options["num_steps"], options["cfg_scale"], options["gumbel_temperature_initial"]) == (6, 2.0, 3.0)
    assert (options["temperature"], options["negative_prompt"]) == (0.8, "n")
    for step in range(6):
        expected = route_lowest_entropy(trajectory.entropy_BT[:, step], 4)
        assert torch.equal(trajectory.routes_BT[:, step], expected), step


def test_score_builds_a_batch_with_group_advantages_and_shared_steps():
    model, trajectory = toy_trajectory()
    reward = FixedReward([1, 0, 0, 1, 0, 0, 0, 1])
    batch = score_trajectory(
        trajectory, reward, model, SelectionConfig(num_steps=2), GRPOConfig(), torch.Generator().manual_seed(0)
    )
    assert batch.advantages_B.view(2, 4).sum(1).abs().max() < 1e-5
    assert batch.steps_BK.shape == (8, 2) and (batch.steps_BK >= 1).all()
    assert (batch.steps_BK.view(2, 4, 2) == batch.steps_BK.view(2, 4, 2)[:, :1]).all()  # shared within a group
    expected = trajectory.masks_BTL.gather(1, batch.steps_BK.unsqueeze(-1).expand(-1, -1, 16)).sum(-1)
    assert torch.equal(batch.num_masked_BK, expected)
    assert batch.stats["reward/mean"] == pytest.approx(3 / 8)


def test_a_routed_rollout_repeats_exactly_with_the_same_seed_and_differs_with_another():
    """Same seed -> same images holds with the router on too (its temperatures come from the logits alone)."""
    model = ToyGenerator()
    metadata, sampler = [{"prompt": "a"}, {"prompt": "b"}], SamplerConfig(num_steps=6, cfg_scale=2.0)
    runs = [rollout(model, metadata, 4, sampler, RouterConfig(), seeded_generator(seed)) for seed in (3, 3, 4)]
    for field in ("tokens_BL", "masks_BTL", "x0_BTL", "routes_BT", "entropy_BT"):
        assert torch.equal(getattr(runs[0], field), getattr(runs[1], field)), field
    assert np.array_equal(runs[0].images_BHWC, runs[1].images_BHWC)
    assert not torch.equal(runs[0].tokens_BL, runs[2].tokens_BL)


def test_rollouts_route_with_the_configured_temperature_and_scope(monkeypatch):
    """The rollout's router is built from router.a, b, c and scope (the defaults equal EntropyRouter's, so a run with
    other settings is the only way to see them ignored): tau(H) = a exp(-H / b) + c on the routed samples."""
    import math

    import maskfocus.rollout as rollout_module

    seen = []
    original = rollout_module.sample_with_config

    def recorded(*args, token_temperature=None, **kwargs):
        seen.append(token_temperature)
        return original(*args, token_temperature=token_temperature, **kwargs)

    monkeypatch.setattr(rollout_module, "sample_with_config", recorded)
    model = ToyGenerator()
    config = RouterConfig(a=1.0, b=0.5, c=0.2, scope="batch")
    rollout(model, [{"prompt": "a"}, {"prompt": "b"}], 4, SamplerConfig(num_steps=4), config, seeded_generator(0))
    router = seen[0]
    logits_BLV = torch.tensor([[[0.0, 0.0], [4.0, 0.0]], [[1.0, 0.0], [0.0, 2.0]]])  # B 2, L 2, V 2
    entropy_BL = token_entropy(logits_BLV)
    temperature_BL, routes_B = router(0, torch.tensor([0.3, 0.1]), entropy_BL, torch.ones(2, 2, dtype=torch.bool))
    assert routes_B.tolist() == [False, True]  # scope batch, group size 4 > B: the lower half of the whole batch
    for position in range(2):
        p = torch.softmax(logits_BLV[1, position], -1).tolist()
        entropy = -sum(q * math.log(q) for q in p)
        assert temperature_BL[1, position].item() == pytest.approx(1.0 * math.exp(-entropy / 0.5) + 0.2, rel=1e-5)
    assert temperature_BL[0].tolist() == [1.0, 1.0]
    assert rollout_module.make_router(RouterConfig(enabled=False), 4) is None


@pytest.mark.parametrize("per_sample", [False, True])
def test_the_batch_holds_the_top_gain_steps_of_each_group_as_a_loop_computes_them(per_sample):
    """The whole path (codebook embeddings of each step's x0 and of the final tokens, cosine similarity, the group's
    mean or, per sample, each sample's own, |s_j - s_(j-1)|, top K) written as loops over one trajectory; and the
    exact advantages of its rewards."""
    model, trajectory = toy_trajectory()
    reward = FixedReward([1, 0, 0, 1, 0, 0, 0, 1])
    selection = SelectionConfig(num_steps=2, per_sample=per_sample)
    batch = score_trajectory(trajectory, reward, model, selection, GRPOConfig(), torch.Generator().manual_seed(0))
    num_steps, group = trajectory.masks_BTL.shape[1], trajectory.group_size
    members = [[b] for b in range(len(batch))] if per_sample else [list(range(s, s + group)) for s in (0, group)]
    for samples in members:
        similarity = [0.0] * num_steps
        for b in samples:
            final = model.codebook_vectors(trajectory.tokens_BL[b : b + 1])[0].flatten().double()
            for j in range(num_steps):
                step = model.codebook_vectors(trajectory.x0_BTL[b : b + 1, j])[0].flatten().double()
                similarity[j] += float(step @ final / (step.norm() * final.norm())) / len(samples)
        gains = {j: abs(similarity[j] - similarity[j - 1]) for j in range(1, num_steps)}
        top = sorted(gains, key=lambda j: -gains[j])[:2]
        assert gains[top[1]] > max([gains[j] for j in gains if j not in top], default=-1.0)  # no tie at the cut
        for b in samples:
            assert sorted(batch.steps_BK[b].tolist()) == sorted(top)
    assert per_sample == any(batch.steps_BK[b].tolist() != batch.steps_BK[0].tolist() for b in range(group))
    expected = []
    for rewards in ([1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]):
        mean = sum(rewards) / 4
        std = (sum((r - mean) ** 2 for r in rewards) / 3) ** 0.5  # the unbiased std, as torch.std
        expected += [(r - mean) / (std + GRPOConfig().advantage_eps) for r in rewards]
    assert batch.advantages_B.tolist() == pytest.approx(expected, rel=1e-5)


def test_tag_rewards_average_each_tags_finite_rewards_as_a_loop_does():
    metadata = [{"tag": "counting"}, {"tag": "colors"}, {"tag": "counting"}, {"tag": "colors"}, {"prompt": "untagged"}]
    metadata += [{"tag": "colors"}, {"tag": "counting"}]
    rewards = torch.tensor([1.0, 0.5, 0.0, float("nan"), 0.7, float("inf"), float("-inf")])
    assert tag_rewards(metadata, rewards) == pytest.approx({"reward/tag/counting": 0.5, "reward/tag/colors": 0.5})
    assert tag_rewards([{"prompt": "a"}], torch.tensor([1.0])) == {}


def test_score_reports_the_reward_of_each_tag_in_the_batch():
    model, trajectory = toy_trajectory()
    trajectory.metadata = [{"prompt": "a", "tag": "position"}, {"prompt": "b", "tag": "colors"}]
    reward = FixedReward([1, 0, 0, 1, 0, 0, 0, 1])
    batch = score_trajectory(
        trajectory, reward, model, SelectionConfig(num_steps=2), GRPOConfig(), torch.Generator().manual_seed(0)
    )
    assert batch.stats["reward/tag/position"] == pytest.approx(0.5)
    assert batch.stats["reward/tag/colors"] == pytest.approx(0.25)


def test_nan_reward_group_is_skipped_and_counted():
    model, trajectory = toy_trajectory()
    reward = FixedReward([1, 0, float("nan"), 1, 0, 1, 0, 1])
    batch = score_trajectory(
        trajectory, reward, model, SelectionConfig(num_steps=2), GRPOConfig(), torch.Generator().manual_seed(0)
    )
    assert not batch.valid_B[:4].any() and batch.valid_B[4:].all()
    assert torch.isfinite(batch.advantages_B).all() and (batch.advantages_B[:4] == 0).all()
    assert batch.stats["reward/nan_groups"] == 1.0


@pytest.mark.parametrize("drop", [False, True])
def test_drop_zero_groups_marks_only_equal_reward_groups_invalid(drop):
    model, trajectory = toy_trajectory()
    reward = FixedReward([1, 1, 1, 1, 1, 0, 0, 1])  # group 0: all equal (no signal); group 1: signal
    grpo = GRPOConfig(drop_zero_groups=drop)
    batch = score_trajectory(trajectory, reward, model, SelectionConfig(num_steps=2), grpo, torch.Generator())
    assert batch.valid_B.tolist() == [not drop] * 4 + [True] * 4
    assert batch.advantages_B[:4].tolist() == [0.0] * 4
    assert batch.stats["reward/zero_adv_group_fraction"] == 0.5


def test_the_zero_advantage_fraction_counts_skipped_nan_groups():
    """A skipped (NaN) group has zero advantage too: the fraction is of all groups."""
    model, trajectory = toy_trajectory()
    reward = FixedReward([float("nan"), 1, 0, 1, 0, 0, 1, 1])
    batch = score_trajectory(trajectory, reward, model, SelectionConfig(num_steps=2), GRPOConfig(), torch.Generator())
    assert batch.stats["reward/nan_groups"] == 1.0
    assert batch.stats["reward/zero_adv_group_fraction"] == 0.5


def test_clip_step_embeddings_decode_one_batch_at_a_time_without_a_graph():
    model, trajectory = toy_trajectory()
    projection = torch.randn(3 * 4 * 4, 5, requires_grad=True)  # a trainable "CLIP": no graph may be kept
    seen = []

    def image_embed(images_NCHW):
        seen.append(images_NCHW.shape[0])
        return images_NCHW.flatten(1) @ projection

    selection = SelectionConfig(num_steps=2, embedding="clip")
    similarity_BT, gain_BT = trajectory_gains(trajectory, model, selection, image_embed)
    assert seen == [8] * 6 + [8]  # B*T = 48 step images in chunks of B = 8, then the 8 final images
    assert not similarity_BT.requires_grad and not gain_BT.requires_grad
    assert torch.allclose(similarity_BT[:, -1], torch.ones(8))  # the last step's x0 prediction is the final image


def test_all_strategy_selects_every_step_and_random_is_seeded():
    model, trajectory = toy_trajectory()
    reward = FixedReward([1, 0] * 4)
    full = score_trajectory(
        trajectory, reward, model, SelectionConfig(strategy="all"), GRPOConfig(), torch.Generator().manual_seed(0)
    )
    assert torch.equal(full.steps_BK[0], torch.arange(6))
    picks = [
        score_trajectory(
            trajectory,
            reward,
            model,
            SelectionConfig(strategy="random", num_steps=3),
            GRPOConfig(),
            torch.Generator().manual_seed(5),
        ).steps_BK
        for _ in range(2)
    ]
    assert torch.equal(picks[0], picks[1])


@pytest.mark.parametrize(
    "data,needle",
    [
        ({"selection": {"num_steps": 12}}, "selection.num_steps"),
        ({"rollout": {"group_size": 1}}, "rollout.group_size"),
        ({"grpo": {"remaks": "random"}}, "grpo.remaks"),
        ({"rewards": [{"name": "aesthetic"}]}, "rewards.0.name"),
    ],
)
def test_bad_training_configs_are_named(data, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        config_from_dict(data)
