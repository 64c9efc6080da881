"""The reward worker's job on a toy rollout: rewards -> advantages, gains -> steps, NaN groups skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import ToyGenerator

from maskfocus.config import ConfigError, GRPOConfig, RouterConfig, SamplerConfig, SelectionConfig, config_from_dict
from maskfocus.rollout import rollout
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


def test_tag_rewards_average_each_tags_finite_rewards_as_a_loop_does():
    metadata = [{"tag": "counting"}, {"tag": "colors"}, {"tag": "counting"}, {"tag": "colors"}, {"prompt": "untagged"}]
    rewards = torch.tensor([1.0, 0.5, 0.0, float("nan"), 0.7])
    expected = {}
    for tag in ("counting", "colors"):
        values = [r for m, r in zip(metadata, rewards.tolist(), strict=True) if m.get("tag") == tag and not np.isnan(r)]
        expected[f"reward/tag/{tag}"] = sum(values) / len(values)
    assert tag_rewards(metadata, rewards) == pytest.approx(expected)
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
