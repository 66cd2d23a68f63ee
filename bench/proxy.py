"""A counting proxy on a unix socket: how many engine API calls a tool makes.

Tools are pointed at the proxy's socket (`DOCKER_HOST=unix:///.../count.sock`); every HTTP
request line passing through is recorded, then forwarded unchanged to the engine. Request
bodies are skipped by Content-Length (or chunked encoding), so keep-alive connections with
many requests are counted exactly. Responses are copied back byte for byte. Only for
counting: it adds latency, so no timing is ever taken through it.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections import Counter
from pathlib import Path

# /v1.41/images/sha256:abc/json -> /images/{id}/json: group calls by endpoint.
_VERSION = re.compile(r"^/v[0-9.]+")
_COLLECTION_ACTIONS = {"json", "prune", "load", "create", "get", "search"}


def endpoint(method: str, target: str) -> str:
    """Given a request line's method and target, return it grouped by endpoint: `GET /images/{id}/json`."""
    path = _VERSION.sub("", target.split("?", 1)[0])
    for kind in ("images", "containers", "volumes"):
        prefix = f"/{kind}/"
        if not path.startswith(prefix):
            continue
        rest = path[len(prefix):]
        if rest in _COLLECTION_ACTIONS:
            break
        # An object's name can hold slashes (repo/name:tag): the action is the last segment.
        name, slash, action = rest.rpartition("/")
        if method == "DELETE" or not slash:
            path = f"{prefix}{{name}}"
        else:
            path = f"{prefix}{{name}}/{action}"
        break
    return f"{method} {path}"


class CountingProxy:
    def __init__(self, upstream_socket: str, listen_socket: str):
        self.upstream = upstream_socket
        self.path = listen_socket
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def host(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> "CountingProxy":
        if os.path.exists(self.path):
            os.unlink(self.path)
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(64)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._server:
            self._server.close()
        Path(self.path).unlink(missing_ok=True)

    def reset(self) -> Counter[str]:
        with self._lock:
            counts, self.counts = self.counts, Counter()
        return counts

    def __enter__(self) -> "CountingProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopping:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(self.upstream)
        except OSError:
            client.close()
            return
        threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
        reader = client.makefile("rb")
        try:
            while True:
                line = reader.readline()
                if not line:
                    break
                parts = line.decode("latin-1").split()
                if len(parts) >= 2:
                    with self._lock:
                        self.counts[endpoint(parts[0], parts[1])] += 1
                headers = [line]
                length, chunked = 0, False
                while True:
                    header = reader.readline()
                    headers.append(header)
                    if header in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = header.decode("latin-1").partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value.strip())
                    elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                        chunked = True
                upstream.sendall(b"".join(headers))
                if chunked:
                    while True:
                        size_line = reader.readline()
                        upstream.sendall(size_line)
                        size = int(size_line.split(b";")[0].strip() or b"0", 16)
                        data = reader.read(size + 2)
                        upstream.sendall(data)
                        if size == 0:
                            break
                else:
                    while length > 0:
                        data = reader.read(min(length, 1 << 16))
                        if not data:
                            return
                        upstream.sendall(data)
                        length -= len(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


def _pump(source: socket.socket, destination: socket.socket) -> None:
    try:
        while True:
            data = source.recv(1 << 16)
            if not data:
                break
            destination.sendall(data)
    except OSError:
        pass
    finally:
        try:
            destination.shutdown(socket.SHUT_WR)
        except OSError:
            pass
