"""The `rollout:` section of the run config: what one RL iteration samples (part of the one tree in
maskfocus/config.py, which re-exports it)."""

from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, model_validator

from maskfocus.config_base import Section

GenEvalTag = Literal["single_object", "two_object", "counting", "colors", "position", "color_attr"]
"""GenEval's six task tags (maskfocus.rewards.geneval.TAGS)."""


class RolloutConfig(Section):
    """What one RL iteration samples."""

    prompts_per_iteration: int = Field(8, ge=1)
    """P: distinct prompts per iteration (each repeated G times)."""
    group_size: int = Field(4, ge=2)
    """G: samples per prompt; advantages are normalized within a group, so G >= 2."""
    tags: tuple[GenEvalTag, ...] = Field(get_args(GenEvalTag), min_length=1)
    """GenEval tags the training prompts are drawn from. Shapes-world prompts: a tag uniformly (or by
    `tag_weights`), then a prompt of it. With `prompt_file` and no `tag_weights`: a record uniformly, so each tag in
    proportion to its records."""
    tag_weights: tuple[float, ...] | None = None
    """Relative probability of each tag of `tags`, in the same order (e.g. less of the tags a model already
    masters); null = uniform. With `prompt_file`, a tag is drawn by weight, then one of its records uniformly."""
    prompt_file: str | None = None
    """Training prompts instead of the built-in shapes world (needed for real checkpoints): a GenEval-format JSONL
    (one metadata record per line, e.g. a GenEval or Flow-GRPO training prompt file; records whose `tag` is not
    in `tags` are skipped), or a `.txt` file with one free-form prompt per line (only for rewards that need no
    metadata: clip, hps). null = shapes-world prompts."""
    num_steps: int | None = Field(None, ge=1)
    """T of the training rollouts; null = sampler.num_steps. Fewer steps sample a batch faster (rollout time is
    about linear in T; the learner's cost depends on K, which is T only with selection.strategy all) at the price
    of rollouts that differ from the evaluated policy's; evaluation and the preview grids always sample with
    sampler.num_steps. The learner scores each state with this T (Meissonic's timestep depends on it), and
    selection.num_steps is checked against it. On the shapes model 6 of 12 steps halved the rollout and gave the
    same score over 3 seeds in 0.71x the time per iteration (benchmarks/RESULTS.md, thirty-fifth session)."""
    held_out: Literal["text", "meaning"] = "text"
    """Shapes-world prompts only: how the training stream keeps out the shapes-geneval prompts of position and
    color_attr. `text` skips their exact texts (the stream of every recorded run); 12 of the 20 held-out position
    prompts and 78 of the 100 color_attr ones then still have a training prompt that GenEval judges alike (the
    relation read from the other object, the clauses swapped). `meaning` skips those too: a true held-out split
    (position trains on 16 prompts instead of 28, color_attr on 182 instead of 260)."""

    @model_validator(mode="after")
    def _check_held_out(self) -> RolloutConfig:
        if self.held_out != "text" and self.prompt_file is not None:
            raise ValueError(
                f"held_out {self.held_out!r} applies to the shapes-world prompts; a prompt_file is used as it is "
                "(leave held_out at 'text', or drop prompt_file)"
            )
        return self

    @model_validator(mode="after")
    def _check_tag_weights(self) -> RolloutConfig:
        weights = self.tag_weights
        if weights is None:
            return self
        if len(weights) != len(self.tags):
            raise ValueError(f"tag_weights has {len(weights)} entries and tags {len(self.tags)}: one weight per tag")
        if any(w < 0 or w != w for w in weights) or sum(weights) <= 0:
            raise ValueError(f"tag_weights {list(weights)}: weights must be >= 0 with a positive sum")
        if len(set(self.tags)) != len(self.tags):
            raise ValueError(f"tags {list(self.tags)} repeat a tag; with tag_weights list each tag once")
        if self.prompt_file is not None and self.prompt_file.endswith(".txt"):
            raise ValueError("tag_weights needs tagged prompts; a .txt prompt_file has no tags")
        return self
