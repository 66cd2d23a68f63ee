"""A fault-injecting HTTP proxy between sparkjoy and the private test engine.

It listens on a unix socket of its own (a short path under /tmp) and forwards each
request to the engine's socket, unless a rule matches the request's method and path;
the rule's action then answers instead, or changes how the engine's answer arrives:

    proxy = FaultProxy(engine.socket_path).start()
    proxy.add(Rule("DELETE", r"^/images/", respond(500, {"message": "boom"}), nth=2))
    env = {..., "DOCKER_HOST": proxy.host}     # sparkjoy now talks through the proxy
    ...
    proxy.injected                             # Counter: faults injected, by action name
    proxy.stop()

Paths are matched without the API version prefix (`/v1.41`) and without the query
string, with `re.search`. A rule can fire only on the `nth` matching request, on every
one `from_nth` on, and at most `times` times (`times=1`: once).

Actions (each is a callable `(exchange) -> None` that answers the client):
- `respond(status, body)`: answer without asking the engine (409, 404, 500 ...).
- `delay(seconds)`: wait, then forward; longer than the client's timeout makes it give up.
- `slow_body(chunk, interval)`: forward, then send the body `chunk` bytes at a time.
- `drop(after_bytes)`: forward, relay `after_bytes` of the body, then close the connection
  (0 before any answer); in a chunked stream such as /events, cut mid-stream.
- `rewrite(fn)`: forward, buffer the whole body, send `fn(body, exchange)` instead (for
  malformed, truncated or hostile JSON). `rewrite_json(fn)` does the parsing for you.
- `api_version(text)`: report another API version (/version body, /_ping headers).
- `hook(fn, then)`: call `fn(request)` first (e.g. stop the engine), then run `then`.
- `truncate(fraction)`: declare the full length but send only part of the body, then close.

Everything that does not match is passed through as raw bytes once the request line,
headers and body are parsed: keep-alive, chunked transfer and connection upgrades work.
The proxy uses only the standard library.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import socketserver
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

_VERSION_PREFIX = re.compile(r"^/v\d+(?:\.\d+)?(?=/)")
MAX_HEADER_BYTES = 1 << 20


class ProxyClosed(Exception):
    """The client or the engine went away; the connection is over."""


@dataclass
class Request:
    method: str
    target: str  # as sent, with version prefix and query
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes  # request line + headers, exactly as sent

    @property
    def path(self) -> str:
        """The path without `/v1.41` and without the query string."""
        return _VERSION_PREFIX.sub("", self.target.split("?", 1)[0])

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def raw(self) -> bytes:
        """The request as bytes with its body re-framed by Content-Length (never chunked)."""
        lines = self.raw_head.split(b"\r\n")
        kept = [lines[0]] + [
            line for line in lines[1:]
            if line and line.split(b":", 1)[0].strip().lower() not in (b"content-length", b"transfer-encoding")
        ]
        if self.body or self.method in ("POST", "PUT", "PATCH"):
            kept.append(b"Content-Length: " + str(len(self.body)).encode())
        return b"\r\n".join(kept) + b"\r\n\r\n" + self.body


@dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def set_header(self, name: str, value: str | None) -> None:
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, value))

    def head(self, content_length: int | None) -> bytes:
        headers = [(k, v) for k, v in self.headers
                   if k.lower() not in ("content-length", "transfer-encoding")]
        if content_length is not None:
            headers.append(("Content-Length", str(content_length)))
        lines = [f"HTTP/1.1 {self.status} {self.reason}"] + [f"{k}: {v}" for k, v in headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


Action = Callable[["Exchange"], None]


@dataclass
class Rule:
    method: str  # exact method, or "*" for any
    path: str  # regex, searched in the path without version prefix and query
    action: Action
    nth: int | None = None  # fire only on the n-th matching request (1-based)
    times: int | None = None  # fire at most this many times
    from_nth: int | None = None  # fire on the n-th matching request and every one after it
    name: str = ""  # for the counts; defaults to the action's name
    matched: int = 0
    fired: int = 0

    def matches(self, request: Request) -> bool:
        if self.method != "*" and self.method.upper() != request.method.upper():
            return False
        return re.search(self.path, request.path) is not None

    def should_fire(self) -> bool:
        """Called once per matching request, under the proxy's lock."""
        self.matched += 1
        if self.nth is not None and self.matched != self.nth:
            return False
        if self.from_nth is not None and self.matched < self.from_nth:
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.fired += 1
        return True


class Exchange:
    """One request on one client connection, with what an action needs to answer it."""

    def __init__(self, connection: "_Connection", request: Request):
        self.connection = connection
        self.request = request
        self.proxy = connection.proxy

    # -- answering --------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        try:
            self.connection.client.sendall(data)
        except OSError as error:
            raise ProxyClosed(str(error)) from error

    def respond(self, response: Response) -> None:
        self.send(response.head(len(response.body)) + response.body)

    def close(self) -> None:
        """Drop the client's connection (and the engine's) without another byte."""
        raise ProxyClosed("dropped by a rule")

    def wait(self, seconds: float) -> None:
        """Wait, but give up at once when the proxy stops."""
        if self.proxy.stopping.wait(seconds):
            raise ProxyClosed("proxy stopping")

    # -- the engine's side ------------------------------------------------------------

    def forward(self) -> Response:
        """Send the request to the engine and read its answer's head (the body is not read)."""
        return self.connection.forward_head(self.request)

    def read_body(self, response: Response) -> bytes:
        return self.connection.read_body(self.request, response)

    def fetch(self) -> Response:
        """Forward and read the whole answer (dechunked) into ``response.body``."""
        response = self.forward()
        response.body = self.read_body(response)
        return response

    def relay(self, response: Response | None = None) -> None:
        """Forward (unless done already) and pass the answer through unchanged."""
        response = response or self.forward()
        self.connection.relay(self.request, response)


class _Connection:
    def __init__(self, proxy: "FaultProxy", client: socket.socket):
        self.proxy = proxy
        self.client = client
        self.client_file = client.makefile("rb")
        self.upstream: socket.socket | None = None
        self.upstream_file = None
        self.keep_alive = True

    # -- reading HTTP -----------------------------------------------------------------

    @staticmethod
    def _read_head(stream) -> list[bytes]:
        lines: list[bytes] = []
        total = 0
        while True:
            line = stream.readline(65537)
            if not line:
                if lines:
                    raise ProxyClosed("connection closed inside a message head")
                raise ProxyClosed("connection closed")
            total += len(line)
            if total > MAX_HEADER_BYTES:
                raise ProxyClosed("message head too large")
            if line in (b"\r\n", b"\n"):
                if not lines:
                    continue  # tolerate a stray empty line between messages
                return lines
            lines.append(line.rstrip(b"\r\n"))

    @staticmethod
    def _headers(lines: list[bytes]) -> list[tuple[str, str]]:
        headers = []
        for line in lines:
            key, _, value = line.decode("latin-1").partition(":")
            headers.append((key.strip(), value.strip()))
        return headers

    @staticmethod
    def _read_chunked(stream) -> bytes:
        body = bytearray()
        while True:
            size_line = stream.readline(1024)
            if not size_line:
                raise ProxyClosed("connection closed inside a chunked body")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while stream.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            body += stream.read(size)
            stream.readline(3)

    def read_request(self) -> Request:
        lines = self._read_head(self.client_file)
        method, target, version = (lines[0].decode("latin-1").split(" ", 2) + ["", ""])[:3]
        headers = self._headers(lines[1:])
        request = Request(method, target, version or "HTTP/1.0", headers, b"", b"\r\n".join(lines))
        if (request.header("Transfer-Encoding") or "").lower() == "chunked":
            request.body = self._read_chunked(self.client_file)
        elif request.header("Content-Length"):
            request.body = self.client_file.read(int(request.header("Content-Length")))
        return request

    # -- the engine -------------------------------------------------------------------

    def _upstream(self) -> socket.socket:
        if self.upstream is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(self.proxy.upstream_path)
            except OSError as error:
                sock.close()
                # The engine is down: the client sees its connection closed, as it would
                # see a dead engine behind a socket proxy.
                raise ProxyClosed(f"engine unreachable: {error}") from error
            self.upstream = sock
            self.upstream_file = sock.makefile("rb")
        return self.upstream

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            for closer in (self.upstream_file.close, self.upstream.close):
                try:
                    closer()
                except OSError:
                    pass
        self.upstream = None
        self.upstream_file = None

    def forward_head(self, request: Request) -> Response:
        for attempt in (1, 2):
            fresh = self.upstream is None
            try:
                self._upstream().sendall(request.raw())
                lines = self._read_head(self.upstream_file)
                break
            except (ProxyClosed, OSError) as error:
                self._drop_upstream()
                # A kept-alive engine connection may have been closed by the engine
                # meanwhile; one retry on a new connection, as HTTP clients do.
                if fresh or attempt == 2:
                    raise ProxyClosed(f"engine connection lost: {error}") from error
        status_line = lines[0].decode("latin-1").split(" ", 2)
        status = int(status_line[1])
        reason = status_line[2] if len(status_line) > 2 else ""
        return Response(status, reason, self._headers(lines[1:]))

    def _framing(self, request: Request, response: Response) -> str:
        if request.method == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200:
            return "none"
        if (response.header("Transfer-Encoding") or "").lower() == "chunked":
            return "chunked"
        if response.header("Content-Length") is not None:
            return "length"
        return "close"

    def read_body(self, request: Request, response: Response) -> bytes:
        framing = self._framing(request, response)
        if framing == "none":
            return b""
        if framing == "chunked":
            return self._read_chunked(self.upstream_file)
        if framing == "length":
            return self.upstream_file.read(int(response.header("Content-Length")))
        self.keep_alive = False
        data = self.upstream_file.read()
        self._drop_upstream()
        return data

    def relay(self, request: Request, response: Response) -> None:
        """Pass the engine's answer to the client as it arrives."""
        upgrade = response.status == 101 or (
            response.header("Content-Type") or "").startswith("application/vnd.docker.raw-stream")
        head = response.head(None)
        framing = self._framing(request, response)
        if framing == "chunked":
            head = response.head(None).replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1)
        elif framing == "length":
            head = response.head(int(response.header("Content-Length")))
        self._send(head)
        if upgrade:
            self._pipe()
            return
        if framing == "none":
            return
        if framing == "length":
            remaining = int(response.header("Content-Length"))
            while remaining:
                data = self.upstream_file.read1(min(remaining, 65536))
                if not data:
                    raise ProxyClosed("engine closed inside a body")
                self._send(data)
                remaining -= len(data)
            return
        if framing == "chunked":
            while True:
                size_line = self.upstream_file.readline(1024)
                if not size_line:
                    raise ProxyClosed("engine closed inside a chunked body")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    self.upstream_file.readline(65537)
                    self._send(b"0\r\n\r\n")
                    return
                data = self.upstream_file.read(size)
                self.upstream_file.readline(3)
                self._send(size_line.rstrip(b"\r\n") + b"\r\n" + data + b"\r\n")
        # until close
        self.keep_alive = False
        while data := self.upstream_file.read1(65536):
            self._send(data)

    def _pipe(self) -> None:
        """A hijacked connection: copy bytes both ways until either side closes."""
        self.keep_alive = False
        upstream = self.upstream

        def engine_to_client():
            try:
                while data := self.upstream_file.read1(65536):
                    self.client.sendall(data)
            except OSError:
                pass
            finally:
                try:
                    self.client.shutdown(socket.SHUT_WR)
                except OSError:
                    pass

        thread = threading.Thread(target=engine_to_client, daemon=True)
        thread.start()
        try:
            while data := self.client_file.read1(65536):
                upstream.sendall(data)
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        thread.join()

    def _send(self, data: bytes) -> None:
        try:
            self.client.sendall(data)
        except OSError as error:
            raise ProxyClosed(str(error)) from error

    # -- the loop ---------------------------------------------------------------------

    def serve(self) -> None:
        try:
            while self.keep_alive and not self.proxy.stopping.is_set():
                request = self.read_request()
                self.proxy.requests_seen += 1
                rule = self.proxy.match(request)
                exchange = Exchange(self, request)
                if rule is None:
                    exchange.relay()
                else:
                    self.proxy.record(rule, request)
                    rule.action(exchange)
                if (request.header("Connection") or "").lower() == "close":
                    break
        except (ProxyClosed, OSError, ValueError):
            pass
        finally:
            self._drop_upstream()
            for closer in (self.client_file.close, self.client.close):
                try:
                    closer()
                except OSError:
                    pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = True
    # The default backlog of 5 makes a client's 6th concurrent connect fail with EAGAIN,
    # a fault of the proxy rather than one it means to inject; dockerd listens with more.
    request_queue_size = 128


class FaultProxy:
    """See the module docstring. Usable as a context manager."""

    def __init__(self, upstream_path: str):
        self.upstream_path = upstream_path
        self.tmpdir = tempfile.mkdtemp(prefix="sjp", dir="/tmp")
        self.socket_path = os.path.join(self.tmpdir, "p.sock")
        self.host = f"unix://{self.socket_path}"
        self.rules: list[Rule] = []
        self.injected: Counter[str] = Counter()
        self.log: list[tuple[str, str, str]] = []  # (rule name, method, path) per fault
        self.requests_seen = 0
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._clients: set[socket.socket] = set()

    # -- rules ------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()

    def match(self, request: Request) -> Rule | None:
        # Every matching rule counts the request, so `nth` means "the n-th request with
        # this method and path" whatever the other rules do; the first that fires answers.
        chosen = None
        with self._lock:
            for rule in self.rules:
                if not rule.matches(request):
                    continue
                if chosen is not None:
                    rule.matched += 1
                elif rule.should_fire():
                    chosen = rule
        return chosen

    def record(self, rule: Rule, request: Request) -> None:
        name = rule.name or getattr(rule.action, "fault_name", "fault")
        with self._lock:
            self.injected[name] += 1
            self.log.append((name, request.method, request.path))

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "FaultProxy":
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with proxy._lock:
                    proxy._clients.add(self.request)
                try:
                    _Connection(proxy, self.request).serve()
                finally:
                    with proxy._lock:
                        proxy._clients.discard(self.request)

        self._server = _Server(self.socket_path, Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        daemon=True, name="faultproxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            clients = list(self._clients)
        for client in clients:
            try:
                client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- actions -------------------------------------------------------------------------


def _named(name: str, action: Action) -> Action:
    action.fault_name = name  # type: ignore[attr-defined]
    return action


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 409: "Conflict", 500: "Internal Server Error",
            503: "Service Unavailable"}


def respond(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Action:
    """Answer with `status` and `body` (a dict/list is sent as JSON; default: a docker-style message)."""
    if body is None:
        body = {"message": f"injected fault: status {status}"}
    payload = body if isinstance(body, bytes) else json.dumps(body).encode() if not isinstance(body, str) \
        else body.encode()

    def action(exchange: Exchange) -> None:
        response = Response(status, _REASONS.get(status, "Status"), [
            ("Content-Type", "application/json"), ("Api-Version", "1.41"), *(headers or {}).items()])
        response.body = payload
        exchange.respond(response)

    return _named(f"status {status}", action)


def delay(seconds: float, then: Action | None = None) -> Action:
    """Wait `seconds`, then forward (or run `then`)."""

    def action(exchange: Exchange) -> None:
        exchange.wait(seconds)
        (then or (lambda e: e.relay()))(exchange)

    return _named("delay", action)


def slow_body(chunk: int = 16, interval: float = 0.05) -> Action:
    """Forward, then send the answer's body `chunk` bytes every `interval` seconds."""

    def action(exchange: Exchange) -> None:
        response = exchange.fetch()
        exchange.send(response.head(len(response.body)))
        for start in range(0, len(response.body), chunk):
            exchange.send(response.body[start:start + chunk])
            exchange.wait(interval)

    return _named("slow body", action)


def drop(after_bytes: int = 0) -> Action:
    """Close the connection: at once (0), or after relaying `after_bytes` of the answer's body.

    A chunked stream (the /events stream) is cut after the chunks that fit, mid-stream.
    """

    def action(exchange: Exchange) -> None:
        if after_bytes <= 0:
            exchange.close()
        response = exchange.forward()
        connection = exchange.connection
        chunked = (response.header("Transfer-Encoding") or "").lower() == "chunked"
        head = response.head(None)
        if chunked:
            head = head.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1)
        elif response.header("Content-Length") is not None:
            head = response.head(int(response.header("Content-Length")))
        exchange.send(head)
        sent = 0
        stream = connection.upstream_file
        while sent < after_bytes:
            if chunked:
                size_line = stream.readline(1024)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    break
                data = stream.read(size)
                stream.readline(3)
                exchange.send(size_line.rstrip(b"\r\n") + b"\r\n" + data + b"\r\n")
            else:
                data = stream.read1(after_bytes - sent)
                if not data:
                    break
                exchange.send(data)
            sent += len(data)
        exchange.close()

    return _named("drop connection", action)


def truncate(fraction: float = 0.5) -> Action:
    """Forward; declare the body's full length but send only `fraction` of it, then close."""

    def action(exchange: Exchange) -> None:
        response = exchange.fetch()
        exchange.send(response.head(len(response.body)) + response.body[: int(len(response.body) * fraction)])
        exchange.close()

    return _named("truncated body", action)


def rewrite(fn: Callable[[bytes, Exchange], bytes], name: str = "rewritten body") -> Action:
    """Forward; send `fn(body, exchange)` instead of the body (with a correct length)."""

    def action(exchange: Exchange) -> None:
        response = exchange.fetch()
        response.body = fn(response.body, exchange)
        exchange.respond(response)

    return _named(name, action)


def rewrite_json(fn: Callable[[Any], Any], name: str = "hostile answer") -> Action:
    """Forward; parse the JSON body, send `fn(parsed)` (mutate and return it) as JSON."""

    def change(body: bytes, exchange: Exchange) -> bytes:
        return json.dumps(fn(json.loads(body))).encode()

    return rewrite(change, name)


def malformed_json(name: str = "malformed JSON") -> Action:
    """Forward; replace the body by bytes that are not JSON (with a correct length)."""
    return rewrite(lambda body, exchange: b'{"Images": [{"Id": "sha256:' + b"\xff\xfe garbage ]", name)


def cut_json(fraction: float = 0.5) -> Action:
    """Forward; send the first `fraction` of the JSON body as the whole body (valid length, broken JSON)."""
    return rewrite(lambda body, exchange: body[: int(len(body) * fraction)], "truncated JSON")


def api_version(version: str) -> Action:
    """Report another API version: `API-Version` on /_ping, `ApiVersion` in /version."""

    def action(exchange: Exchange) -> None:
        response = exchange.fetch()
        response.set_header("Api-Version", version)
        if exchange.request.path.rstrip("/") == "/version" and response.status == 200:
            data = json.loads(response.body)
            data["ApiVersion"] = version
            response.body = json.dumps(data).encode()
        exchange.respond(response)

    return _named("other API version", action)


def hook(fn: Callable[[Request], None], then: Action | None = None, name: str = "hook") -> Action:
    """Call `fn(request)` first (say, stop the engine), then run `then` (default: forward)."""

    def action(exchange: Exchange) -> None:
        fn(exchange.request)
        (then or (lambda e: e.relay()))(exchange)

    return _named(name, action)
