"""Client of a Flow-GRPO-compatible GenEval reward server (the original Mask2Former + CLIP evaluator over HTTP).

Wire format of Flow-GRPO's `geneval_score` and its reward server (`app_geneval.py`): one POST to the server's
root with a pickled dict {"images": [JPEG bytes], "meta_datas": [GenEval metadata dict], "only_strict": bool};
the reply (HTTP 200) is a pickled dict {"scores", "rewards", "strict_rewards", "group_rewards",
"group_strict_rewards"}: per image, "rewards" is GenEval correctness (1.0 / 0.0), "strict_rewards" the same with
exact counts, "scores" the server's partial credit; an error is HTTP 500 with the traceback as text.

A pickle from the network can run arbitrary code when loaded, so replies are read with `safe_loads`: an
Unpickler that resolves no global at all (so no class, function or reducer can be named) and a check that the
result holds only dict, list, tuple, str, int, float, bool and None. Requests time out and are retried with
exponential backoff on timeouts, connection errors and HTTP 5xx; other replies fail at once.
"""

from __future__ import annotations

import http.client
import io
import math
import pickle
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from PIL import Image

from maskfocus.rewards.geneval import GenEvalResult

PLAIN_TYPES = (dict, list, tuple, str, int, float, bool, type(None))
"""The only types a server reply may contain."""

MAX_REPLY_BYTES = 64 * 2**20
"""Replies longer than this are refused (a reply is a few numbers per image)."""


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


def _check_plain(value: Any, depth: int = 0) -> None:
    if depth > 32:
        raise pickle.UnpicklingError("reward server reply nests deeper than 32 levels")
    if not isinstance(value, PLAIN_TYPES):
        raise pickle.UnpicklingError(f"reward server reply holds a {type(value).__name__}; only plain types allowed")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_plain(key, depth + 1)
            _check_plain(item, depth + 1)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_plain(item, depth + 1)


def safe_loads(data: bytes) -> Any:
    """Unpickle bytes that may come from anyone, allowing only plain types; raises pickle.UnpicklingError."""
    value = RestrictedUnpickler(io.BytesIO(data)).load()
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
        self.sleep = sleep

    def judge(self, images_BHWC: np.ndarray, metadata_B: Sequence[dict[str, Any]]) -> list[GenEvalResult]:
        """GenEval results from the server: correct = its `rewards`, score = its `scores`; no reasons."""
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
            f"(timeout {self.timeout_s} s each); last error: {last_error}"
        )

    def _post(self, body: bytes) -> bytes:
        request = urllib.request.Request(
            self.url, data=body, method="POST", headers={"Content-Type": "application/octet-stream"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                data = response.read(MAX_REPLY_BYTES + 1)
        except urllib.error.HTTPError as error:
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
                    f"got {values!r:.200}"
                )
            columns[key] = values
        return [_result(reward, score) for reward, score in zip(columns["rewards"], columns["scores"], strict=True)]


def _result(reward: float, score: float) -> GenEvalResult:
    """One image's result from the server's numbers; a NaN or infinite one (the server could not judge the image)
    gives score NaN, so every reward mode returns NaN and the image's group is skipped rather than scored 0."""
    if not (math.isfinite(reward) and math.isfinite(score)):
        return GenEvalResult(correct=False, score=math.nan, reasons=("the reward server returned no score",))
    return GenEvalResult(correct=reward >= 0.5, score=float(score), reasons=())


class _Transient(Exception):
    """A failure worth retrying: timeout, connection error, HTTP 5xx."""
