"""The daemon's small HTTP side: health, readiness, metrics, and build notifications.

Endpoints::

    GET  /healthz        200 "ok" while the process (and, if given, its loop) is alive
    GET  /readyz         200 when the engine was reached recently, else 503 and the reason
    GET  /metrics        Prometheus text format (OpenMetrics if the scraper asks for it)
    POST /build/start    a dev tool says a build is starting      -> on_build_start(payload)
    POST /build/finish   ... and that it finished                 -> on_build_finish(payload)
    POST /prune          ask for a prune now                       -> on_prune(payload)

Unknown paths answer 404, known paths with the wrong method 405 (with an ``Allow`` header).

It listens on 127.0.0.1 by default. Anything else must be asked for (``--listen``), and is
logged as a warning, because POST /prune lets whoever reaches the port make the daemon
prune. For the same reason a POST must carry ``Content-Type: application/json`` and no
``Origin`` header: a web page in a local browser can send neither without the browser
asking first, so no page can trigger a prune (cross-site requests, DNS rebinding).
Command-line clients such as ``curl`` and ``urllib`` are unaffected::

    curl -X POST -H 'Content-Type: application/json' -d '{"id": "ci-42"}' \\
         http://127.0.0.1:9867/build/start

How the daemon wires it (see ``ServiceServer.__init__`` for every argument)::

    contact = EngineContact(max_age_seconds=120)       # contact.reached() after each engine answer
    server = ServiceServer(metrics, contact.readiness, host=host, port=port,
                           on_build_start=..., on_build_finish=..., on_prune=...)
    server.start()                                      # raises ConfigError if it cannot listen
    ...
    server.stop()                                       # stops accepting, joins the thread

A hook receives the request's JSON object (``{}`` for an empty body) and returns a dict
(200 with that JSON), ``None`` (202 ``{"accepted": true}``), or a ``HookAnswer`` for another
status; it raises ``HookError(status, message)`` to refuse. Hooks run on the server's
request threads: they must hand work to the supervisor loop (a queue, an event) and
return at once, never prune inline.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import urlsplit

from ..errors import ConfigError
from .listen import DEFAULT_HOST, DEFAULT_LISTEN, DEFAULT_PORT, parse_listen  # noqa: F401 (also imported from here)
from .metrics import Metrics


# A build notification is a few fields; anything bigger is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024
# A client that connects and then says nothing must not hold a request thread forever.
REQUEST_TIMEOUT_SECONDS = 10.0

Readiness = tuple[bool, str]
ReadinessCheck = Callable[[], Readiness]


@dataclass(frozen=True)
class HookAnswer:
    """What a hook answers when plain 200/202 is not right (e.g. 409 "already pruning")."""

    status: int = 200
    body: dict[str, Any] = field(default_factory=dict)


class HookError(Exception):
    """Raised by a hook to refuse a request with a 4xx status and a message for the client."""

    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


Hook = Callable[[dict[str, Any]], "dict[str, Any] | HookAnswer | None"]


class EngineContact:
    """Remembers when the engine last answered, and says whether that was recently enough.

    The daemon calls ``reached()`` after every successful engine call (a ping, a snapshot,
    an event from the stream) and ``lost(reason)`` when it loses the engine; ``readiness``
    is what ``/readyz`` asks. ``clock`` is injected (seconds, monotonic) for tests.

    >>> now = [100.0]
    >>> contact = EngineContact(max_age_seconds=60, clock=lambda: now[0])
    >>> contact.readiness()
    (False, 'engine not reached yet')
    >>> contact.reached(); now[0] = 130.0
    >>> contact.readiness()
    (True, 'engine reached 30s ago')
    """

    def __init__(self, max_age_seconds: float = 120.0, clock: Callable[[], float] = time.monotonic):
        if max_age_seconds <= 0:
            raise ValueError(f"max_age_seconds must be positive: {max_age_seconds}")
        self.max_age_seconds = max_age_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._last_reached: float | None = None
        self._lost_reason = ""

    def reached(self) -> None:
        with self._lock:
            self._last_reached = self._clock()
            self._lost_reason = ""

    def lost(self, reason: str) -> None:
        with self._lock:
            self._lost_reason = reason or "engine lost"

    def readiness(self) -> Readiness:
        with self._lock:
            last, lost = self._last_reached, self._lost_reason
        if lost:
            return False, f"engine unreachable: {lost}"
        if last is None:
            return False, "engine not reached yet"
        age = self._clock() - last
        if age > self.max_age_seconds:
            return False, f"engine last reached {age:.0f}s ago (limit {self.max_age_seconds:.0f}s)"
        return True, f"engine reached {age:.0f}s ago"


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``; anything else may be reachable from elsewhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


GET_PATHS = ("/healthz", "/readyz", "/metrics")
POST_PATHS = ("/build/start", "/build/finish", "/prune")


class ServiceServer:
    """Serves the endpoints above from a background thread.

    ``metrics``: what ``/metrics`` exposes.
    ``readiness``: called per ``/readyz`` request; returns (ready, reason). Typically
    ``EngineContact.readiness``. An exception counts as not ready.
    ``host``, ``port``: where to listen; port 0 picks a free one (see ``address``).
    A non-loopback host is allowed (a container needs 0.0.0.0 for its port mapping) but
    logged as a warning.
    ``on_build_start``, ``on_build_finish``, ``on_prune``: the POST hooks; a hook left as
    None makes its path answer 404.
    ``liveness``: optional, called per ``/healthz``; returns (alive, reason). Let it
    reflect only the daemon's own loop (a heartbeat), never the engine: an orchestrator
    restarts the process when it fails, and restarting never brings an engine back.
    """

    def __init__(
        self,
        metrics: Metrics,
        readiness: ReadinessCheck,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        on_build_start: Hook | None = None,
        on_build_finish: Hook | None = None,
        on_prune: Hook | None = None,
        liveness: ReadinessCheck | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.metrics = metrics
        self.readiness = readiness
        self.liveness = liveness
        self.host = host
        self.port = port
        self.hooks: dict[str, Hook | None] = {
            "/build/start": on_build_start,
            "/build/finish": on_build_finish,
            "/prune": on_prune,
        }
        self.log = logger or logging.getLogger("sparkjoy.daemon.http")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._in_flight = 0
        self._idle = threading.Condition()
        # Set by stop(): a kept-alive connection may still carry a request after it, and
        # that must not reach a hook of a daemon that is shutting down.
        self._stopping = False

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually listened on; the real port when 0 was asked for."""
        if self._server is None:
            return self.host, self.port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Listen and serve in a background thread. Raises ConfigError if it cannot listen."""
        if self._server is not None:
            raise RuntimeError("the HTTP server is already started")
        server_class = _IPv6Server if ":" in self.host else _IPv4Server
        try:
            server = server_class((self.host, self.port), _handler_for(self))
        except OSError as error:
            raise ConfigError(
                f"--listen {self.host}:{self.port}: cannot listen there: {error.strerror or error}"
            ) from None
        self._server = server
        self._stopping = False
        if not is_loopback(self.host):
            self.log.warning(
                "listening on %s, which is not a loopback address: anyone who can reach it can read "
                "metrics and ask for a prune (POST /prune)",
                self.url,
            )
        else:
            self.log.info("listening on %s", self.url)
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="sparkjoy-http", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting, wait up to ``timeout`` for requests in progress, close, join the thread.

        Safe to call twice, or without ``start``.
        """
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping = True
        server.shutdown()  # returns once serve_forever has left its loop
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._in_flight and (remaining := deadline - time.monotonic()) > 0:
                self._idle.wait(remaining)
            if self._in_flight:
                self.log.warning("stopping with %d HTTP request(s) still in progress", self._in_flight)
        server.server_close()
        if thread is not None:
            thread.join(max(deadline - time.monotonic(), 0.1))
        self._server = None
        self._thread = None

    def __enter__(self) -> "ServiceServer":
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- requests (called on request threads) -----------------------------------------------

    def _enter(self) -> None:
        with self._idle:
            self._in_flight += 1

    def _leave(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.notify_all()


class _IPv4Server(ThreadingHTTPServer):
    daemon_threads = True  # stop() waits for requests itself, with a bound
    allow_reuse_address = True


class _IPv6Server(_IPv4Server):
    address_family = socket.AF_INET6


def _handler_for(service: ServiceServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        pass

    Handler.service = service
    return Handler


class _Handler(BaseHTTPRequestHandler):
    service: ServiceServer
    server_version = "sparkjoy"
    sys_version = ""

    def version_string(self) -> str:  # "sparkjoy/0.1.0" (the default joins the two with a space)
        from .. import __version__

        return f"{self.server_version}/{__version__}"
    timeout = REQUEST_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.1"

    # One method for every verb, so a known path with the wrong verb is 405, not 501.
    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_OPTIONS(self) -> None:
        self._dispatch("OPTIONS")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        # Scrapes and probes every few seconds would drown the daemon's own log at info.
        self.service.log.debug("http %s %s", self.address_string(), format % args)

    def _dispatch(self, method: str) -> None:
        self.service._enter()
        try:
            path = urlsplit(self.path).path
            if self.service._stopping:
                return self._send_text(503, "shutting down\n")
            if path in GET_PATHS:
                if method not in ("GET", "HEAD"):
                    return self._method_not_allowed("GET, HEAD")
                if path == "/healthz":
                    return self._healthz()
                if path == "/readyz":
                    return self._readyz()
                return self._metrics()
            if path in POST_PATHS and self.service.hooks[path] is not None:
                if method != "POST":
                    return self._method_not_allowed("POST")
                return self._hook(path)
            self._send_text(404, f"not found: {path}\n")
        except Exception:  # a bug here must cost one request, never the server thread
            self.service.log.exception("http %s %s failed", method, self.path)
            try:
                self._send_text(500, "internal error\n")
            except OSError:
                pass
        finally:
            self.service._leave()

    # -- GET --------------------------------------------------------------------------------

    def _healthz(self) -> None:
        alive, reason = _ask(self.service.liveness) if self.service.liveness else (True, "")
        if alive:
            self._send_text(200, "ok\n")
        else:
            self._send_text(503, f"not alive: {reason}\n")

    def _readyz(self) -> None:
        ready, reason = _ask(self.service.readiness)
        if ready:
            self._send_text(200, f"ready: {reason}\n" if reason else "ready\n")
        else:
            self._send_text(503, f"not ready: {reason}\n")

    def _metrics(self) -> None:
        body, content_type = self.service.metrics.exposition(self.headers.get("Accept"))
        self._send(200, body, content_type)

    # -- POST -------------------------------------------------------------------------------

    def _hook(self, path: str) -> None:
        if self.headers.get("Origin") is not None:
            return self._send_json(403, {"error": "requests from web pages are refused"})
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if content_type != "application/json":
            return self._send_json(415, {"error": "send Content-Type: application/json"})
        length_text = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding"):
            return self._send_json(411, {"error": "send a Content-Length, not chunked encoding"})
        try:
            length = int(length_text) if length_text is not None else 0
        except ValueError:
            return self._send_json(400, {"error": "bad Content-Length"})
        if length < 0:
            return self._send_json(400, {"error": "bad Content-Length"})
        if length > MAX_BODY_BYTES:
            return self._send_json(413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"})
        raw = self.rfile.read(length) if length else b""
        try:
            payload = json.loads(raw) if raw.strip() else {}
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            return self._send_json(400, {"error": f"body is not JSON: {error}"})
        if not isinstance(payload, dict):
            return self._send_json(400, {"error": "body must be a JSON object"})

        hook = self.service.hooks[path]
        assert hook is not None  # _dispatch answers 404 for unset hooks
        try:
            answer = hook(payload)
        except HookError as error:
            return self._send_json(error.status, {"error": error.message})
        if answer is None:
            return self._send_json(202, {"accepted": True})
        if isinstance(answer, HookAnswer):
            return self._send_json(answer.status, answer.body)
        self._send_json(200, answer)

    # -- answers ----------------------------------------------------------------------------

    def _method_not_allowed(self, allow: str) -> None:
        self._send_text(405, f"method not allowed; use {allow}\n", extra={"Allow": allow})

    def _send_text(self, status: int, text: str, extra: dict[str, str] | None = None) -> None:
        self._send(status, text.encode(), "text/plain; charset=utf-8", extra)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, (json.dumps(body) + "\n").encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if status >= 400 or self.service._stopping:
            # A refused request's body may be unread: reusing the connection would read it
            # as the next request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def _ask(check: ReadinessCheck) -> Readiness:
    try:
        ok, reason = check()
    except Exception as error:  # the check itself failing is an answer: not ready
        return False, f"check failed: {type(error).__name__}: {error}"
    return bool(ok), str(reason)
