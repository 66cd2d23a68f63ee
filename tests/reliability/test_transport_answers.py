"""Answers no engine gives, through the fault proxy in front of the real engine: none of
them may read as success. (engine/transport.py and DockerEngine._call: found by a review of
the http.client transport; the SDK-based code before it raised on each.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

from sparkjoy.engine.docker_engine import DockerEngine
from sparkjoy.errors import EngineError
from sparkjoy.executor import Executor, Outcome
from sparkjoy.planner import plan as make_plan
from sparkjoy.policy import Policy

from tests.faultproxy import Rule, respond
from tests.fixtures import import_image, load_image, make_layer
from tests.integration.support import _empty_config, utcnow


def _engine(proxy) -> DockerEngine:
    return DockerEngine.connect(host=proxy.host)


@pytest.mark.parametrize("status", [200, 204, 301, 307])
def test_a_deletion_answered_without_a_body_is_no_deletion(proxy, clean_engine, status):
    image = import_image(clean_engine, 1000, seed=300 + status)
    proxy.add(Rule("DELETE", r"^/images/", respond(status, b"", {"Location": "/v1.41/images/x"})))
    with pytest.raises(EngineError):
        _engine(proxy).delete_image(image)
    with pytest.raises(EngineError):
        _engine(proxy).untag("nothing/here:1")


def test_a_run_whose_deletions_are_answered_without_deleting_reports_no_deletion(proxy, clean_engine):
    one_tag = import_image(clean_engine, 1000, "answered/one:1", seed=311)
    tagged = import_image(clean_engine, 1000, ["answered/two:1", "answered/two:2"], seed=312)
    proxy.add(Rule("DELETE", r"^/images/", respond(200, [])))  # a list, naming nothing deleted
    engine = _engine(proxy)
    the_plan = make_plan(engine.snapshot(), Policy(max_age=timedelta(seconds=-1), keep_recent=0),
                         now=utcnow() + timedelta(days=1))
    result = Executor(engine, workers=1).execute(the_plan)
    outcomes = {r.planned.id: r.outcome for r in result.results}
    assert outcomes == {one_tag: Outcome.FAILED, tagged: Outcome.FAILED}, result.results
    assert all(not r.removed_tags for r in result.results), "no tag was removed"
    assert not result.ok
    with closing(clean_engine.client()) as client:
        assert {i.id for i in client.images.list(all=True)} >= {one_tag, tagged}


def test_an_image_whose_inspect_answer_is_empty_stops_the_snapshot_instead_of_vanishing(proxy, clean_engine):
    base = [make_layer(1000, seed=321)]
    load_image(clean_engine, base, "answered/base:1")
    child = import_image(clean_engine, 1000, "answered/child:1", base=base, seed=322)
    proxy.add(Rule("GET", rf"^/images/{child}/json$", respond(200, b"")))
    with pytest.raises(EngineError, match="empty answer"):
        _engine(proxy).snapshot()


def test_an_interim_answer_is_a_bad_answer_and_the_next_call_reads_its_own(proxy, clean_engine):
    image = import_image(clean_engine, 1000, "answered/interim:1", seed=331)

    def interim_then_relay(exchange) -> None:
        exchange.send(b"HTTP/1.1 102 Processing\r\n\r\n")
        exchange.relay()

    proxy.add(Rule("GET", rf"^/images/{image}/json$", interim_then_relay, times=1))
    engine = _engine(proxy)
    with pytest.raises(EngineError, match="interim"):
        engine.image_state(image)
    assert engine.image_state(image).repo_tags == ("answered/interim:1",)
    assert engine.containers_of_image(image) == []


def _full_listener(family: int, address) -> socket.socket:
    """A listening socket that never accepts, its backlog filled: a connect to it hangs."""
    server = socket.socket(family, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(0)
    for _ in range(8):
        filler = socket.socket(family, socket.SOCK_STREAM)
        filler.setblocking(False)
        try:
            filler.connect(server.getsockname() if family == socket.AF_INET else address)
        except (BlockingIOError, InterruptedError, OSError):
            break
    return server


@pytest.mark.parametrize("family", ["unix", "tcp"])
def test_a_connect_that_times_out_is_an_unreachable_engine(family):
    """Exit 3 with the fix, as a refused connection: not a failed call to retry object by
    object (each waiting out the timeout)."""
    if family == "unix":
        path = str(Path(tempfile.mkdtemp(prefix="sjfull")) / "d.sock")
        server, host = _full_listener(socket.AF_UNIX, path), f"unix://{path}"
    else:
        server = _full_listener(socket.AF_INET, ("127.0.0.1", 0))
        host = f"tcp://127.0.0.1:{server.getsockname()[1]}"
    try:
        done = subprocess.run([sys.executable, "-m", "sparkjoy", "df", "--host", host, "--timeout", "1s"],
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
                              env={**os.environ, "SPARKJOY_CONFIG": str(_empty_config()),
                                   "XDG_STATE_HOME": tempfile.mkdtemp()})
    finally:
        server.close()
    assert done.returncode == 3, done.stderr
    assert "cannot reach" in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_an_image_whose_inspect_answer_is_no_object_stops_the_snapshot(proxy, clean_engine):
    image = import_image(clean_engine, 1000, "answered/null:1", seed=341)
    proxy.add(Rule("GET", rf"^/images/{image}/json$", respond(200, b"null")))
    with pytest.raises(EngineError, match="expected an object"):
        _engine(proxy).snapshot()
