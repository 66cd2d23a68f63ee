"""Review tests (7b0fcf3): answers the new transport / _call take as success.

A tiny fake engine on a unix socket answers raw bytes, so each case is exact. The tests
assert the behaviour the old SDK-based code had (or the safe one); they FAIL on 2befd74.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
from typing import Callable

import pytest

from sparkjoy.engine.connect import Connection
from sparkjoy.engine.docker_engine import DockerEngine
from sparkjoy.errors import EngineError

IMAGE = "sha256:" + "a" * 64


def _answer(status: str, body: bytes = b"", headers: str = "") -> bytes:
    length = "" if status.startswith(("1", "204", "304")) else f"Content-Length: {len(body)}\r\n"
    return f"HTTP/1.1 {status}\r\n{length}{headers}\r\n".encode() + body


VERSION = _answer("200 OK", json.dumps({"ApiVersion": "1.41", "Version": "20.10"}).encode(),
                  "Content-Type: application/json\r\n")


class FakeEngine:
    """Answers each request with ``answer(method, target)``: bytes, or a list of (delay, bytes)."""

    def __init__(self, answer: Callable[[str, str], object]):
        self.answer = answer
        self.requests: list[tuple[str, str]] = []
        self.dir = tempfile.mkdtemp(prefix="sjrv")
        self.path = os.path.join(self.dir, "e.sock")
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.path)
        self.server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            self._serve_requests(client)
        except OSError:
            pass

    def _serve_requests(self, client: socket.socket) -> None:
        buffer = b""
        with client:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = client.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
                self.requests.append((method, target))
                reply = VERSION if target == "/version" else self.answer(method, target)
                parts = reply if isinstance(reply, list) else [(0, reply)]
                for wait, data in parts:
                    time.sleep(wait)
                    client.sendall(data)

    def engine(self) -> DockerEngine:
        return DockerEngine(Connection(f"unix://{self.path}", "--host"), timeout=5)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def fake():
    made: list[FakeEngine] = []

    def make(answer):
        made.append(FakeEngine(answer))
        return made[-1]

    yield make
    for f in made:
        f.close()


@pytest.mark.parametrize("status", ["200 OK", "204 No Content", "301 Moved Permanently", "307 Temporary Redirect"])
def test_a_delete_answered_without_a_body_is_no_deletion(fake, status):
    # The old code (SDK remove_image -> _result(json=True)) raised "bad answer" on an empty
    # body, and requests followed a redirect. Now `_call` returns None, `delete_image`
    # returns [] and Executor._image reports DELETED (executor.py:321-328) without a check.
    engine = fake(lambda method, target: _answer(status, headers="Location: /v1.41/images/x\r\n")).engine()
    with pytest.raises(EngineError):
        engine.delete_image(IMAGE)


def test_an_untag_answered_without_a_body_is_no_untag(fake):
    engine = fake(lambda method, target: _answer("200 OK")).engine()
    with pytest.raises(EngineError):
        engine.untag("localhost:5000/a/b:1")


def test_an_interim_1xx_answer_is_not_taken_as_the_answer_nor_left_in_the_pool(fake):
    # http.client skips only 100 Continue: a 102/103 comes back as the final answer (length 0),
    # the connection goes back to the pool with the real answer still to come, and the next
    # request on it reads the DELETE's answer as its own.
    deleted = json.dumps([{"Deleted": IMAGE}]).encode()
    inspect = json.dumps({"Id": IMAGE, "RepoTags": ["app:1"], "Metadata": {}}).encode()

    def answer(method, target):
        if method == "DELETE":
            return [(0, _answer("102 Processing")), (0.3, _answer("200 OK", deleted))]
        return _answer("200 OK", inspect)

    engine = fake(answer).engine()
    try:
        result = engine.delete_image(IMAGE)
    except EngineError:
        return  # the safe behaviour: an interim answer is a bad answer
    # Not an error: then at least the DELETE's real answer must be what delete_image returns,
    # and the next call must read its own answer.
    state = None
    try:
        state = engine.image_state(IMAGE)
    except EngineError as error:
        pytest.fail(f"delete_image returned {result!r}; the next call then read the DELETE's answer: {error}")
    assert result == [{"Deleted": IMAGE}] and state is not None


def test_a_delete_is_never_sent_twice(fake):
    # A kept-alive connection the engine closes as a DELETE goes out must not be retried.
    calls = []

    def answer(method, target):
        calls.append(method)
        return _answer("200 OK", b"[]")

    f = fake(answer)
    engine = f.engine()
    engine.delete_image(IMAGE)
    assert calls.count("DELETE") == 1


def test_the_executor_reports_deleted_when_the_delete_answer_is_empty(fake):
    # End to end: a dangling image, the engine (or a proxy in front of it) answers the
    # DELETE with an empty 200; the image is still there, the run says DELETED and ok.
    from sparkjoy.executor import Executor, Outcome
    from sparkjoy.model import Kind, Snapshot
    from sparkjoy.planner import Decision, Plan, PlannedObject
    from sparkjoy.policy import Policy
    from datetime import datetime, timezone

    inspect = json.dumps({"Id": IMAGE, "RepoTags": [], "Metadata": {}}).encode()
    df = json.dumps({"LayersSize": 100, "Images": [], "Containers": [], "Volumes": [], "BuildCache": []}).encode()

    def answer(method, target):
        if method == "DELETE":
            return _answer("200 OK")
        if target.startswith("/v1.41/system/df"):
            return _answer("200 OK", df)
        return _answer("200 OK", inspect)

    engine = fake(answer).engine()
    now = datetime.now(timezone.utc)
    planned = PlannedObject(Kind.IMAGE, IMAGE, (), Decision.DELETE, "review", bytes=100)
    plan = Plan((planned,), now, Policy(), Snapshot(taken_at=now, images=(), containers=(), build_cache=(),
                                                    volumes=(), layers_size=100))
    result = Executor(engine, workers=1).execute(plan)
    outcomes = [r.outcome for r in result.results]
    assert outcomes != [Outcome.DELETED], "nothing was deleted, yet the run reports the image DELETED"
