"""Client of a Flow-GRPO-compatible GenEval reward server (the original Mask2Former + CLIP evaluator over HTTP).

Wire format of Flow-GRPO's `geneval_score` and its reward server (`app_geneval.py`): one POST to the server's
root with a pickled dict {"images": [JPEG bytes], "meta_datas": [GenEval metadata dict], "only_strict": bool};
the reply (HTTP 200) is a pickled dict {"scores", "rewards", "strict_rewards", "group_rewards",
"group_strict_rewards"}: per image, "rewards" is GenEval correctness (1.0 / 0.0), "strict_rewards" the same with
exact counts, "scores" the server's partial credit; an error is HTTP 500 with the traceback as text.

"scores" is Flow-GRPO's `evaluate_reward`, not GenEval's fraction of clauses met: the mean of per-clause terms,
with exclude clauses ignored. Each include clause gives 1 - |count - found| / count (negative when far more objects
are found than asked); a clause with a colour adds 1 - |count - found in that colour| / count, and one with a
position adds 1.0 where every pair holds (a failing pair adds 0.0 and then 1.0 as well, as that code is written);
either adds 0.0 instead when the count misses or the target clause failed. The
client clips the mean to [0, 1] so that a `partial` reward stays in GenEval's range; correctness is used as sent. The
server's correctness honours the exclude clauses a `strict` term sends, its partial score does not, so a strict
term takes this judge in mode binary only.

A pickle from the network can run arbitrary code when loaded, so replies are read with `safe_loads`: an
Unpickler that resolves no global at all (so no class, function or reducer can be named) and a check that the
result holds only dict, list, tuple, str, int, float, bool and None, at most 32 levels deep and with at most
`MAX_REPLY_ITEMS` references; shared containers are checked once, so the check is linear in the reply's size.

Requests are retried with exponential backoff on timeouts, connection errors and HTTP 5xx; other replies fail at
once. `timeout_s` is urllib's socket timeout: it bounds each blocking operation (connecting, sending, each read),
not the whole request, so a server that keeps sending a little at a time can hold one attempt longer.
"""

from __future__ import annotations

import http.client
import io
import math
import pickle
import reprlib
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from maskfocus.rewards.geneval import GenEvalResult, check_one_record_per_image

PLAIN_TYPES = (dict, list, tuple, str, int, float, bool, type(None))
"""The only types a server reply may contain."""

MAX_REPLY_BYTES = 64 * 2**20
"""Replies longer than this are refused (a reply is a few numbers per image)."""

MAX_REPLY_DEPTH = 32
"""Replies nested deeper than this are refused."""

MAX_REPLY_ITEMS = 1_000_000
"""Replies with more references to values than this (counting a shared value once per reference) are refused."""

_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxstring = 2, 8, 8, 4, 80
"""Bounded repr for error messages: a reply can share one list at every level, whose full repr is exponential."""


def server_problem(url: str, where: str, timeout_s: float = 3.0) -> str | None:
    """What stops a connection to the reward server at `url` (a TCP connect, no request), or None: checked before a
    model loads and samples, so that a wrong address or a server not started is one message up front rather than a
    failure after the sampling, once the retries run out."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout_s):
            return None
    except OSError as error:
        return (
            f"{where} {url}: no GenEval reward server answers there ({error}); start it (Flow-GRPO's "
            "app_geneval.py) or correct the address"
        )


class RewardServerError(RuntimeError):
    """The reward server failed, could not be reached in time, or replied with something other than scores."""


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that refuses every global lookup: only pickle's built-in plain-type opcodes can load."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} from a reward server reply: only plain types are allowed "
            f"(dict, list, tuple, str, int, float, bool, None)"
        )

    def persistent_load(self, pid: Any):
        raise pickle.UnpicklingError("refusing a persistent id in a reward server reply")


def _check_plain(value: Any) -> None:
    """Refuse a loaded reply that holds anything but PLAIN_TYPES, nests deeper than MAX_REPLY_DEPTH or holds more
    than MAX_REPLY_ITEMS references. Pickle's memo lets a few bytes reference one container from many places (a
    reply of under 200 bytes, [L, L] pairs 24 levels deep, has 2**24 paths), so each container is walked once and
    its height remembered: the work is linear in the number of references, which the item cap bounds."""
    heights: dict[int, int] = {}
    num_items = 0

    def height(node: Any, depth: int) -> int:
        nonlocal num_items
        num_items += 1
        if num_items > MAX_REPLY_ITEMS:
            raise pickle.UnpicklingError(f"reward server reply holds more than {MAX_REPLY_ITEMS} items")
        if depth > MAX_REPLY_DEPTH:  # also ends a cycle, whose containers are not yet in `heights`
            raise pickle.UnpicklingError(f"reward server reply nests deeper than {MAX_REPLY_DEPTH} levels")
        if not isinstance(node, PLAIN_TYPES):
            raise pickle.UnpicklingError(f"reward server reply holds a {type(node).__name__}; only plain types allowed")
        if not isinstance(node, (dict, list, tuple)):
            return 0
        if id(node) in heights:
            return heights[id(node)]
        children = [x for pair in node.items() for x in pair] if isinstance(node, dict) else node
        heights[id(node)] = 1 + max((height(child, depth + 1) for child in children), default=-1)
        return heights[id(node)]

    # a container first met near the top may also hang deep below another one: the root's height catches that
    if height(value, 0) > MAX_REPLY_DEPTH:
        raise pickle.UnpicklingError(f"reward server reply nests deeper than {MAX_REPLY_DEPTH} levels")


def safe_loads(data: bytes) -> Any:
    """Unpickle bytes that may come from anyone, allowing only plain types; raises pickle.UnpicklingError (also for
    bytes that are no pickle at all: an empty body raised EOFError, others ValueError, UnicodeDecodeError, ...)."""
    try:
        value = RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError:
        raise
    except Exception as error:
        raise pickle.UnpicklingError(f"not a pickle ({len(data)} bytes): {type(error).__name__}: {error}") from None
    _check_plain(value)
    return value


def encode_jpeg(image_HW3: np.ndarray) -> bytes:
    """A uint8 (H, W, 3) image as JPEG bytes, as Flow-GRPO sends it (PIL's default quality)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image_HW3)).save(buffer, format="JPEG")
    return buffer.getvalue()


class GenEvalClient:
    """Judges images by asking the reward server; one request per `batch_size` images."""

    name = "http"

    def __init__(
        self,
        url: str,
        timeout_s: float = 120.0,
        num_retries: int = 3,
        retry_backoff_s: float = 1.0,
        batch_size: int = 64,
        known_classes: Sequence[str] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = url
        self.timeout_s = timeout_s
        self.num_retries = num_retries
        self.retry_backoff_s = retry_backoff_s
        self.batch_size = batch_size
        self.known_classes = known_classes
        self.known_colors = None  # the server's colour classifier knows GenEval's
        self.sleep = sleep

    def judge(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> list[GenEvalResult]:
        """GenEval results from the server: correct = its `rewards`, score = its `scores`; no reasons."""
        check_one_record_per_image(len(images_BHWC), metadata_B)
        results: list[GenEvalResult] = []
        for start in range(0, len(metadata_B), self.batch_size):
            images = images_BHWC[start : start + self.batch_size]
            metadata = [dict(row) for row in metadata_B[start : start + self.batch_size]]
            payload = {"images": [encode_jpeg(image) for image in images], "meta_datas": metadata, "only_strict": False}
            reply = self.request(pickle.dumps(payload))
            results.extend(self._parse(reply, len(metadata)))
        return results

    def request(self, body: bytes) -> Any:
        """POST a pickled payload and return the safely unpickled reply, retrying transient failures."""
        last_error = ""
        for attempt in range(self.num_retries + 1):
            if attempt:
                self.sleep(self.retry_backoff_s * 2 ** (attempt - 1))
            try:
                return safe_loads(self._post(body))
            except _Transient as error:
                last_error = str(error)
            except pickle.UnpicklingError as error:
                raise RewardServerError(f"GenEval reward server {self.url}: unsafe or invalid reply: {error}") from None
        raise RewardServerError(
            f"GenEval reward server {self.url}: {self.num_retries + 1} attempt(s) failed "
            f"(socket timeout {self.timeout_s} s per operation); last error: {last_error}"
        )

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/octet-stream"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                data = response.read(MAX_REPLY_BYTES + 1)
        except urllib.error.HTTPError as error:
            with error:  # its socket, closed now rather than at garbage collection
                text = error.read(2000).decode("utf-8", "replace").strip()
            if error.code >= 500:
                raise _Transient(f"HTTP {error.code}: {text[-500:]}") from None
            raise RewardServerError(f"GenEval reward server {self.url}: HTTP {error.code}: {text[-500:]}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            raise _Transient(f"{type(error).__name__}: {getattr(error, 'reason', error)}") from None
        if len(data) > MAX_REPLY_BYTES:
            raise RewardServerError(f"GenEval reward server {self.url}: reply longer than {MAX_REPLY_BYTES} bytes")
        return data

    def _parse(self, reply: Any, count: int) -> list[GenEvalResult]:
        if not isinstance(reply, dict):
            raise RewardServerError(f"GenEval reward server {self.url}: reply is a {type(reply).__name__}, not a dict")
        columns = {}
        for key in ("rewards", "scores"):
            values = reply.get(key)
            ok = isinstance(values, list) and len(values) == count
            if not ok or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                raise RewardServerError(
                    f"GenEval reward server {self.url}: reply[{key!r}] must be a list of {count} numbers, "
                    f"got {_SHORT.repr(values)}"
                )
            columns[key] = values
        return [_result(reward, score) for reward, score in zip(columns["rewards"], columns["scores"], strict=True)]


def _result(reward: float, score: float) -> GenEvalResult:
    """One image's result from the server's numbers: score is its Flow-GRPO partial credit clipped to [0, 1] (see
    the module docstring). A NaN or infinite number (the server could not judge the image) gives score NaN, so
    every reward mode returns NaN and the image's group is skipped rather than scored 0."""
    if not (math.isfinite(reward) and math.isfinite(score)):
        return GenEvalResult(correct=False, score=math.nan, reasons=("the reward server returned no score",))
    return GenEvalResult(correct=reward >= 0.5, score=min(max(float(score), 0.0), 1.0), reasons=())


class _Transient(Exception):
    """A failure worth retrying: timeout, connection error, HTTP 5xx."""
