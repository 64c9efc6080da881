"""Watching a run's metric records for a loss gone non-finite, or rewards that are all NaN
(`train.max_nonfinite_iterations`).

A non-finite loss skips its optimizer step (maskfocus.update), which keeps one bad batch from poisoning the
weights. But once the weights themselves are non-finite (too high a learning rate), every later loss is too: the
run learned nothing, its reward fell to zero, and it still ran to the end and said "done". Both executors pass
each iteration's record to a `NonFiniteWatch`, which reports the first non-finite iteration of a streak and stops
the run when the streak is long enough. A group whose reward is NaN is skipped (no advantage); when every group
is, the run learns nothing but the KL pull to the reference, so such a streak stops it too.
"""

from __future__ import annotations

from typing import Any

KEY = "loss/skipped_nonfinite"
"""The fraction of an iteration's learned steps whose loss was non-finite (maskfocus.update)."""

NAN_REWARD_KEY = "reward/nan_group_fraction"
"""The fraction of an iteration's groups skipped for a NaN reward (maskfocus.scoring)."""


class Diverged(RuntimeError):
    """The loss was non-finite at every learned step of `train.max_nonfinite_iterations` iterations in a row."""


class NonFiniteWatch:
    def __init__(self, patience: int | None):
        self.patience = patience
        self.streak_start: int | None = None
        """The first of the iterations in a row, up to the last observed, whose every learned step had a non-finite
        loss (None: the last one had a finite step)."""
        self.reported = False
        """Whether the current run of non-finite iterations (some steps or all) has been reported."""
        self.nan_rewards = NanRewardStreak(patience)

    def observe(self, record: dict[str, Any]) -> str | None:
        """Take one iteration's record; returns a line to show when a run of non-finite losses (or NaN rewards)
        begins. Raises Diverged when a streak of wholly non-finite iterations reaches the patience."""
        notes = [self.nan_rewards.observe(record), self._observe_loss(record)]
        return "\n".join(note for note in notes if note) or None

    def _observe_loss(self, record: dict[str, Any]) -> str | None:
        fraction = record.get(KEY) or 0.0  # absent: no update (an iteration without learning); null: NaN itself
        iteration = record["iteration"]
        if fraction < 1.0:
            self.streak_start = None
        elif self.streak_start is None:
            self.streak_start = iteration
        if fraction == 0.0:
            self.reported = False
            return None
        start = self.streak_start
        if self.patience is not None and start is not None and iteration - start + 1 >= self.patience:
            raise Diverged(
                f"the loss was non-finite at every learned step of iterations {start}-{iteration}, so "
                "none of their optimizer steps was taken: the weights have likely gone non-finite (too high "
                "optim.learning_rate?). Checkpoints from then on hold them: start again with a lower learning rate, "
                "or move those checkpoints aside and resume from an earlier one with it "
                "(train.max_nonfinite_iterations sets how many such iterations stop a run)"
            )
        if self.reported:
            return None
        self.reported = True
        return (
            f"iteration {iteration}: the loss was non-finite at {fraction:.0%} of the learned steps; their optimizer "
            f"steps were skipped ({KEY} in metrics.jsonl)"
        )


class NanRewardStreak:
    """Iterations in a row where every group's reward was NaN (a reward model or server gone wrong)."""

    def __init__(self, patience: int | None):
        self.patience = patience
        self.start: int | None = None
        self.reported = False

    def observe(self, record: dict[str, Any]) -> str | None:
        fraction = record.get(NAN_REWARD_KEY) or 0.0  # absent: records of runs before the key
        iteration = record["iteration"]
        self.start = (iteration if self.start is None else self.start) if fraction >= 1.0 else None
        if fraction == 0.0:
            self.reported = False
            return None
        if self.patience is not None and self.start is not None and iteration - self.start + 1 >= self.patience:
            raise Diverged(
                f"every group's reward was NaN in iterations {self.start}-{iteration}: nothing was learned from them "
                "but the KL pull to the reference. A reward term returns NaN (the reward/<term> metrics in "
                "metrics.jsonl show which; a reward server's log says why); fix it and resume "
                "(train.max_nonfinite_iterations sets how many such iterations stop a run)"
            )
        if self.reported:
            return None
        self.reported = True
        return (
            f"iteration {iteration}: {fraction:.0%} of the groups had a NaN reward and were skipped ({NAN_REWARD_KEY} "
            "in metrics.jsonl)"
        )
