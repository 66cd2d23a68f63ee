"""The Docker Engine implementation of ``Engine``, over the engine's REST API (``transport``).

One ``/system/df`` call lists every kind with sizes; images are then inspected (for the
last-tag time and layers) and stopped containers inspected (for their finish time), in a
small thread pool. Layer sizes come from image histories, read as few as will do: a layer's
size belongs to its chain ID, so one history per shared base tells it for every image on it,
and an image with one layer of its own has that layer's size from its own (``_layers``).
Image history, which never changes for an image ID, is cached, and the one-shot commands keep
it across runs in the state database (``know_histories``, ``histories_of``): a second run
asks for the history of new images only.

A long-lived owner that follows the engine's event stream (the daemon) can ask for the
inspects to be remembered too (``remember_inspects=True``): a later snapshot then asks only
about objects the engine said changed (``forget``), so an idle engine costs one
``/system/df`` per snapshot. The one-shot commands do the same across runs
(``know_inspects``, ``remembered_inspects``): a run reads the engine's events since the
last run ended (one call), and inspects again every image and stopped container they name,
or all of them when the events cannot tell (see ``_catch_up``). An image whose tags in the listing differ from
the remembered ones is inspected again in any case. Deletions never use remembered answers:
the executor's re-checks always ask the engine. A plan also rests on other images' answers
than the one being deleted (which of a repository's images are the newest, which image pulled
its children into an eviction): a real prune reads those afresh before it runs
(``executor.ranks_changed``) and starts again from fresh answers when one differs; a parent
whose child stays is never touched (``Executor._image``).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import replace
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Mapping, TypeVar

from ..errors import EngineBusy, EngineConflict, EngineError, EngineNotFound, EngineUnreachable
from ..model import Container, ContainerState, Image, Snapshot
from . import convert
from .base import EventMark, ImageState
from .connect import Connection, resolve
from .transport import BadAnswer, Reply, SdkTransport, TimedOut, TransportError, UnixTransport, json_objects, path_of

T = TypeVar("T")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# Never force: the engine's refusals are safety checks. Never an untagged parent with its
# child: it may be outside the plan's scope, or kept by it (the executor deletes the parents
# the plan names, one by one: PlannedObject.hidden_parents).
_NO_FORCE = {"force": False, "noprune": True}


MINIMUM_API_VERSION = "1.24"  # the SDK's minimum: older engines lack what sparkjoy reads
DEFAULT_TIMEOUT = 600  # seconds: listing or pruning a big engine is slow; a short timeout breaks it
INSPECT_WORKERS = 8
DERIVE_SWEEPS = 3  # layer sizes told by other images' (see DockerEngine._layers)
# Engines before 23.0 answer /system/df with a 500 while another df runs (two prunes, or a
# `docker system df`, at once). The call only reads, so a 5xx is retried after a short wait.
DF_RETRIES = 4
DF_RETRY_WAIT_S = 0.1  # doubled each time: at most 1.5 s in all
# The engine answers `GET /events?since=` from a buffer of its last 256 events (moby's
# daemon/events: eventsLimit); an answer that long may have lost the oldest.
EVENT_BUFFER = 256
# Past events come at once; waiting longer than this for them means the engine is not ending
# the answer (then the remembered inspects are not used).
EVENTS_TIMEOUT_S = 10


def _hint(connection: Connection, cause: str) -> str:
    if "permission denied" in cause.lower() or "PermissionError" in cause:
        return (
            "Fix: run sparkjoy as a user allowed to use the Docker socket (root, or a member of the "
            "'docker' group), or point it at another engine with --host / DOCKER_HOST."
        )
    if connection.source == "default socket":
        where = "No --host, DOCKER_HOST or docker context is set, so sparkjoy tried the default socket."
    else:
        where = f"The address came from {connection.source}."
    return (
        f"{where} Fix: start the engine (e.g. `systemctl start docker`), "
        "or point sparkjoy at a running one with --host or DOCKER_HOST (unix://, tcp://, ssh://), "
        "or pick a context with DOCKER_CONTEXT."
    )


def _not_an_engine_hint(connection: Connection) -> str:
    return (f"The address came from {connection.source}. Fix: point sparkjoy at the Docker engine's own socket or "
            "port with --host or DOCKER_HOST (tcp:// engines usually listen on 2375, or 2376 with TLS), or pick "
            "a context with DOCKER_CONTEXT.")


def _unreachable(connection: Connection, error: BaseException) -> EngineUnreachable:
    cause = _plain_cause(connection.base_url, error)
    return EngineUnreachable(connection.base_url, cause, _hint(connection, cause))


def _plain_cause(base_url: str, error: BaseException) -> str:
    """Why a connection failed, in words, instead of the HTTP library's nested exception reprs."""
    texts = []
    seen: BaseException | None = error
    while seen is not None and len(texts) < 10:
        texts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    text = " | ".join(texts)
    if "FileNotFoundError" in text or "No such file or directory" in text:
        if base_url.startswith("unix://"):
            return f"no socket at {base_url.removeprefix('unix://')} (is the engine running?)"
        return "not found (No such file or directory)"
    if "Connection refused" in text or "ConnectionRefusedError" in text:
        return "connection refused: nothing is listening at that address"
    if "Permission denied" in text or "PermissionError" in text:
        return "permission denied"
    if "Name or service not known" in text or "Temporary failure in name resolution" in text:
        return "unknown host name"
    if "timed out" in text.lower():
        return "no answer: the connection timed out"
    return _cause(error).removeprefix("Error while fetching server API version: ")


class DockerEngine:
    """A Docker-compatible engine reached over its REST API (``transport``: http.client on a unix
    socket, the SDK's session for other addresses)."""

    def __init__(
        self,
        connection: Connection,
        timeout: int = DEFAULT_TIMEOUT,
        api_version: str = "auto",
        remember_inspects: bool = False,
    ):
        self.connection = connection
        self.host = connection.base_url
        # Image history never changes for an image ID: read once, from the engine or from an
        # earlier run's answers (``know_histories``).
        self._history_cache: dict[str, Any] = {}
        # Snapshot inspects by image or container id, while the owner says nothing changed.
        self._remembered: dict[str, Any] | None = {} if remember_inspects else None
        # Remembered inspects of an earlier run: trusted only after reading the engine's events
        # since that run's mark, at the next snapshot; the newest event read, for the next mark.
        self._catching_up = False
        # A snapshot's listing asked for ahead (``begin_snapshot``): when, and its answer to come.
        self._listing: tuple[datetime, Future] | None = None
        self._mark: EventMark | None = None
        self._anchor: str | None = None
        # The engine's clock (unix nanoseconds) right after the last snapshot's listing, when it
        # caught up with the events.
        self._snapshot_engine_time: int | None = None
        self._engine_identity = ""
        self._timeout = timeout
        self._version_answer: Any = None  # GET /version as negotiated, for the first snapshot
        if connection.base_url.startswith("unix://"):
            self._transport: UnixTransport | SdkTransport = UnixTransport(
                connection.base_url.removeprefix("unix://"), timeout)
        else:
            sdk_api = self._sdk_client(MINIMUM_API_VERSION)
            self._transport = SdkTransport(sdk_api)
        self.api_version = self._negotiate(api_version)
        self._prefix = f"/v{self.api_version}"
        if isinstance(self._transport, SdkTransport):
            sdk_api._version = self.api_version  # what the SDK's own "auto" sets

    def _sdk_client(self, api_version: str) -> Any:
        """A new Docker SDK client for this engine's address (tcp://, ssh://, npipe://, and the
        daemon's event stream), speaking ``api_version``: no request made."""
        from . import sdk

        try:
            return sdk.client(self.connection.base_url, self.connection.tls, self._timeout, api_version)
        except Exception as error:  # the SDK's and ssh's own errors: the address cannot be reached
            raise _unreachable(self.connection, error) from error

    def _negotiate(self, api_version: str) -> str:
        """The API version to speak: the engine's own (``GET /version``, as the SDK's "auto"
        and the docker CLI do), or ``api_version`` when one is given."""
        if api_version != "auto":
            return api_version
        operation = "read the API version (GET /version)"
        try:
            reply = self._transport.request("GET", "/version")
        except BadAnswer as error:
            raise EngineError(operation, None, f"bad answer from the engine: {_cause(error)}") from error
        except TransportError as error:
            raise _unreachable(self.connection, error) from error
        if reply.status == 404:
            # Every Docker engine serves /version: what answers here is something else.
            raise EngineUnreachable(self.connection.base_url, "something answers there, but not as a Docker engine "
                                    "(GET /version: 404 Not Found)", _not_an_engine_hint(self.connection))
        if reply.status in (502, 503, 504):  # a proxy whose engine is down
            raise _unreachable(self.connection, _StatusError(reply))
        if not 200 <= reply.status < 300:
            raise EngineError(operation, reply.status, f"bad answer from the engine: {_status_text(reply)}")
        try:
            answer = reply.json()
            version = answer["ApiVersion"]
        except (ValueError, KeyError, TypeError) as error:
            raise EngineError(operation, None, "bad answer from the engine: no ApiVersion in the answer "
                              f"({_cause(error)})") from error
        if not isinstance(version, str) or not _version_at_least(version, MINIMUM_API_VERSION):
            raise EngineError("negotiate the API version (GET /version)", None,
                              f"the engine speaks API {version!r}; sparkjoy needs {MINIMUM_API_VERSION} or later")
        self._version_answer = answer
        return version

    def stream_client(self) -> Any:
        """A Docker SDK client of its own for a long-lived stream (the daemon's events, which
        block in a read for as long as they last), on this engine's address and API version:
        no request made."""
        return self._sdk_client(self.api_version)

    def read(self, operation: str, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """GET ``path`` (after the version prefix: ``/images/json``) and return its JSON, with
        the errors of every other call (``operation`` names it in them)."""
        return self._call(operation, "GET", path, params)

    def close(self) -> None:
        """Close the connections kept open (the engine object cannot be used after)."""
        self._transport.close()

    @classmethod
    def connect(
        cls, host: str | None = None, timeout: int = DEFAULT_TIMEOUT, remember_inspects: bool = False
    ) -> "DockerEngine":
        """Given ``--host`` (or None for DOCKER_HOST / context / default), connect and check the engine answers."""
        engine = cls(resolve(host), timeout=timeout, remember_inspects=remember_inspects)
        engine.ping()
        return engine

    def forget(self, object_id: str | None = None) -> None:
        """The engine reported a change to this image or container (None: anything may have
        changed): the next snapshot inspects it again."""
        if self._remembered is None:
            return
        if object_id is None:
            self._remembered.clear()
        else:
            self._remembered.pop(object_id, None)

    def know_inspects(self, inspects: Mapping[str, Any], mark: EventMark | None) -> None:
        """Given image id -> inspect as an earlier run of this engine read them (``State.inspects``)
        and where in the engine's events that run ended (None: there was no such run), use them
        for the images the events since then do not name. The events are read at the next
        snapshot (one call); with no mark, that call only finds where this run ends."""
        if self._remembered is None:
            self._remembered = {}
        if mark is not None:
            self._remembered.update((i, v) for i, v in inspects.items() if isinstance(v, dict))
        self._catching_up = True
        self._mark = mark

    def remembered_inspects(self, snapshot: Snapshot) -> tuple[dict[str, Any], EventMark | None]:
        """Given a snapshot this engine took after ``know_inspects``, return its images' and
        stopped containers' inspects
        (the fields sparkjoy reads) and where a later run must start reading events to trust
        them (None when the engine's clock is unknown: then they must not be used)."""
        known = self._remembered or {}
        inspects = {i.id: known[i.id] for i in snapshot.images if isinstance(known.get(i.id), dict)}
        # A stopped container's too: its finish time changes only with events that name it. Only
        # with an anchor (the newest event read): without one, the next run cannot tell a
        # restart that lost the events (and the executor's re-check reads the finish time anyway).
        if self._anchor is not None:
            inspects.update((c.id, known[c.id]) for c in snapshot.containers if isinstance(known.get(c.id), dict))
        clock = self._snapshot_engine_time
        return inspects, (EventMark(clock, self._anchor, self._engine_identity) if clock is not None else None)

    def _catch_up(self, mark: EventMark | None) -> None:
        """Forget the remembered inspects that the engine's events since ``mark`` say changed;
        all of them when the events cannot tell: no engine clock, another engine behind the
        address (its ID or data root differ), an error, an answer as long as the engine's
        buffer (older events may be lost), the mark's newest event missing from it (the engine
        restarted, and lost its buffer), or an image event that names no image ID (a pull names
        a reference). Keeps the newest event read as the next mark's anchor.

        Called right after the listing: the events up to the engine's clock now cover every
        change before it. The buffer is in publishing order, so every event after the anchor is
        new to this run, whatever its time (an event is stamped before it is published, and a
        clock may step back); with no anchor the whole buffer is read (at most 256 events)."""
        self._anchor = None
        until, identity = self._engine_clock()
        self._snapshot_engine_time, self._engine_identity = until, identity
        since = mark.start_nanos if mark is not None and mark.anchor is not None else 0
        if until is None or until < since or (mark is not None and mark.engine != identity):
            self.forget()
            return
        try:
            events = self._events_between(since, until)
        except EngineError:
            self.forget()
            return
        anchors = [convert.event_anchor(event) for event in events]
        self._anchor = next((a for a in reversed(anchors) if a is not None), None)
        if mark is None:
            return  # nothing remembered: the events only say where this run ends
        if len(events) >= EVENT_BUFFER or (mark.anchor is not None and mark.anchor not in anchors):
            self.forget()
            return
        new = events[anchors.index(mark.anchor) + 1:] if mark.anchor is not None else events
        for event in new:
            changed = convert.changed_object(event)
            if changed is None:
                self.forget()
                return
            if changed:
                self.forget(changed)

    def _events_between(self, since: int, until: int) -> list:
        """The engine's buffered events from ``since`` to ``until`` (unix nanoseconds, ``until`` in
        the past, so the engine ends the answer). The SDK's ``events()`` waits without a timeout,
        for a stream that is meant to last: an engine that kept this one open would hang the run."""
        params = {"since": _seconds_text(since), "until": _seconds_text(until)}
        operation = "read the events since the last run (GET /events)"
        try:
            reply = self._request(operation, "GET", "/events", params, timeout=EVENTS_TIMEOUT_S)
        except EngineError as error:
            if isinstance(error.__cause__, (TimedOut, BadAnswer)):
                raise EngineError(operation, None, f"the events did not come: {_cause(error.__cause__)}") from error
            raise
        try:
            return list(json_objects(reply.body.decode()))
        except ValueError as error:
            raise EngineError(operation, None, f"bad answer from the engine: {_cause(error)}") from error

    def tags_put(self, names: set[str], within_s: float) -> dict[str, set[str]]:
        """Given tag names, return those the engine's events say were put on an image in the last
        ``within_s`` seconds of the engine's clock, with the IDs of the images they were put on."""
        until, _ = self._engine_clock()
        if until is None:
            raise EngineError("read the engine's clock (GET /info)", None, "the engine did not say its time")
        found: dict[str, set[str]] = {}
        events = self._events_between(until - int(within_s * 1e9), until)
        if len(events) >= EVENT_BUFFER:
            raise EngineError("read the events of the run (GET /events)", None,
                              f"{len(events)} events, as many as the engine keeps: older ones may be lost")
        for event in events:
            if not (isinstance(event, dict) and event.get("Type") == "image" and event.get("Action") == "tag"):
                continue
            actor = event.get("Actor")
            attributes = actor.get("Attributes") if isinstance(actor, dict) else None
            name = attributes.get("name") if isinstance(attributes, dict) else None
            image_id = actor.get("ID") if isinstance(actor, dict) else None
            if isinstance(name, str) and name in names and isinstance(image_id, str):
                found.setdefault(name, set()).add(image_id)
        return found

    def clock_nanos(self) -> int | None:
        """The engine's clock now, in unix nanoseconds (the time its events are stamped in), or
        None when it does not say."""
        return self._engine_clock()[0]

    def _engine_clock(self) -> tuple[int | None, str]:
        """From ``GET /info``: the engine's clock now, in unix nanoseconds (to the microsecond;
        the Date header has whole seconds only), or None when it does not say; and what tells
        this engine from another behind the same address (its ID and data root)."""
        try:
            info = self._call("read the engine's clock (GET /info)", "GET", "/info")
        except EngineError:
            return None, ""
        if not isinstance(info, dict):
            return None, ""
        identity = f"{convert.as_str(info.get('ID'))} {convert.as_str(info.get('DockerRootDir'))}"
        moment = convert.parse_time(info.get("SystemTime"))
        if moment is None:
            return None, identity
        return (moment - _EPOCH) // timedelta(microseconds=1) * 1000, identity

    def _forget_retagged(self, image_entries: list[dict]) -> None:
        """Forget remembered image inspects whose tags differ from the listing's (a tag added,
        moved or removed since they were read)."""
        known = self._remembered
        if not known:
            return
        for entry in image_entries:
            inspect = known.get(entry["Id"])
            if not isinstance(inspect, dict):
                continue
            remembered, listed = inspect.get("RepoTags"), entry.get("RepoTags")
            if remembered == listed and isinstance(listed, list):
                continue  # the same list (the common case): the same tags
            if sorted(convert.real_tags(convert.as_strings(remembered))) != sorted(
                    convert.real_tags(convert.as_strings(listed))):
                del known[entry["Id"]]

    def _inspect(self, what: str, object_id: str, path: str) -> Any:
        """Inspect for a snapshot: the remembered answer when there is one. Only the fields
        sparkjoy reads are kept (``convert.image_inspect_essentials``, ``container_inspect_essentials``)."""
        if self._remembered is not None and object_id in self._remembered:
            return self._remembered[object_id]
        answer = self._call(f"inspect {what} {object_id}", "GET", path)
        if what == "image":
            answer = convert.image_inspect_essentials(answer)
        elif what == "container":
            answer = convert.container_inspect_essentials(answer)
        if self._remembered is not None and isinstance(answer, dict):
            self._remembered[object_id] = answer
        return answer

    # -- plumbing -----------------------------------------------------------------------

    def _df(self) -> dict:
        """GET /system/df, retried on a 5xx; an answer that is no object is an error."""
        operation = "read disk usage (GET /system/df)"
        for attempt in range(DF_RETRIES + 1):
            try:
                df = self._call(operation, "GET", "/system/df")
                break
            except EngineError as error:
                if error.status is None or error.status < 500 or attempt == DF_RETRIES:
                    raise
                time.sleep(DF_RETRY_WAIT_S * 2**attempt)
        if not isinstance(df, dict):
            raise EngineError(operation, None, f"expected an object, got {type(df).__name__}")
        return df

    def _request(self, operation: str, method: str, path: str, params: Mapping[str, Any] | None = None,
                 timeout: float | None = None) -> Reply:
        """Make one API call (``path`` after the version prefix) and return its answer, turning
        transport failures and error statuses into sparkjoy errors."""
        try:
            reply = self._transport.request(method, self._prefix + path, params, timeout)
        except TimedOut as error:
            raise EngineError(operation, None, f"timed out: {_cause(error)}") from error
        except BadAnswer as error:
            raise EngineError(operation, None, f"bad answer from the engine: {_cause(error)}") from error
        except TransportError as error:
            raise _unreachable(self.connection, error) from error
        if not 200 <= reply.status < 300:
            # An error, or an answer the API never gives (a redirect, "not modified"): never
            # success. (The engine's own redirects are not followed: it sends none.)
            message = _status_text(reply)
            if reply.status == 404:
                raise EngineNotFound(operation, 404, message)
            if reply.status == 409:
                raise EngineConflict(operation, 409, message)
            raise EngineError(operation, reply.status, message)
        return reply

    def _call(self, operation: str, method: str, path: str, params: Mapping[str, Any] | None = None,
              timeout: float | None = None) -> Any:
        """``_request``, and the answer's JSON. Every call made this way answers JSON: an empty
        or unreadable body is a bad answer, never success (a deletion answered so did not
        happen as far as anyone can tell; the executor's re-check then looks)."""
        reply = self._request(operation, method, path, params, timeout)
        try:
            return reply.json()
        except ValueError as error:
            what = "an empty answer" if not reply.body.strip() else _cause(error)
            raise EngineError(operation, None, f"bad answer from the engine: {what}") from error

    # -- reading ------------------------------------------------------------------------

    def ping(self) -> None:
        try:
            self._request("ping (GET /_ping)", "GET", "/_ping")
        except EngineUnreachable:
            raise
        except EngineError as error:
            if error.status is not None and 400 <= error.status < 500:
                # It answered, and refused: an API version it does not speak, a socket
                # proxy forbidding the call. Reachable, so not "start the engine".
                raise
            cause = error.message if error.status is not None else str(error)
            raise EngineUnreachable(self.host, cause, _hint(self.connection, cause)) from error

    def begin_snapshot(self) -> None:
        """Ask the engine for the next snapshot's listing (``GET /system/df``) now, in the
        background: the engine takes most of a snapshot's time to answer it, time the caller
        can spend reading its state database meanwhile. ``snapshot()`` then takes that answer."""
        if self._listing is None:
            ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sparkjoy-df")
            self._listing = (datetime.now(timezone.utc), ahead.submit(self._df))
            ahead.shutdown(wait=False)  # the thread ends with its one call

    def snapshot(self) -> Snapshot:
        if self._listing is not None:
            (taken_at, listing), self._listing = self._listing, None
            df = listing.result()  # its error, if it failed, raised here
        else:
            taken_at = datetime.now(timezone.utc)
            df = self._df()
        image_entries = [e for e in df.get("Images") or [] if isinstance(e, dict) and convert.as_str(e.get("Id"))]
        container_entries = [
            e for e in df.get("Containers") or [] if isinstance(e, dict) and convert.as_str(e.get("Id"))
        ]
        cache_entries = df.get("BuildCache")
        build_cache_supported = cache_entries is not None or "BuildCache" in df
        records = tuple(
            r for r in (convert.build_cache_from(e) for e in cache_entries or [] if isinstance(e, dict)) if r.id
        )
        volumes = tuple(
            v for v in (convert.volume_from(e) for e in df.get("Volumes") or [] if isinstance(e, dict)) if v.name
        )
        any_shared_record = any(r.shared and r.size > 0 for r in records)
        if self._catching_up:
            self._catching_up = False
            self._catch_up(self._mark)
        self._forget_retagged(image_entries)

        def needs_layers(entry: dict) -> bool:
            return convert.as_int(entry.get("SharedSize"), 0) != 0 or any_shared_record

        def read_inspect(entry: dict):
            try:
                answer = self._inspect("image", entry["Id"], path_of("/images/{}/json", entry["Id"]))
            except EngineNotFound:
                return None  # deleted since the listing
            if not isinstance(answer, dict):  # not "deleted": an image left out could be a child that stays
                raise EngineError(f"inspect image {entry['Id']}", None,
                                  f"bad answer from the engine: expected an object, got {type(answer).__name__}")
            return answer

        def read_container(entry: dict):
            state = convert.as_str(entry.get("State")).lower()
            inspect = None
            if state in (ContainerState.EXITED.value, ContainerState.DEAD.value):
                try:
                    inspect = self._inspect("container", entry["Id"], path_of("/containers/{}/json", entry["Id"]))
                except EngineNotFound:
                    return None
            return convert.container_from(entry, inspect)

        known = self._remembered or {}

        def image_asks(entry: dict) -> bool:
            return entry["Id"] not in known

        def container_asks(entry: dict) -> bool:
            return entry["Id"] not in known

        with ThreadPoolExecutor(max_workers=INSPECT_WORKERS) as pool:
            inspects = _read_all(pool, read_inspect, image_entries, image_asks)
            read = [(entry, inspect) for entry, inspect in zip(image_entries, inspects) if inspect is not None]
            layers = self._layers(pool, [(e, i) for e, i in read if needs_layers(e)])
            images = tuple(convert.image_from(e, i, layers.get(e["Id"], ())) for e, i in read)
            containers = tuple(
                c for c in _read_all(pool, read_container, container_entries, container_asks) if c is not None
            )
        images = self._with_listed_parents(images)

        if self._remembered is not None and "version" in self._remembered:
            version = self._remembered["version"]  # the same engine process: a restart ends its event stream
        else:
            if self._version_answer is not None:
                version, self._version_answer = self._version_answer, None  # read when this engine was reached
            else:
                version = self._call("read engine version", "GET", "/version")
            if self._remembered is not None:
                self._remembered["version"] = version
        return Snapshot(
            taken_at=taken_at,
            images=images,
            containers=containers,
            build_cache=records,
            volumes=volumes,
            layers_size=max(convert.as_int(df.get("LayersSize"), 0), 0),
            api_version=self.api_version,
            engine_version=convert.as_str(version.get("Version")) if isinstance(version, dict) else "",
            build_cache_supported=build_cache_supported,
        )

    def _layers(self, pool: ThreadPoolExecutor, wanted: list[tuple[dict, Any]]) -> dict[str, tuple]:
        """Given the listing's entries and inspects of the images whose layers matter, return
        their layers with sizes (image id -> layers; () where they cannot be told), reading as
        few histories as will do.

        A history read (or remembered) gives the sizes of that image's layers, by chain ID;
        an image whose layers' sizes are then all known but one needs no history of its own
        (``convert.derived_layers``). So first the remembered histories; then, in a round,
        one history for each layer of unknown size that two or more of the remaining images
        hold; what is still left after two rounds (images with several layers of their own)
        has its own history read, as before. The layers told are kept with each image's
        inspect (``convert.TOLD_LAYERS``): when that is remembered, a later snapshot takes them
        as they are."""
        known: dict[str, int] = {}
        found: dict[str, tuple] = {}
        pending: dict[str, tuple[Any, int, list[str]]] = {}
        shared: dict[str, int] = {}
        holders: Counter[str] = Counter()  # chain id -> how many of the listed images hold it
        inspects: dict[str, Any] = {}
        for entry, inspect in wanted:
            image_id = entry["Id"]
            if image_id in found or image_id in pending:
                continue  # listed twice: once is enough
            told = convert.told_layers(inspect)
            if told is not None:  # told by an earlier snapshot
                found[image_id] = told
                known.update((layer.chain_id, layer.size) for layer in told)
                continue
            inspects[image_id] = inspect
            size = convert.as_int(entry.get("Size"), -1)
            chains = convert.layer_chains(inspect)
            holders.update(chains)
            shared[image_id] = convert.as_int(entry.get("SharedSize"), -1)
            if image_id in self._history_cache:
                found[image_id] = convert.layers_from(inspect, self._history_cache[image_id], size)
                known.update((layer.chain_id, layer.size) for layer in found[image_id])
            else:
                pending[image_id] = (inspect, size, chains)
        for rounds in itertools.count(1):
            for _ in range(DERIVE_SWEEPS):  # a sweep's findings can tell more: sweep again, a few times
                derived_any = False
                for image_id, (_, size, chains) in list(pending.items()):
                    left = [chain for chain in chains if chain not in known]
                    derived = convert.derived_layers(chains, size, shared[image_id], known,
                                                     held_elsewhere=len(left) == 1 and holders[left[0]] > 1)
                    if derived is not None:
                        found[image_id] = derived
                        known.update((layer.chain_id, layer.size) for layer in derived)
                        del pending[image_id]
                        derived_any = True
                if not derived_any:
                    break
            if not pending:
                break
            pick = list(pending)
            if rounds <= 2:
                # For each layer of unknown size two or more images hold, the holder with the
                # most such layers: its history tells the most (and it needs its own anyway).
                pending_holders: dict[str, list[str]] = {}
                unknown: dict[str, int] = {}
                for image_id, (_, _, chains) in pending.items():
                    for chain in chains:
                        if chain not in known:
                            pending_holders.setdefault(chain, []).append(image_id)
                            unknown[image_id] = unknown.get(image_id, 0) + 1
                best = (max(ids, key=unknown.__getitem__) for ids in pending_holders.values() if len(ids) > 1)
                pick = list(dict.fromkeys(best)) or pick
            for image_id, history in zip(pick, pool.map(self._history, pick)):
                inspect, size, _ = pending.pop(image_id)
                found[image_id] = convert.layers_from(inspect, history, size)
                known.update((layer.chain_id, layer.size) for layer in found[image_id])
        remembered = self._remembered
        if remembered is not None:
            for image_id, inspect in inspects.items():
                if remembered.get(image_id) is inspect:
                    remembered[image_id] = convert.with_told_layers(inspect, found[image_id])
        return found

    def _with_listed_parents(self, images: tuple[Image, ...]) -> tuple[Image, ...]:
        """Point each image's parent at its nearest ancestor among the listed images.

        The classic builder chains an image to its base through intermediate images that
        ``/system/df`` does not list. Without this, the planner cannot see that a base has a
        child that stays: it would untag the base, and the engine would then refuse to delete it.
        """
        listed = {image.id for image in images}
        nearest: dict[str, tuple[str, tuple[str, ...]]] = {}  # unlisted id -> (listed ancestor or "", hidden chain)
        layer_counts: dict[str, int] = {}  # unlisted id -> how many layers it has

        def listed_ancestor(parent_id: str) -> tuple[str, tuple[str, ...]]:
            chain: list[str] = []
            current = parent_id
            above: tuple[str, ...] = ()
            while current and current not in listed:
                if current in nearest:
                    current, above = nearest[current]
                    break
                if current in chain:  # a loop in the engine's answers: no usable ancestor
                    current = ""
                    break
                chain.append(current)
                try:
                    inspect = self._call(f"inspect image {current}", "GET", path_of("/images/{}/json", current))
                except EngineNotFound:
                    chain.pop()
                    current = ""
                    break
                if not isinstance(inspect, dict):
                    # Only a 404 means "no ancestor": read as one, a child that stays would lose
                    # the link that keeps its base.
                    raise EngineError(f"inspect image {current}", None, "bad answer from the engine: expected an "
                                      f"object, got {type(inspect).__name__}")
                root = inspect.get("RootFS")
                layers = root.get("Layers") if isinstance(root, dict) else None
                layer_counts[current] = len(layers) if isinstance(layers, list) else 0
                current = convert.as_str(inspect.get("Parent"))
            for at, hidden in enumerate(chain):
                nearest[hidden] = (current, (*chain[at:], *above))
            return current, (*chain, *above)

        def linked(image: Image) -> Image:
            ancestor, hidden = listed_ancestor(image.parent_id)
            held = layer_counts.get(hidden[0], 0) if hidden else 0
            return replace(image, parent_id=ancestor, hidden_parents=hidden, hidden_parent_layers=held)

        return tuple(
            linked(image) if image.parent_id and image.parent_id not in listed else image
            for image in images
        )

    def know_histories(self, histories: Mapping[str, Any]) -> None:
        """Given image id -> history steps read by an earlier run of this engine (``State.histories``),
        use them instead of asking the engine again."""
        self._history_cache.update((i, h) for i, h in histories.items() if isinstance(h, list))

    def histories_of(self, snapshot: Snapshot) -> dict[str, list]:
        """Given a snapshot this engine took, return the history steps read for its images
        (image id -> steps), to hand to a later run as ``histories``."""
        known = self._history_cache
        found = {i.id: convert.history_steps(known.get(i.id)) for i in snapshot.images}
        return {image_id: steps for image_id, steps in found.items() if steps is not None}

    def _history(self, image_id: str) -> Any:
        if image_id not in self._history_cache:
            try:
                self._history_cache[image_id] = self._call(
                    f"read history of image {image_id}", "GET", path_of("/images/{}/history", image_id)
                )
            except EngineNotFound:
                return None
        return self._history_cache[image_id]

    def usage(self) -> int:
        from ..usage import engine_usage

        df = self._df()
        records = tuple(convert.build_cache_from(e) for e in df.get("BuildCache") or [] if isinstance(e, dict))
        containers = tuple(convert.container_from(e, None) for e in df.get("Containers") or [] if isinstance(e, dict))
        volumes = tuple(convert.volume_from(e) for e in df.get("Volumes") or [] if isinstance(e, dict))
        return engine_usage(
            Snapshot(
                taken_at=datetime.now(timezone.utc),
                images=(),
                containers=containers,
                build_cache=records,
                volumes=volumes,
                layers_size=max(convert.as_int(df.get("LayersSize"), 0), 0),
            )
        )

    def image_state(self, image_id: str) -> ImageState | None:
        try:
            inspect = self._call(f"inspect image {image_id}", "GET", path_of("/images/{}/json", image_id))
        except EngineNotFound:
            return None
        if not isinstance(inspect, dict):
            raise EngineError(f"inspect image {image_id}", None, "unexpected answer")
        found_id = convert.as_str(inspect.get("Id"))
        if found_id != image_id:
            return None
        metadata = inspect.get("Metadata")
        last_tag = convert.parse_time(metadata.get("LastTagTime")) if isinstance(metadata, dict) else None
        return ImageState(found_id, convert.real_tags(convert.as_strings(inspect.get("RepoTags"))), last_tag,
                          convert.real_digests(convert.as_strings(inspect.get("RepoDigests"))))

    def containers_of_image(self, image_id: str) -> list[Container]:
        entries = self._call(
            f"list containers of image {image_id}", "GET", "/containers/json",
            {"all": True, "filters": {"ancestor": [image_id]}},
        )
        if not isinstance(entries, list):
            # This answer is the last check that no container uses the image: an answer
            # that cannot be read must stop the deletion, not read as "no containers".
            raise EngineError(f"list containers of image {image_id}", None,
                              f"bad answer from the engine: expected a list, got {type(entries).__name__}")
        found = [convert.container_from(e, None) for e in entries if isinstance(e, dict)]
        # `ancestor` also matches containers of child images: those pin this image too.
        return found

    def untag(self, tag: str) -> list[dict]:
        return self._deletion(f"untag {tag}", tag)

    def delete_image(self, image_id: str) -> list[dict]:
        return self._deletion(f"delete image {image_id}", image_id)

    def _deletion(self, operation: str, reference: str) -> list[dict]:
        """DELETE /images/{reference}, never forced; the engine's list of what it untagged and
        deleted (an answer that is no list is a bad answer, not an empty one)."""
        answer = self._call(operation, "DELETE", path_of("/images/{}", reference), _NO_FORCE)
        if not isinstance(answer, list):
            raise EngineError(operation, None, f"bad answer from the engine: expected a list, got "
                              f"{type(answer).__name__}")
        return answer

    def container_state(self, container_id: str) -> Container | None:
        try:
            inspect = self._call(f"inspect container {container_id}", "GET",
                                 path_of("/containers/{}/json", container_id))
        except EngineNotFound:
            return None
        if not isinstance(inspect, dict):
            raise EngineError(f"inspect container {container_id}", None, "unexpected answer")
        config = inspect.get("Config") if isinstance(inspect.get("Config"), dict) else {}
        summary = {
            "Id": inspect.get("Id"),
            "Names": [inspect.get("Name")] if isinstance(inspect.get("Name"), str) else [],
            "ImageID": inspect.get("Image"),
            "Image": config.get("Image"),
            "Created": inspect.get("Created"),
            "Labels": config.get("Labels"),
        }
        return convert.container_from(summary, inspect)

    def remove_container(self, container_id: str) -> None:
        self._request(f"remove container {container_id}", "DELETE", path_of("/containers/{}", container_id),
                      {"v": False, "force": False})

    def prune_build_cache_record(self, record_id: str) -> tuple[bool, int]:
        # `all` lets the filter reach shared and internal records; the `id` filter keeps it to
        # exactly this record (the engine ignores label filters here, so never scope by label).
        try:
            result = self._call(f"prune build cache record {record_id}", "POST", "/build/prune",
                                {"filters": {"id": [record_id]}, "all": True})
        except EngineConflict as error:
            raise EngineBusy(error.operation, error.status, error.message) from error
        if not isinstance(result, dict):
            return False, 0
        deleted = [d for d in result.get("CachesDeleted") or [] if isinstance(d, str)]
        return record_id in deleted, max(convert.as_int(result.get("SpaceReclaimed"), 0), 0)

    def volume_exists(self, name: str) -> bool:
        try:
            self._call(f"inspect volume {name}", "GET", path_of("/volumes/{}", name))
        except EngineNotFound:
            return False
        return True

    def remove_volume(self, name: str) -> None:
        self._request(f"remove volume {name}", "DELETE", path_of("/volumes/{}", name))


def _read_all(pool: ThreadPoolExecutor, read: Callable[[dict], T], entries: list[dict],
              asks: Callable[[dict], bool]) -> list[T]:
    """Given entries and how to read each, return the readings in the entries' order: those that
    may ask the engine (``asks``) in the pool, the others (answers remembered) right here, where
    handing them to a thread would cost more than reading them."""
    results: list[Any] = [None] * len(entries)
    asking = [index for index, entry in enumerate(entries) if asks(entry)]
    for index, reading in zip(asking, pool.map(lambda index: read(entries[index]), asking)):
        results[index] = reading
    asked = set(asking)
    for index, entry in enumerate(entries):
        if index not in asked:
            results[index] = read(entry)
    return results


def _seconds_text(nanos: int) -> str:
    """Given unix nanoseconds, return the API's ``seconds.nanoseconds`` form (``since``, ``until``)."""
    return f"{nanos // 1_000_000_000}.{nanos % 1_000_000_000:09d}"


class _StatusError(Exception):
    """An error status, as the cause of an EngineUnreachable (a proxy answering for its engine)."""

    def __init__(self, reply: Reply):
        super().__init__(_status_text(reply))


def _status_text(reply: Reply) -> str:
    """What an error answer says, or its status when it says nothing."""
    return reply.message() or f"HTTP {reply.status}"


def _version_at_least(version: str, minimum: str) -> bool:
    try:
        return tuple(int(p) for p in version.split(".")) >= tuple(int(p) for p in minimum.split("."))
    except ValueError:
        return False


def _cause(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
