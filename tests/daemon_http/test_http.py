"""The daemon's HTTP endpoints, served for real on a free loopback port and asked with urllib."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from sparkjoy.daemon.http import (
    DEFAULT_LISTEN,
    EngineContact,
    HookAnswer,
    HookError,
    ServiceServer,
    is_loopback,
    parse_listen,
)
from sparkjoy.daemon.metrics import Metrics
from sparkjoy.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """A hook that records each payload it is given and answers as told."""

    def __init__(self, answer: Any = None, error: BaseException | None = None):
        self.answer = answer
        self.error = error
        self.payloads: list[dict[str, Any]] = []

    def __call__(self, payload: dict[str, Any]) -> Any:
        self.payloads.append(payload)
        if self.error:
            raise self.error
        return self.answer


class Readiness:
    def __init__(self) -> None:
        self.answer: tuple[bool, str] = (False, "engine not reached yet")

    def __call__(self) -> tuple[bool, str]:
        return self.answer


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def hooks() -> dict[str, Recorder]:
    return {"start": Recorder(), "finish": Recorder({"builds_in_flight": 0}), "prune": Recorder()}


@pytest.fixture
def server(readiness: Readiness, hooks: dict[str, Recorder]) -> Iterator[ServiceServer]:
    service = ServiceServer(
        Metrics(process_metrics=False),
        readiness,
        port=0,
        on_build_start=hooks["start"],
        on_build_finish=hooks["finish"],
        on_prune=hooks["prune"],
    )
    service.start()
    try:
        yield service
    finally:
        service.stop()


def call(
    server: ServiceServer,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(server.url + path, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def post_json(server: ServiceServer, path: str, payload: Any) -> tuple[int, Any]:
    status, _, body = call(
        server, path, "POST", json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    return status, json.loads(body)


# -- health, readiness, metrics ------------------------------------------------------------


def test_healthz_answers_200_while_the_process_is_alive(server: ServiceServer) -> None:
    status, headers, body = call(server, "/healthz")
    assert (status, body) == (200, b"ok\n")
    assert headers["Content-Type"].startswith("text/plain")


def test_readyz_is_503_with_the_reason_until_the_engine_is_reached(
    server: ServiceServer, readiness: Readiness
) -> None:
    status, _, body = call(server, "/readyz")
    assert (status, body) == (503, b"not ready: engine not reached yet\n")

    readiness.answer = (True, "engine reached 3s ago")
    status, _, body = call(server, "/readyz")
    assert (status, body) == (200, b"ready: engine reached 3s ago\n")


def test_readyz_is_503_when_the_readiness_check_itself_raises() -> None:
    def broken() -> tuple[bool, str]:
        raise RuntimeError("state lock poisoned")

    with ServiceServer(Metrics(process_metrics=False), broken, port=0) as service:
        status, _, body = call(service, "/readyz")
    assert status == 503
    assert b"check failed: RuntimeError: state lock poisoned" in body


def test_healthz_follows_the_liveness_check_when_one_is_given() -> None:
    alive = [(True, "")]
    with ServiceServer(
        Metrics(process_metrics=False), lambda: (True, ""), port=0, liveness=lambda: alive[0]
    ) as service:
        assert call(service, "/healthz")[0] == 200
        alive[0] = (False, "supervisor loop silent for 900s")
        status, _, body = call(service, "/healthz")
    assert (status, body) == (503, b"not alive: supervisor loop silent for 900s\n")


def test_metrics_are_served_in_prometheus_text_format(server: ServiceServer) -> None:
    server.metrics.set_builds_in_flight(4)
    status, headers, body = call(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert b"\nsparkjoy_builds_in_flight 4.0\n" in body
    assert b'sparkjoy_prune_runs_total' in body or b"# TYPE sparkjoy_prune_runs counter" in body


def test_a_query_string_does_not_change_the_route(server: ServiceServer) -> None:
    assert call(server, "/healthz?verbose=1")[0] == 200


def test_head_on_a_get_endpoint_answers_headers_without_a_body(server: ServiceServer) -> None:
    status, headers, body = call(server, "/healthz", "HEAD")
    assert (status, body) == (200, b"")
    assert headers["Content-Length"] == "3"


# -- routing errors ----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/health", "/healthz/", "/metrics/x", "/build", "/build/started"])
def test_unknown_paths_answer_404(server: ServiceServer, path: str) -> None:
    assert call(server, path)[0] == 404
    assert call(server, path, "POST", b"{}", {"Content-Type": "application/json"})[0] == 404


@pytest.mark.parametrize(
    ("path", "method", "allow"),
    [
        ("/healthz", "POST", "GET, HEAD"),
        ("/metrics", "DELETE", "GET, HEAD"),
        ("/readyz", "PUT", "GET, HEAD"),
        ("/prune", "GET", "POST"),
        ("/build/start", "PUT", "POST"),
        ("/build/finish", "OPTIONS", "POST"),
    ],
)
def test_a_known_path_with_the_wrong_method_answers_405_with_allow(
    server: ServiceServer, path: str, method: str, allow: str
) -> None:
    status, headers, _ = call(server, path, method)
    assert status == 405
    assert headers["Allow"] == allow


def test_a_hook_left_unset_makes_its_path_404() -> None:
    with ServiceServer(Metrics(process_metrics=False), lambda: (True, ""), port=0) as service:
        status, _, _ = call(service, "/prune", "POST", b"{}", {"Content-Type": "application/json"})
    assert status == 404


# -- hooks -------------------------------------------------------------------------------


def test_build_start_hands_the_json_payload_to_its_hook(server: ServiceServer, hooks: dict[str, Recorder]) -> None:
    status, body = post_json(server, "/build/start", {"id": "ci-42", "images": ["app:dev"]})
    assert (status, body) == (202, {"accepted": True})
    assert hooks["start"].payloads == [{"id": "ci-42", "images": ["app:dev"]}]
    assert hooks["finish"].payloads == [] and hooks["prune"].payloads == []


def test_a_hook_that_returns_a_dict_answers_200_with_it(server: ServiceServer, hooks: dict[str, Recorder]) -> None:
    assert post_json(server, "/build/finish", {"id": "ci-42"}) == (200, {"builds_in_flight": 0})
    assert hooks["finish"].payloads == [{"id": "ci-42"}]


def test_an_empty_body_reaches_the_hook_as_an_empty_object(server: ServiceServer, hooks: dict[str, Recorder]) -> None:
    status, _, _ = call(server, "/prune", "POST", b"", {"Content-Type": "application/json"})
    assert status == 202
    assert hooks["prune"].payloads == [{}]


def test_a_hook_answer_sets_the_status(server: ServiceServer, hooks: dict[str, Recorder]) -> None:
    hooks["prune"].answer = HookAnswer(409, {"error": "a prune is already running"})
    assert post_json(server, "/prune", {}) == (409, {"error": "a prune is already running"})


def test_a_hook_error_refuses_with_its_status_and_message(server: ServiceServer, hooks: dict[str, Recorder]) -> None:
    hooks["finish"].error = HookError(400, "unknown build id ci-7")
    assert post_json(server, "/build/finish", {"id": "ci-7"}) == (400, {"error": "unknown build id ci-7"})


def test_a_hook_that_crashes_costs_one_500_and_the_server_carries_on(
    server: ServiceServer, hooks: dict[str, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    hooks["prune"].error = KeyError("bug")
    with caplog.at_level(logging.ERROR, logger="sparkjoy.daemon.http"):
        status, _, body = call(server, "/prune", "POST", b"{}", {"Content-Type": "application/json"})
    assert (status, body) == (500, b"internal error\n")
    assert "POST /prune failed" in caplog.text
    assert call(server, "/healthz")[0] == 200


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{}", {"Content-Type": "text/plain"}, 415),
        (b"{}", {"Content-Type": "application/x-www-form-urlencoded"}, 415),
        (b"{}", {}, 415),
        (b"{}", {"Content-Type": "application/json", "Origin": "http://evil.example"}, 403),
        (b"not json", {"Content-Type": "application/json"}, 400),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400),
        (b"\xff\xfe", {"Content-Type": "application/json"}, 400),
        (b"{" + b" " * 70_000 + b"}", {"Content-Type": "application/json"}, 413),
    ],
    ids=["text", "form", "no-type", "from-a-web-page", "not-json", "not-an-object", "not-utf8", "too-big"],
)
def test_a_post_that_a_browser_could_forge_or_that_is_malformed_never_reaches_the_hook(
    server: ServiceServer, hooks: dict[str, Recorder], body: bytes, headers: dict[str, str], status: int
) -> None:
    answer_status, answer_headers, answer_body = call(server, "/prune", "POST", body, headers)
    assert answer_status == status
    assert "error" in json.loads(answer_body)
    assert hooks["prune"].payloads == []


def test_json_with_a_charset_parameter_is_accepted(server: ServiceServer, hooks: dict[str, Recorder]) -> None:
    status, _, _ = call(server, "/prune", "POST", b'{"why": "ci"}', {"Content-Type": "application/json; charset=utf-8"})
    assert status == 202
    assert hooks["prune"].payloads == [{"why": "ci"}]


def test_requests_on_one_kept_alive_connection_are_all_answered(server: ServiceServer) -> None:
    host, port = server.address
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        for path in ("/healthz", "/metrics", "/healthz"):
            connection.request("GET", path)
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 200
    finally:
        connection.close()


def test_requests_are_served_concurrently_while_a_hook_is_slow(server: ServiceServer, hooks: dict[str, Recorder]) -> None:
    release = threading.Event()
    entered = threading.Event()

    def slow(payload: dict[str, Any]) -> None:
        entered.set()
        release.wait(10)

    server.hooks["/prune"] = slow
    worker = threading.Thread(target=post_json, args=(server, "/prune", {}))
    worker.start()
    try:
        assert entered.wait(10)
        assert call(server, "/healthz")[0] == 200  # not stuck behind the slow hook
    finally:
        release.set()
        worker.join(10)


# -- lifecycle -----------------------------------------------------------------------------


def test_stop_closes_the_port_and_joins_the_thread(readiness: Readiness) -> None:
    service = ServiceServer(Metrics(process_metrics=False), readiness, port=0)
    service.start()
    host, port = service.address
    assert port != 0 and service.running
    thread = service._thread

    service.stop()

    assert not service.running and thread is not None and not thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection((host, port), timeout=2).close()
    service.stop()  # a second stop is harmless


def test_stop_waits_for_a_request_in_progress_to_be_answered(readiness: Readiness) -> None:
    release = threading.Event()
    entered = threading.Event()
    answers: list[tuple[int, Any]] = []

    def slow(payload: dict[str, Any]) -> dict[str, Any]:
        entered.set()
        release.wait(10)
        return {"done": True}

    service = ServiceServer(Metrics(process_metrics=False), readiness, port=0, on_prune=slow)
    service.start()
    worker = threading.Thread(target=lambda: answers.append(post_json(service, "/prune", {})))
    worker.start()
    assert entered.wait(10)
    threading.Timer(0.3, release.set).start()

    started = time.monotonic()
    service.stop(timeout=10)

    assert time.monotonic() - started >= 0.2
    worker.join(10)
    assert answers == [(200, {"done": True})]


def test_a_port_already_in_use_is_a_config_error_naming_the_address(readiness: Readiness) -> None:
    with ServiceServer(Metrics(process_metrics=False), readiness, port=0) as first:
        port = first.address[1]
        second = ServiceServer(Metrics(process_metrics=False), readiness, port=port)
        with pytest.raises(ConfigError, match=f"127.0.0.1:{port}: cannot listen there"):
            second.start()


def test_it_listens_on_loopback_by_default_and_logs_no_warning(
    readiness: Readiness, caplog: pytest.LogCaptureFixture
) -> None:
    service = ServiceServer(Metrics(process_metrics=False), readiness, port=0)
    assert service.host == "127.0.0.1"
    with caplog.at_level(logging.INFO, logger="sparkjoy.daemon.http"), service:
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert DEFAULT_LISTEN.startswith("127.0.0.1:")


def test_listening_on_all_interfaces_is_allowed_but_warned_about(
    readiness: Readiness, caplog: pytest.LogCaptureFixture
) -> None:
    service = ServiceServer(Metrics(process_metrics=False), readiness, host="0.0.0.0", port=0)
    with caplog.at_level(logging.WARNING, logger="sparkjoy.daemon.http"), service:
        # Reached through loopback only: a test never sends traffic anywhere else.
        status, _, _ = call_at("127.0.0.1", service.address[1], "/healthz")
    assert status == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "not a loopback address" in warnings[0] and "POST /prune" in warnings[0]


def test_it_listens_on_ipv6_loopback_when_asked(readiness: Readiness) -> None:
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6 support")
    service = ServiceServer(Metrics(process_metrics=False), readiness, host="::1", port=0)
    try:
        service.start()
    except ConfigError as error:
        pytest.skip(f"no IPv6 loopback on this machine: {error}")
    try:
        assert service.url.startswith("http://[::1]:")
        assert call(service, "/healthz")[0] == 200
    finally:
        service.stop()


def call_at(host: str, port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as answer:
        return answer.status, dict(answer.headers), answer.read()


# -- engine contact and --listen -----------------------------------------------------------


def test_engine_contact_is_ready_only_within_its_max_age_and_not_after_a_loss() -> None:
    now = [1000.0]
    contact = EngineContact(max_age_seconds=60, clock=lambda: now[0])
    assert contact.readiness() == (False, "engine not reached yet")
    contact.reached()
    now[0] += 59
    assert contact.readiness() == (True, "engine reached 59s ago")
    now[0] += 2
    assert contact.readiness() == (False, "engine last reached 61s ago (limit 60s)")
    contact.reached()
    contact.lost("connection refused")
    assert contact.readiness() == (False, "engine unreachable: connection refused")
    contact.reached()
    assert contact.readiness()[0] is True


def test_engine_contact_refuses_a_max_age_that_is_not_positive() -> None:
    with pytest.raises(ValueError):
        EngineContact(max_age_seconds=0)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9867", ("127.0.0.1", 9867)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("localhost:0", ("localhost", 0)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:9000", ("::1", 9000)),
        ("[::]:9000", ("::", 9000)),
    ],
)
def test_listen_addresses_are_parsed(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9867", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", "::1:9000", "[::1]9000", ""])
def test_a_bad_listen_address_is_a_config_error_that_quotes_it(value: str) -> None:
    with pytest.raises(ConfigError, match="--listen"):
        parse_listen(value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.53", True), ("::1", True), ("localhost", True),
     ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False), ("myhost", False)],
)
def test_only_loopback_addresses_count_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_request_on_a_connection_kept_alive_past_stop_never_reaches_a_hook(readiness: Readiness) -> None:
    hook = Recorder()
    service = ServiceServer(Metrics(process_metrics=False), readiness, port=0, on_prune=hook)
    service.start()
    host, port = service.address
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.request("GET", "/healthz")
        first = connection.getresponse()
        first.read()
        assert first.status == 200
        service.stop()
        try:
            connection.request("POST", "/prune", body=b"{}", headers={"Content-Type": "application/json"})
            answer = connection.getresponse()
            answer.read()
            assert answer.status == 503
        except (ConnectionError, http.client.HTTPException):
            pass  # the connection was closed instead: just as good
    finally:
        connection.close()
    assert hook.payloads == []


# -- `sparkjoy build` and the library client need the daemon's address, and nothing else -------


@pytest.mark.parametrize("how", ["variable", "config file"])
def test_a_mistake_in_another_setting_never_keeps_a_build_from_being_announced(
        server: ServiceServer, hooks: dict[str, Recorder], tmp_path, how: str) -> None:
    """Once, an unknown SPARKJOY_* variable (or any bad setting) made `sparkjoy build` warn and
    build unannounced, so the daemon could prune in the middle of it."""
    import subprocess
    import sys
    from pathlib import Path

    host, port = server.address
    environment = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "XDG_CONFIG_HOME": str(tmp_path)}
    if how == "variable":
        environment.update(SPARKJOY_DAEMON_LISTEN=f"{host}:{port}", SPARKJOY_MAXAGE="2d", SPARKJOY_KEEP_RECENT="-1")
    else:
        config_file = tmp_path / "sparkjoy.toml"
        config_file.write_text(f'max_agee = "2d"\nkeep_recent = -1\n[daemon]\nlisten = "{host}:{port}"\n')
        environment.update(SPARKJOY_CONFIG=str(config_file))
    sparkjoy = str(Path(sys.executable).with_name("sparkjoy"))
    done = subprocess.run([sparkjoy, "build", "--id", "b-1", "--", "sh", "-c", "exit 5"], capture_output=True,
                          text=True, env=environment, timeout=60)

    assert done.returncode == 5, done.stderr
    assert done.stderr == "", done.stderr
    assert [p.get("id") for p in hooks["start"].payloads] == ["b-1"]
    assert len(hooks["finish"].payloads) == 1


def test_the_client_from_config_reads_the_address_alone_and_names_a_bad_one(tmp_path, monkeypatch) -> None:
    from sparkjoy.daemon import Client

    for name in [n for n in __import__("os").environ if n.upper().startswith("SPARKJOY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("SPARKJOY_KEEP_RECNET", "10")  # another command's mistake: not the client's
    monkeypatch.setenv("SPARKJOY_DAEMON_LISTEN", "127.0.0.1:19999")
    assert Client.from_config().base_url == "http://127.0.0.1:19999"
    assert Client.from_config(listen="[::1]:1234").base_url == "http://[::1]:1234"  # the flag wins

    monkeypatch.setenv("SPARKJOY_DAEMON_LISTEN", "nowhere")
    with pytest.raises(ConfigError) as caught:
        Client.from_config()
    assert caught.value.problems == [caught.value.problems[0]]
    assert "environment variable SPARKJOY_DAEMON_LISTEN: daemon.listen = 'nowhere'" in caught.value.problems[0]
    with pytest.raises(ConfigError, match="does not exist"):
        Client.from_config(str(tmp_path / "missing.toml"))


def test_the_server_header_names_sparkjoy_and_its_version(server: ServiceServer) -> None:
    from sparkjoy import __version__

    with urllib.request.urlopen(server.url + "/healthz", timeout=10) as response:
        assert response.headers["Server"] == f"sparkjoy/{__version__}"  # was "sparkjoy " (trailing space)
