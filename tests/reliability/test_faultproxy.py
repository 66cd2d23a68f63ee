"""The fault proxy itself: it passes traffic through faithfully, and each fault does what it says."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest

from tests import fixtures
from tests.faultproxy import (
    Rule, api_version, cut_json, delay, drop, hook, malformed_json, respond, rewrite_json, slow_body, truncate,
)
from tests.reliability.support import adapter


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 10):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


def get(proxy, path: str, method: str = "GET") -> tuple[int, dict, bytes]:
    connection = _Unix(proxy.socket_path)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_the_proxy_passes_a_whole_snapshot_through_unchanged(proxy, clean_engine):
    fixtures.import_image(clean_engine, 1000, "pass/through:1")
    direct = adapter(clean_engine.host).snapshot()
    proxied = adapter(proxy.host).snapshot()
    assert [i.id for i in proxied.images] == [i.id for i in direct.images]
    assert proxy.requests_seen >= 3  # the API version, /system/df, the image's inspect
    assert proxy.total_injected == 0


def test_a_status_rule_answers_instead_of_the_engine_and_is_counted(proxy):
    proxy.add(Rule("GET", r"^/_ping$", respond(500, {"message": "nope"})))
    status, _, body = get(proxy, "/v1.41/_ping")
    assert status == 500 and json.loads(body) == {"message": "nope"}
    assert proxy.injected == {"status 500": 1}


def test_a_rule_with_nth_fires_only_on_that_match_and_once_only_once(proxy):
    proxy.add(Rule("GET", r"^/_ping$", respond(404), nth=2))
    proxy.add(Rule("GET", r"^/version$", respond(409), times=1))
    assert [get(proxy, "/_ping")[0] for _ in range(3)] == [200, 404, 200]
    assert [get(proxy, "/version")[0] for _ in range(2)] == [409, 200]


def test_keep_alive_carries_several_requests_on_one_connection(proxy):
    connection = _Unix(proxy.socket_path)
    try:
        for _ in range(3):
            connection.request("GET", "/_ping")
            response = connection.getresponse()
            assert response.status == 200 and response.read() == b"OK"
    finally:
        connection.close()


def test_delay_holds_the_answer_back(proxy):
    proxy.add(Rule("GET", r"^/_ping$", delay(0.5)))
    started = time.monotonic()
    assert get(proxy, "/_ping")[0] == 200
    assert time.monotonic() - started >= 0.5


def test_slow_body_still_delivers_the_whole_body(proxy):
    proxy.add(Rule("GET", r"^/version$", slow_body(chunk=64, interval=0.001)))
    status, _, body = get(proxy, "/version")
    assert status == 200 and "ApiVersion" in json.loads(body)


def test_drop_closes_the_connection_before_any_answer(proxy):
    proxy.add(Rule("GET", r"^/_ping$", drop()))
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        get(proxy, "/_ping")


def test_drop_cuts_the_event_stream_mid_stream(proxy, clean_engine):
    proxy.add(Rule("GET", r"^/events$", drop(after_bytes=1)))
    connection = _Unix(proxy.socket_path)
    connection.request("GET", "/events")
    response = connection.getresponse()
    assert response.status == 200
    fixtures.import_image(clean_engine, 100, "an/event:1")  # makes events to stream
    with pytest.raises((http.client.IncompleteRead, ConnectionError, http.client.HTTPException)):
        while response.read(1):
            pass
        raise ConnectionError("stream ended")  # the stream never ends by itself: it was cut
    connection.close()


def test_malformed_truncated_and_cut_json_are_not_json(proxy):
    proxy.add(Rule("GET", r"^/version$", malformed_json(), nth=1))
    proxy.add(Rule("GET", r"^/version$", cut_json(), nth=2))
    for _ in range(2):
        with pytest.raises(ValueError):
            json.loads(get(proxy, "/version")[2])
    proxy.add(Rule("GET", r"^/_ping$", truncate(0.5)))
    with pytest.raises(http.client.IncompleteRead):
        get(proxy, "/_ping")


def test_api_version_is_reported_in_ping_headers_and_version(proxy):
    proxy.add(Rule("*", r"^/(_ping|version)$", api_version("1.99")))
    assert get(proxy, "/_ping")[1]["Api-Version"] == "1.99"
    assert json.loads(get(proxy, "/version")[2])["ApiVersion"] == "1.99"


def test_rewrite_json_and_hook_change_the_answer(proxy):
    seen = []
    proxy.add(Rule("GET", r"^/version$", hook(lambda request: seen.append(request.path),
                                             rewrite_json(lambda data: {**data, "Version": "x"}))))
    assert json.loads(get(proxy, "/version")[2])["Version"] == "x"
    assert seen == ["/version"]
