"""How requests reach the engine: one ``request(method, path, params)`` for every call.

A local engine (``unix://``, the default and the usual case) is spoken to over the standard
library's ``http.client`` on a unix socket, with a small pool of kept-alive connections shared
by the inspecting threads. Every other address (``tcp://`` with or without TLS, ``ssh://``,
``npipe://``) goes through the Docker SDK's transports, which handle TLS, ssh and named pipes.

Why not the SDK for the socket too: measured on this project's machines (bench/findings.md),
a call through the SDK (requests, then urllib3) costs about 0.6 ms of client CPU, a call
through ``http.client`` 0.12 ms. A first ``sparkjoy df`` on 5,000 images makes 10,000 calls,
a prune of 4,000 images 12,000, and the client's share of each is bound by one interpreter
lock; importing the SDK also takes about 0.09 s of every command's start-up.

Either transport answers a ``Reply`` (status and body), whatever the status, or raises one
of three errors that say what went wrong on the way: ``Unreachable`` (no connection, or the
engine never answered), ``TimedOut`` and ``BadAnswer`` (an answer cut short or not HTTP).
What a status means is for the caller (``DockerEngine``), once for both transports.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import quote, urlencode


class TransportError(Exception):
    """A request did not get a whole answer; ``__cause__`` is the library's own error."""


class Unreachable(TransportError):
    """No connection to the engine, or it closed one before answering."""


class TimedOut(TransportError):
    """The engine did not answer (or finish answering) within the timeout."""


class BadAnswer(TransportError):
    """Something answered, but not with a whole HTTP answer."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes

    def json(self) -> Any:
        """The body as JSON; ValueError when it is none."""
        return json.loads(self.body)

    def message(self) -> str:
        """What an error answer says: the engine's ``message``, else its text."""
        text = self.body.decode(errors="replace").strip()
        try:
            data = json.loads(text)
        except ValueError:
            return text
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            return data["message"].strip()
        return text


def path_of(template: str, *names: str) -> str:
    """Given ``/images/{}/json`` and names, return the path with each name quoted as the SDK
    does (``/`` and ``:`` kept: ``registry:5000/team/app:1`` is one image reference)."""
    return template.format(*(quote(name, safe="/:") for name in names))


def query_of(params: Mapping[str, Any] | None) -> str:
    """Given query parameters (dicts and lists as JSON, as the API's ``filters`` want them;
    booleans as 1/0), return ``?...`` or ""."""
    if not params:
        return ""
    items = []
    for key, value in params.items():
        if isinstance(value, bool):
            value = "1" if value else "0"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value, separators=(",", ":"))
        items.append((key, str(value)))
    return "?" + urlencode(items)


class UnixConnection(http.client.HTTPConnection):
    """One HTTP/1.1 connection to a unix socket."""

    def __init__(self, socket_path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class UnixTransport:
    """HTTP/1.1 over a unix socket, kept-alive connections pooled across threads."""

    def __init__(self, socket_path: str, timeout: float, pool_size: int = 16):
        self.socket_path = socket_path
        self.timeout = timeout
        self._idle: list[UnixConnection] = []
        self._lock = threading.Lock()
        self._pool_size = pool_size

    def request(self, method: str, path: str, params: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> Reply:
        connection, reused = self._take()
        target = path + query_of(params)
        headers = {"Content-Length": "0"} if method in ("POST", "DELETE") else {}
        wait = self.timeout if timeout is None else timeout

        def ask(on: UnixConnection) -> http.client.HTTPResponse:
            on.sock.settimeout(wait)
            on.request(method, target, headers=headers)
            return on.getresponse()

        try:
            try:
                response = ask(connection)
            except (ConnectionError, http.client.RemoteDisconnected):
                if not reused or method != "GET":
                    raise
                # The engine closed a kept-alive connection as this request went out (the
                # check in _take saw it open). A read is asked once more on a new one; a
                # change never is, as the engine may have taken it.
                connection.close()
                connection = self._new()
                response = ask(connection)
        except socket.timeout as error:
            connection.close()
            raise TimedOut(f"{method} {path}: no answer within the timeout") from error
        except http.client.RemoteDisconnected as error:
            connection.close()
            raise Unreachable(f"{method} {path}: the engine closed the connection without answering") from error
        except http.client.HTTPException as error:
            connection.close()
            raise BadAnswer(f"{method} {path}: not an HTTP answer ({type(error).__name__}: {error})") from error
        except OSError as error:
            connection.close()
            raise Unreachable(f"{method} {path}: {error}") from error
        if response.status < 200:
            # An interim answer (102, 103: http.client passes over 100 alone) with the real one
            # still to come on this connection: not an answer the API gives. Never pooled.
            connection.close()
            raise BadAnswer(f"{method} {path}: an interim answer ({response.status}) instead of one")
        try:
            body = response.read()
        except socket.timeout as error:
            connection.close()
            raise TimedOut(f"{method} {path}: the answer stopped coming within the timeout") from error
        except (http.client.HTTPException, OSError) as error:
            connection.close()
            raise BadAnswer(f"{method} {path}: the answer was cut short ({type(error).__name__}: {error})") from error
        if response.will_close:
            connection.close()
        else:
            self._give_back(connection)
        return Reply(response.status, body)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    def _take(self) -> tuple[UnixConnection, bool]:
        while True:
            with self._lock:
                connection = self._idle.pop() if self._idle else None
            if connection is None:
                return self._new(), False
            if not _dropped(connection.sock):
                return connection, True
            connection.close()

    def _new(self) -> UnixConnection:
        connection = UnixConnection(self.socket_path, self.timeout)
        try:
            connection.connect()
        except OSError as error:  # a connect that times out (a full backlog) is no connection either
            raise Unreachable(f"connect to {self.socket_path}: {error}") from error
        return connection

    def _give_back(self, connection: UnixConnection) -> None:
        with self._lock:
            if len(self._idle) < self._pool_size:
                self._idle.append(connection)
                return
        connection.close()


def _dropped(sock: socket.socket | None) -> bool:
    """True when an idle kept-alive connection is closed (or has unasked-for bytes): readable
    with nothing asked means the engine hung up. The check urllib3 makes before reusing one
    (poll, not select: select cannot watch a descriptor past 1023)."""
    if sock is None:
        return True
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True


class SdkTransport:
    """The Docker SDK's session (TLS, ssh, named pipes) behind the same ``request``."""

    def __init__(self, api: Any):
        self.api = api

    def request(self, method: str, path: str, params: Mapping[str, Any] | None = None,
                timeout: float | None = None) -> Reply:
        import requests

        url = self.api.base_url + path + query_of(params)
        try:
            response = self.api.request(method, url, timeout=self.api.timeout if timeout is None else timeout)
        except requests.exceptions.ConnectTimeout as error:  # a Timeout and a ConnectionError: no connection
            raise Unreachable(f"{method} {path}: connecting timed out ({error})") from error
        except requests.exceptions.Timeout as error:
            raise TimedOut(f"{method} {path}: no answer within the timeout") from error
        except requests.exceptions.ChunkedEncodingError as error:
            raise BadAnswer(f"{method} {path}: the answer was cut short ({error})") from error
        except (requests.exceptions.ConnectionError, OSError) as error:
            raise Unreachable(f"{method} {path}: {error}") from error
        except requests.exceptions.RequestException as error:
            raise BadAnswer(f"{method} {path}: {error}") from error
        return Reply(response.status_code, response.content)

    def close(self) -> None:
        self.api.close()


def json_objects(text: str) -> Iterator[Any]:
    """The JSON values in a stream of them (``/events``: one per line, or back to back)."""
    decoder = json.JSONDecoder()
    index, end = 0, len(text)
    while True:
        while index < end and text[index].isspace():
            index += 1
        if index >= end:
            return
        value, index = decoder.raw_decode(text, index)
        yield value
