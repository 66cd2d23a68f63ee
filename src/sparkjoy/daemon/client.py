"""The library API for dev tools: tell a running ``sparkjoy run`` when builds start and finish,
and ask it to prune now.

It speaks to the daemon's HTTP endpoints (``POST /build/start``, ``/build/finish``,
``/prune``) on the address of ``[daemon] listen`` (127.0.0.1:9867 by default)::

    from sparkjoy.daemon import Client

    client = Client()                      # or Client("127.0.0.1:9867"), or Client.from_config()
    with client.build("myapp", repos=["myapp"]):   # no prune starts while this block runs
        subprocess.run(["docker", "build", "-t", "myapp:dev", "."], check=True)
    client.prune_now()                     # a prune as soon as no build is in progress

A daemon that is not running is not an error for a build: ``build()`` logs a warning and
lets the block run (``strict=True`` raises ``DaemonUnavailable`` instead).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import SparkjoyError
from .listen import DEFAULT_LISTEN, parse_listen

log = logging.getLogger("sparkjoy.daemon.client")


class DaemonUnavailable(SparkjoyError):
    """No sparkjoy daemon answered at the address, or it refused the request."""


class DaemonRefused(DaemonUnavailable):
    """The daemon answered, and refused the request (an unknown build id, pruning disabled)."""

    def __init__(self, message: str, status: int):
        self.status = status
        super().__init__(message)


class Client:
    def __init__(self, address: str = DEFAULT_LISTEN, timeout: float = 5.0):
        host, port = parse_listen(address)
        self.base_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self.timeout = timeout

    @classmethod
    def from_config(cls, config_path: str | None = None, listen: str | None = None, timeout: float = 5.0) -> "Client":
        """Given the config file (or None for the usual places), return a client for the daemon it configures."""
        from .. import config

        # The address alone: a mistake in another setting is not this client's to report, and
        # must not keep a build from being announced.
        address = config.load_value("daemon.listen", listen, config_path)
        if not address:
            raise DaemonUnavailable("the daemon's HTTP endpoints are off (daemon.listen = \"off\")")
        return cls(address, timeout)

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url + path, data=json.dumps(payload).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace").strip()
            try:
                detail = json.loads(detail).get("error") or detail
            except (ValueError, AttributeError):
                pass
            raise DaemonRefused(f"the sparkjoy daemon at {self.base_url} refused {path} ({error.code}): {detail}",
                                error.code) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DaemonUnavailable(f"no sparkjoy daemon answered at {self.base_url} ({reason}); "
                                    "is `sparkjoy run` running with this [daemon] listen address?") from None
        try:
            answer = json.loads(body) if body.strip() else {}
        except json.JSONDecodeError:
            answer = {}
        return answer if isinstance(answer, dict) else {}

    def build_started(self, build_id: str | None = None, repos: list[str] | tuple[str, ...] = ()) -> str:
        """Tell the daemon a build starts; return the id to pass to ``build_finished``.

        ``repos``: repository names or globs this tool builds; a daemon run with
        ``scope_from_builds`` prunes only those (it remembers them across restarts).
        """
        payload: dict[str, Any] = {"id": build_id} if build_id else {}
        if repos:
            payload["repos"] = list(repos)
        answer = self._post("/build/start", payload)
        return str(answer.get("id") or build_id or "")

    def build_finished(self, build_id: str) -> None:
        """Tell the daemon the build with this id finished (successfully or not)."""
        self._post("/build/finish", {"id": build_id})

    def prune_now(self) -> None:
        """Ask for a prune as soon as no build is in progress."""
        self._post("/prune", {})

    @contextmanager
    def build(self, build_id: str | None = None, *, repos: list[str] | tuple[str, ...] = (),
              strict: bool = False) -> Iterator[str | None]:
        """Announce a build for the duration of the block; yields its id (None when no daemon answered)."""
        try:
            started = self.build_started(build_id, repos)
        except DaemonUnavailable as error:
            if strict:
                raise
            log.warning("%s; building anyway", error)
            started = None
        try:
            yield started
        finally:
            if started:
                try:
                    self.build_finished(started)
                except DaemonUnavailable as error:
                    log.warning("%s", error)
