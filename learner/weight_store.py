"""The learner's mailbox: published weights with their version, and the per-update metric records.

A small async actor (num_cpus=0). Rank 0 of the learner group publishes after every update; the driver
takes the records in order (`next_update`) and hands the weights to rollout workers. Weights travel as an
ObjectRef inside a list, so the store holds a reference, never a copy (the object store moves the bytes
straight from the learner to each rollout worker).
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import ObjectRef

Update = tuple[int, list[ObjectRef] | None, dict[str, Any]]
"""(policy version, [weights ref] or None, record): a record with `dropped` set is a batch not learned from."""


class WeightStore:
    def __init__(self) -> None:
        self.version = -1
        self.weights: list[ObjectRef] | None = None
        self.updates: asyncio.Queue[Update] = asyncio.Queue()

    async def publish(self, version: int, weights: list[ObjectRef] | None, record: dict[str, Any]) -> None:
        """New weights (None: unchanged, e.g. a dropped batch) and the record of what produced them."""
        if weights is not None:
            self.version, self.weights = version, weights
        await self.updates.put((version, weights, record))

    async def next_update(self, timeout: float) -> Update | None:
        """The oldest record not yet taken; None if none arrives within `timeout` seconds."""
        try:
            return await asyncio.wait_for(self.updates.get(), timeout)
        except TimeoutError:
            return None

    async def latest(self) -> tuple[int, list[ObjectRef] | None]:
        return self.version, self.weights
