"""A small Flow-GRPO-style GenEval reward server for tests: pickled requests in, scripted replies out."""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Action = Callable[[BaseHTTPRequestHandler, dict], None]


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    handler.send_response(status)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def scores(handler: BaseHTTPRequestHandler, request: dict) -> None:
    """What the reference server returns: here a prompt about dogs is correct, with partial score 0.75."""
    rewards = [1.0 if "dog" in m["prompt"] else 0.0 for m in request["meta_datas"]]
    partial = [0.75 if r else 0.25 for r in rewards]
    groups = {m["tag"]: rewards for m in request["meta_datas"]}
    body = {"scores": partial, "rewards": rewards, "strict_rewards": rewards, "group_rewards": groups}
    reply(handler, 200, pickle.dumps({**body, "group_strict_rewards": groups}))


def server_error(handler: BaseHTTPRequestHandler, request: dict) -> None:
    reply(handler, 500, b"Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory")


def slow(seconds: float) -> Action:
    def action(handler: BaseHTTPRequestHandler, request: dict) -> None:
        time.sleep(seconds)
        scores(handler, request)

    return action


def raw(status: int, body: bytes) -> Action:
    return lambda handler, request: reply(handler, status, body)


class ScriptedServer(ThreadingHTTPServer):
    """Answers the n-th POST with actions[n] (the last action repeats) and records every request."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, actions: list[Action]):
        self.actions = actions
        self.requests: list[dict] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request, client_address) -> None:
        pass  # a client that timed out leaves a broken pipe behind; expected here


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        request = pickle.loads(self.rfile.read(int(self.headers["Content-Length"])))  # the test's own client
        self.server.requests.append(request)
        action = self.server.actions[min(len(self.server.requests), len(self.server.actions)) - 1]
        action(self, request)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def running(*actions: Action) -> Iterator[ScriptedServer]:
    """Serve in a background thread until the block ends."""
    server = ScriptedServer(list(actions))
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
