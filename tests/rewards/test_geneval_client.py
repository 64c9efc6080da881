"""Tests for maskfocus.rewards.geneval_client against a small Flow-GRPO-style reward server run by the test:
wire format, restricted unpickling (a malicious reply is refused and never runs), timeouts and retries."""

from __future__ import annotations

import io
import math
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from types import SimpleNamespace

import numpy as np
import pytest
from fake_reward_server import ScriptedServer, raw, running, scores, server_error, slow
from PIL import Image
from support import refusing_port

from maskfocus.rewards.geneval_client import GenEvalClient, RewardServerError, safe_loads

ROWS = [
    {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
    {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
    {"tag": "counting", "include": [{"class": "dog", "count": 2}], "prompt": "a photo of two dogs"},
]


@pytest.fixture
def serve() -> Iterator[Callable[..., ScriptedServer]]:
    with ExitStack() as stack:
        yield lambda *actions: stack.enter_context(running(*actions))


def _client(server: ScriptedServer, delays: list[float] | None = None, **kwargs) -> GenEvalClient:
    return GenEvalClient(server.url, sleep=(delays if delays is not None else []).append, **kwargs)


def _images(count: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 16, 24, 3), dtype=np.uint8)


def test_sends_jpeg_batches_with_metadata_and_reads_rewards_and_scores(serve):
    server = serve(scores)
    results = _client(server, batch_size=2).judge(_images(3), ROWS)
    assert [r.correct for r in results] == [True, False, True]
    assert [r.score for r in results] == [0.75, 0.25, 0.75]
    assert [len(r["images"]) for r in server.requests] == [2, 1]
    first = server.requests[0]
    assert set(first) == {"images", "meta_datas", "only_strict"} and first["only_strict"] is False
    assert first["meta_datas"] == ROWS[:2]
    decoded = Image.open(io.BytesIO(first["images"][0]))
    assert decoded.format == "JPEG" and decoded.size == (24, 16)
    with pytest.raises(ValueError, match="4 images but 3 metadata records"):  # the fourth image was dropped
        _client(server, batch_size=2).judge(_images(4), ROWS)
    assert len(server.requests) == 2


def test_an_image_the_server_could_not_score_gives_nan_in_every_mode(serve):
    """A NaN from the server must skip the image's group, not score it 0 (binary) or NaN only in partial mode."""
    from maskfocus.rewards.combined import GenEvalReward

    body = {"rewards": [1.0, float("nan"), 0.0], "scores": [1.0, float("nan"), 0.25]}
    results = _client(serve(raw(200, pickle.dumps(body)))).judge(_images(3), ROWS)
    assert [r.correct for r in results] == [True, False, False]
    assert results[1].reasons == ("the reward server returned no score",)
    for mode in ("binary", "partial"):
        term = GenEvalReward(mode, judge=SimpleNamespace(name="http", known_classes=()))
        values = term.values(results).tolist()
        assert values[0] == 1.0 and math.isnan(values[1]) and values[2] == (0.0 if mode == "binary" else 0.25)


def test_http_partial_scores_are_clipped_to_0_1_and_binary_is_unchanged(serve):
    """Flow-GRPO's partial score is 1 - |count - found| / count per include clause: negative with many extras."""
    from maskfocus.rewards.combined import GenEvalReward

    body = {"rewards": [0.0, 1.0, 0.0], "scores": [-1.5, 1.25, 0.25]}
    results = _client(serve(raw(200, pickle.dumps(body)))).judge(_images(3), ROWS)
    assert [r.score for r in results] == [0.0, 1.0, 0.25]
    judge = SimpleNamespace(name="http", known_classes=())
    assert GenEvalReward("partial", judge=judge).values(results).tolist() == [0.0, 1.0, 0.25]
    assert GenEvalReward("binary", judge=judge).values(results).tolist() == [0.0, 1.0, 0.0]


def _shared_tower(levels: int, bottom: object) -> list:
    """[L, L] with L = [L', L'] ... down to `bottom`: a few bytes pickled, 2**levels paths through it."""
    node = [bottom]
    for _ in range(levels):
        node = [node, node]
    return node


def test_a_deeply_shared_reply_is_checked_fast():
    value = {"scores": _shared_tower(30, 0.5)}  # 2**30 leaves: a walk of every path would take minutes
    data = pickle.dumps(value)
    start = time.perf_counter()
    loaded = safe_loads(data)
    assert time.perf_counter() - start < 10.0 and len(data) < 250
    assert loaded["scores"][0] is loaded["scores"][1]  # the sharing survives; nothing was copied
    node = loaded["scores"]
    for _ in range(30):
        node = node[1]
    assert node == [0.5]


def test_a_disallowed_type_inside_a_shared_node_is_still_refused():
    data = pickle.dumps({"scores": _shared_tower(30, b"bytes")})
    start = time.perf_counter()
    with pytest.raises(pickle.UnpicklingError, match="holds a bytes"):
        safe_loads(data)
    assert time.perf_counter() - start < 10.0  # 2**30 paths: minutes if each were walked


def test_depth_is_measured_along_the_longest_path_through_shared_nodes():
    """A chain of 40 nested lists whose links are all also listed at the top: each link is met first at depth 1,
    but the chain is still 40 deep."""
    links = [[0.5]]
    for _ in range(40):
        links.append([links[-1]])
    with pytest.raises(pickle.UnpicklingError, match="nests deeper than 32 levels"):
        safe_loads(pickle.dumps(links[::-1]))
    assert safe_loads(pickle.dumps(links[:31]))[-1][0] == links[29]  # 32 levels is allowed


def test_huge_and_cyclic_replies_are_refused_quickly():
    cycle: list = []
    cycle.append(cycle)
    for value, message in [([[0.0]] * 1_000_001, "holds more than 1000000 items"), (cycle, "nests deeper than 32")]:
        data = pickle.dumps(value)
        start = time.perf_counter()
        with pytest.raises(pickle.UnpicklingError, match=message):
            safe_loads(data)
        assert time.perf_counter() - start < 10.0


def test_a_malformed_shared_reply_is_reported_with_a_short_description(serve):
    """The error message must not repr the whole structure: its full repr would have 2**30 leaves."""
    body = {"rewards": _shared_tower(30, 1.0), "scores": [0.5]}
    start = time.perf_counter()
    with pytest.raises(RewardServerError, match=r"reply\['rewards'\] must be a list of 1 numbers, got \[\[\[\.\.\.\]"):
        _client(serve(raw(200, pickle.dumps(body)))).judge(_images(1), ROWS[:1])
    assert time.perf_counter() - start < 10.0  # a repr of its 2**30 leaves would not end


def test_a_malicious_pickle_reply_is_refused_and_never_runs(serve, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    payload = pickle.dumps({"scores": [Exploit()], "rewards": [1.0]})
    server = serve(raw(200, payload))
    with pytest.raises(RewardServerError, match=r"unsafe or invalid reply: refusing to load builtins\.exec"):
        _client(server, num_retries=3).judge(_images(1), ROWS[:1])
    assert not marker.exists() and len(server.requests) == 1  # refused at once, not retried
    pickle.loads(payload)  # the full unpickler would have run it
    assert marker.read_text() == "pwned"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"scores": [np.float64(0.5)]}, "refusing to load numpy"),
        ({"scores": {0.5}}, "holds a set"),
        ({"scores": [b"bytes"]}, "holds a bytes"),
        ({"scores": [complex(1, 2)]}, "refusing to load builtins.complex"),
    ],
)
def test_only_plain_types_are_accepted(value, message):
    with pytest.raises(pickle.UnpicklingError, match=message):
        safe_loads(pickle.dumps(value))


def test_plain_replies_load_unchanged():
    value = {"scores": [0.5, 1], "rewards": (1.0, None), "group_rewards": {"colors": [True, -10.0]}, "x": "é"}
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert safe_loads(pickle.dumps(value, protocol=protocol)) == value


def test_a_timed_out_request_is_retried(serve):
    delays: list[float] = []
    server = serve(slow(4.0), scores)
    start = time.perf_counter()
    results = _client(server, delays, timeout_s=0.3, num_retries=1, retry_backoff_s=0.25).judge(_images(1), ROWS[:1])
    assert results[0].correct and len(server.requests) == 2 and delays == [0.25]
    assert time.perf_counter() - start < 3.5  # the client did not wait for the slow reply


def test_a_timeout_without_retries_raises(serve):
    server = serve(slow(1.5))
    expected = r"1 attempt\(s\) failed \(socket timeout 0\.3 s per operation\); last error: .*timed out"
    with pytest.raises(RewardServerError, match=expected):
        _client(server, timeout_s=0.3, num_retries=0).judge(_images(1), ROWS[:1])


def test_server_errors_are_retried_with_exponential_backoff(serve):
    delays: list[float] = []
    server = serve(server_error, server_error, scores)
    results = _client(server, delays, num_retries=3, retry_backoff_s=0.5).judge(_images(2), ROWS[:2])
    assert [r.correct for r in results] == [True, False]
    assert delays == [0.5, 1.0] and len(server.requests) == 3


def test_exhausted_retries_report_the_last_error(serve):
    server = serve(server_error)
    with pytest.raises(RewardServerError, match=r"(?s)3 attempt\(s\) failed.*HTTP 500: .*CUDA out of memory"):
        _client(server, num_retries=2).judge(_images(1), ROWS[:1])
    assert len(server.requests) == 3


def test_client_errors_are_not_retried(serve):
    delays: list[float] = []
    server = serve(raw(404, b"no such route"))
    with pytest.raises(RewardServerError, match="HTTP 404: no such route"):
        _client(server, delays, num_retries=3).judge(_images(1), ROWS[:1])
    assert delays == [] and len(server.requests) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1.0], "reply is a list, not a dict"),
        ({"scores": [0.5]}, r"reply\['rewards'\] must be a list of 1 numbers"),
        ({"scores": [0.5, 0.5], "rewards": [1.0, 1.0]}, r"reply\['rewards'\] must be a list of 1 numbers"),
        ({"scores": ["high"], "rewards": [1.0]}, r"reply\['scores'\] must be a list of 1 numbers"),
    ],
)
def test_malformed_replies_are_clear_errors(serve, body, message):
    server = serve(raw(200, pickle.dumps(body)))
    with pytest.raises(RewardServerError, match=message):
        _client(server).judge(_images(1), ROWS[:1])


@pytest.mark.parametrize("body", [b"", b"\x80\x31"])
def test_a_reply_that_is_no_pickle_is_a_clear_error_naming_the_server(serve, body):
    """An empty body raised a bare EOFError (other bytes ValueError, UnicodeDecodeError, ...), without the URL."""
    server = serve(raw(200, body))
    with pytest.raises(RewardServerError, match=rf"reward server {server.url}: unsafe or invalid reply: not a pickle"):
        _client(server).judge(_images(1), ROWS[:1])


def test_an_unreachable_server_is_retried_then_reported():
    delays: list[float] = []
    with refusing_port() as port:
        client = GenEvalClient(f"http://127.0.0.1:{port}", num_retries=1, retry_backoff_s=0.1, sleep=delays.append)
        with pytest.raises(RewardServerError, match=r"2 attempt\(s\) failed.*URLError"):
            client.judge(_images(1), ROWS[:1])
    assert delays == [0.1]


def test_the_server_probe_passes_a_listening_server_and_names_a_closed_port(serve):
    from maskfocus.rewards.geneval_client import server_problem

    server = serve(scores)  # the probe connects and sends nothing: the action is never used
    assert server_problem(server.url, "url") is None
    with refusing_port() as port:
        problem = server_problem(f"http://127.0.0.1:{port}", "the detector's url")
    assert problem.startswith(f"the detector's url http://127.0.0.1:{port}: no GenEval reward server answers there")


def test_eval_names_an_unreachable_server_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """A dead server cost the model's load, the sampling and the retries before its error."""
    import json

    from support import cli_error

    import maskfocus.models

    monkeypatch.setattr(maskfocus.models, "load_generator", lambda *args, **kwargs: pytest.fail("model loaded"))
    (metadata := tmp_path / "dog.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    with refusing_port() as port:
        args = ["--detector", "http", "--server-url", f"http://127.0.0.1:{port}", "--metadata", str(metadata)]
        error = cli_error(capsys, "eval", *args, "--no-clip")
    assert f"http://127.0.0.1:{port}: no GenEval reward server answers there" in error
