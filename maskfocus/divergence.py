"""Watching a run's metric records for a loss gone non-finite, or rewards that are all NaN
(`train.max_nonfinite_iterations`).

A non-finite loss skips its optimizer step (maskfocus.update), which keeps one bad batch from poisoning the
weights. But once the weights themselves are non-finite (too high a learning rate), every later loss is too: the
run learned nothing, its reward fell to zero, and it still ran to the end and said "done". Both executors pass
each iteration's record to a `NonFiniteWatch`, which reports the first non-finite iteration of a streak and stops
the run when the streak is long enough. A group whose reward is NaN is skipped (no advantage); when every group
is, the run learns nothing (the skipped rows have no loss tokens, so not even the KL term: the optimizer step is
skipped), so such a streak stops it too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

KEY = "loss/skipped_nonfinite"
"""The fraction of an iteration's optimizer steps whose gradient was non-finite, from a non-finite loss or from
non-finite weights (which give a NaN gradient even where no token is scored, and so a zero loss) (maskfocus.update)."""

NAN_REWARD_KEY = "reward/nan_group_fraction"
"""The fraction of an iteration's groups skipped for a NaN reward (maskfocus.scoring)."""


class Diverged(RuntimeError):
    """The loss or its gradient was non-finite, or every group's reward NaN, at every optimizer step of
    `train.max_nonfinite_iterations` iterations in a row. `weights_finite`: the streak left the weights as they were
    (NaN rewards skip every step), so the last learned iteration is worth a checkpoint; after non-finite losses the
    weights have likely gone non-finite, and a checkpoint of them would be the one a resume picks."""

    def __init__(self, message: str, weights_finite: bool = False):
        super().__init__(message)
        self.weights_finite = weights_finite


class Streak:
    """Iterations in a row whose record has `key` at 1 (every optimizer step non-finite, or every group's reward NaN):
    the first iteration with a non-zero `key` gives a note, `patience` of them in a row raise Diverged."""

    def __init__(
        self,
        key: str,
        patience: int | None,
        stop_message: Callable[[int, int], str],
        note: Callable[[int, float], str],
        weights_finite: bool = False,
    ):
        self.key, self.patience, self.stop_message, self.note = key, patience, stop_message, note
        self.weights_finite = weights_finite
        """Whether such a streak leaves the weights finite (see Diverged)."""
        self.start: int | None = None
        """The first of the iterations in a row, up to the last observed, with `key` at 1 (None: the last one was
        below)."""
        self.reported = False
        """Whether the current run of iterations with a non-zero `key` has been reported."""

    def observe(self, record: dict[str, Any]) -> str | None:
        fraction = record.get(self.key) or 0.0  # absent: no update, or a record from before the key; null: NaN
        iteration = record["iteration"]
        if fraction < 1.0:
            self.start = None
        elif self.start is None:
            self.start = iteration
        if fraction == 0.0:
            self.reported = False
            return None
        if self.patience is not None and self.start is not None and iteration - self.start + 1 >= self.patience:
            raise Diverged(self.stop_message(self.start, iteration), self.weights_finite)
        if self.reported:
            return None
        self.reported = True
        return self.note(iteration, fraction)


def _iterations(start: int, iteration: int) -> str:
    return f"iteration {start}" if start == iteration else f"iterations {start}-{iteration}"


def _loss_stop(start: int, iteration: int) -> str:
    return (
        f"the loss or its gradient was non-finite at every optimizer step of {_iterations(start, iteration)}, so "
        "none of them was taken: the weights have likely gone non-finite (too high optim.learning_rate?), and "
        "so have those of any checkpoint from then on. Start again with a lower learning rate, or, where a "
        f"checkpoint from well before iteration {start} is kept, move the later ones aside and resume from it "
        "with a lower one (train.max_nonfinite_iterations sets how many such iterations stop a run)"
    )


def _loss_note(iteration: int, fraction: float) -> str:
    return (
        f"iteration {iteration}: the loss or its gradient was non-finite at {fraction:.0%} of the optimizer steps; "
        f"those steps were skipped ({KEY} in metrics.jsonl)"
    )


def _reward_stop(start: int, iteration: int) -> str:
    return (
        f"every group's reward was NaN in {_iterations(start, iteration)}: nothing was learned from them "
        "(their optimizer steps were skipped). A reward term returns NaN (the reward/<term> metrics in "
        "metrics.jsonl show which; a reward server's log says why); fix it and resume "
        "(train.max_nonfinite_iterations sets how many such iterations stop a run)"
    )


def _reward_note(iteration: int, fraction: float) -> str:
    return (
        f"iteration {iteration}: {fraction:.0%} of the groups had a NaN reward and were skipped ({NAN_REWARD_KEY} "
        "in metrics.jsonl)"
    )


class NonFiniteWatch:
    """A run's two streaks: NaN rewards and non-finite losses."""

    def __init__(self, patience: int | None):
        self.nan_rewards = Streak(NAN_REWARD_KEY, patience, _reward_stop, _reward_note, weights_finite=True)
        self.losses = Streak(KEY, patience, _loss_stop, _loss_note)

    def observe(self, record: dict[str, Any]) -> str | None:
        """Take one iteration's record; returns a line to show when a run of NaN rewards or non-finite losses
        begins. Raises Diverged when a streak of wholly non-finite iterations reaches the patience."""
        notes = [self.nan_rewards.observe(record), self.losses.observe(record)]
        return "\n".join(note for note in notes if note) or None
