"""The run's bounded queue of batches (a `ray.util.queue.Queue`), with every wait bounded.

`Queue.put(block=False)`, `qsize()` and the waiting `put`/`get` call `ray.get` without a timeout: the queue actor's
own wait ends (`Full`, `Empty`), but an actor that is stuck, or still waiting for its node, would hold the driver or
the learner forever. Each call here waits at most its own time plus REPLY_MARGIN_S for the actor's answer.
"""

from __future__ import annotations

import asyncio
import queue as queue_lib
from typing import Any

import ray
from ray.util.queue import Queue

REPLY_MARGIN_S = 30.0
"""How long past its own wait the queue actor may take to answer (it answers in milliseconds when healthy)."""


def put_now(batches: Queue, item: Any, timeout_s: float) -> None:
    """Add `item`, or raise queue.Full at once if the queue is full."""
    try:
        ray.get(batches.actor.put_nowait.remote(item), timeout=timeout_s)
    except asyncio.QueueFull:
        raise queue_lib.Full from None


def put_within(batches: Queue, item: Any, wait_s: float) -> None:
    """Add `item`, waiting up to `wait_s` for room (queue.Full after that)."""
    ray.get(batches.actor.put.remote(item, wait_s), timeout=wait_s + REPLY_MARGIN_S)


def get_within(batches: Queue, wait_s: float) -> Any:
    """The next item, waiting up to `wait_s` for one (queue.Empty after that)."""
    return ray.get(batches.actor.get.remote(wait_s), timeout=wait_s + REPLY_MARGIN_S)


def queue_size(batches: Queue, timeout_s: float) -> int:
    return ray.get(batches.actor.qsize.remote(), timeout=timeout_s)
