"""Learning from the engine's event stream: last use per image, builds, classic builds in progress.

Three parts:

- ``observe(event)``: pure. Given one decoded event (``GET /events``), return what it tells
  us (an image used, an image tagged, a build container appearing or going) or None.
- ``EventInterpreter``: turns observations into image IDs (asking the engine which image a
  container runs, or which image a reference names, through a small ``Resolver``), counts
  builds, and tracks the classic builder's step containers.
- ``EventStream``: a thread reading ``APIClient.events(since=..., decode=True)`` into a queue.
  Started again after each reconnect from the last event time saved in the state database,
  so events missed while sparkjoy was down are replayed, as far as the engine still has
  them (dockerd keeps its last 256 events in memory, and none across its own restart).

What counts as a use: a container created, started, restarted, stopped, dying or removed
(the image is in use until then), an image tagged, loaded, imported or pulled. What counts
as a build: an image of the scope tagged, as the engine itself reports it, whatever tool
ran the build (several tags of one image within a few seconds are one build). A classic
(non-BuildKit) build is in progress while a step container exists: the classic builder
creates each step's container from an image ID and attaches to it (a container created that
way counts from its creation until it starts unattached, for at most
CLASSIC_STEP_GAP_SECONDS unattached: a `docker create` of an image ID is no build). It stays in progress while a
step that ended is committed (from its container's death until the container is
removed, at most CLASSIC_COMMIT_LIMIT_SECONDS: a failed step's container is kept), and for
CLASSIC_STEP_GAP_SECONDS after, until the next step's container appears or the build's
image is tagged: between two steps no container exists, yet the build is not done.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, Protocol

from ..engine.convert import event_object_id
from ..model import Image
from ..policy import Policy

log = logging.getLogger("sparkjoy.daemon.events")

CONTAINER_USE_ACTIONS = frozenset({"create", "start", "restart", "stop", "die", "destroy", "unpause"})
IMAGE_USE_ACTIONS = frozenset({"tag", "load", "import", "pull"})
# A classic build between two steps: the step that ended is committed, then the next
# step's container is created. Both are quick, but a big layer's commit takes a while.
CLASSIC_STEP_GAP_SECONDS = 5.0
CLASSIC_COMMIT_LIMIT_SECONDS = 120.0
# Several tags of one image within this many seconds are one build (`docker build -t a -t b`).
BUILD_DEDUP_SECONDS = 10.0


@dataclass(frozen=True)
class Observation:
    """What one event tells us. ``ref``: an image ID or reference to resolve; ``container``: a container ID."""

    nanos: int
    action: str  # "container:start", "image:tag", ...
    ref: str = ""
    container: str = ""
    tag: str = ""  # the new tag, for image:tag

    @property
    def when(self) -> datetime:
        return datetime.fromtimestamp(self.nanos / 1e9, tz=timezone.utc)


def event_nanos(event: Mapping[str, Any]) -> int | None:
    nanos = event.get("timeNano")
    if isinstance(nanos, int) and not isinstance(nanos, bool) and nanos > 0:
        return nanos
    seconds = event.get("time")
    if isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0:
        return seconds * 1_000_000_000
    return None


def observe(event: Any) -> Observation | None:
    """Given one decoded engine event, return what it tells about image use and builds, or None.

    Example: ``{"Type": "container", "Action": "start", "id": "c1", "from": "app:1",
    "timeNano": 1700000000000000000}`` -> ``Observation(1700000000000000000, "container:start",
    ref="app:1", container="c1")``.
    """
    if not isinstance(event, Mapping):
        return None
    nanos = event_nanos(event)
    if nanos is None:
        return None
    kind = event.get("Type")
    action = event.get("Action") or event.get("status")
    actor = event.get("Actor") if isinstance(event.get("Actor"), Mapping) else {}
    attributes = actor.get("Attributes") if isinstance(actor.get("Attributes"), Mapping) else {}
    object_id = event_object_id(event)
    if not isinstance(action, str) or not isinstance(object_id, str):
        return None
    if kind == "container":
        if action not in CONTAINER_USE_ACTIONS and action != "attach":
            return None
        ref = event.get("from") or attributes.get("image") or ""
        return Observation(nanos, f"container:{action}", ref=str(ref), container=object_id)
    if kind == "image" and action in IMAGE_USE_ACTIONS:
        tag = attributes.get("name") if action == "tag" else ""
        return Observation(nanos, f"image:{action}", ref=object_id, tag=str(tag or ""))
    return None


class Resolver(Protocol):
    """The questions the interpreter asks the engine. Each returns None when the object is gone."""

    def image_of_container(self, container_id: str) -> str | None: ...

    def image_id(self, ref: str) -> str | None: ...

    def image(self, image_id: str) -> Image | None: ...


@dataclass
class Learned:
    """What a batch of events taught: image id -> latest use, builds counted, the last event's time."""

    uses: dict[str, datetime]
    builds: int = 0
    build_finished: bool = False
    last_nanos: int | None = None
    last_build_nanos: int | None = None  # when the newest build counted was tagged (engine clock)


class EventInterpreter:
    """Turns observations into image IDs and build counts; tracks classic builds in progress."""

    def __init__(self, resolver: Resolver, policy: Policy, clock: Callable[[], float] = time.monotonic):
        self.resolver = resolver
        self.policy = policy
        self._clock = clock
        self._container_images: OrderedDict[str, str] = OrderedDict()
        self._last_build: tuple[str, float] | None = None
        # Containers created from an image ID, not yet attached or started -> give up at.
        self._classic_created: dict[str, float] = {}
        self.classic_build_containers: set[str] = set()  # step containers running
        self._classic_committing: dict[str, float] = {}  # step container that died -> give up at
        self._classic_gap_until: float | None = None

    def classic_build_in_progress(self) -> bool:
        """True while a classic build's step runs, is committed, or the next one may follow."""
        if self.classic_build_containers:
            return True
        now = self._clock()
        for waiting in (self._classic_created, self._classic_committing):
            for container, limit in list(waiting.items()):
                if now >= limit:
                    del waiting[container]
        if self._classic_created or self._classic_committing:
            return True
        return self._classic_gap_until is not None and now < self._classic_gap_until

    def learn(self, observations: list[Observation]) -> Learned:
        learned = Learned(uses={})
        for observation in observations:
            try:
                self._learn_one(observation, learned)
            except Exception as error:  # one odd event never stops the stream
                log.debug("could not interpret event %s: %s", observation, error)
            if learned.last_nanos is None or observation.nanos > learned.last_nanos:
                learned.last_nanos = observation.nanos
        return learned

    def _learn_one(self, observation: Observation, learned: Learned) -> None:
        when = observation.when
        if observation.action.startswith("container:"):
            action = observation.action.split(":", 1)[1]
            self._track_classic_build(observation, action)
            if action == "attach":
                return
            image_id = self._container_image(observation)
            if image_id:
                _latest(learned.uses, image_id, when)
            if action == "destroy":
                self._container_images.pop(observation.container, None)
            return
        image_id = observation.ref if observation.ref.startswith("sha256:") else self.resolver.image_id(observation.ref)
        if not image_id:
            return
        _latest(learned.uses, image_id, when)
        if observation.action == "image:tag":
            self._classic_gap_until = None  # a classic build tags its image when it is done
        if observation.action == "image:tag" and self._is_new_build(image_id, observation.nanos):
            image = self.resolver.image(image_id)
            if image is not None and self.policy.image_in_scope(image) is None:
                learned.builds += 1
                learned.build_finished = True
                if learned.last_build_nanos is None or observation.nanos > learned.last_build_nanos:
                    learned.last_build_nanos = observation.nanos

    def _container_image(self, observation: Observation) -> str | None:
        cached = self._container_images.get(observation.container)
        if cached:
            return cached
        image_id = None
        if observation.container:
            image_id = self.resolver.image_of_container(observation.container)
        if not image_id and observation.ref:
            image_id = observation.ref if observation.ref.startswith("sha256:") else self.resolver.image_id(observation.ref)
        if image_id and observation.container:
            self._container_images[observation.container] = image_id
            while len(self._container_images) > 10_000:
                self._container_images.popitem(last=False)
        return image_id

    def _is_new_build(self, image_id: str, nanos: int) -> bool:
        seconds = nanos / 1e9
        previous = self._last_build
        self._last_build = (image_id, seconds)
        return not (previous and previous[0] == image_id and seconds - previous[1] < BUILD_DEDUP_SECONDS)

    def _track_classic_build(self, observation: Observation, action: str) -> None:
        # The classic builder creates each step's container from an image ID, attaches to it,
        # and removes it when the step is done.
        container = observation.container
        if action == "create" and observation.ref.startswith("sha256:"):
            # A build attaches at once; a `docker create` of an image ID never does.
            self._classic_created[container] = self._clock() + CLASSIC_STEP_GAP_SECONDS
            self._classic_gap_until = None
        elif action == "attach" and container in self._classic_created:
            del self._classic_created[container]
            self.classic_build_containers.add(container)
        elif action == "start":
            self._classic_created.pop(container, None)  # started unattached: a `docker run -d`
        elif action == "die" and container in self.classic_build_containers:
            self.classic_build_containers.discard(container)
            self._classic_committing[container] = self._clock() + CLASSIC_COMMIT_LIMIT_SECONDS
        elif action == "destroy":
            was_step = container in self.classic_build_containers or container in self._classic_committing \
                or container in self._classic_created
            self.classic_build_containers.discard(container)
            self._classic_committing.pop(container, None)
            self._classic_created.pop(container, None)
            if was_step:
                self._classic_gap_until = self._clock() + CLASSIC_STEP_GAP_SECONDS

    def forget_builds_in_progress(self) -> None:
        """After a reconnect nothing is known about containers of before: start afresh."""
        self._classic_created.clear()
        self.classic_build_containers.clear()
        self._classic_committing.clear()
        self._classic_gap_until = None


def _latest(uses: dict[str, datetime], image_id: str, when: datetime) -> None:
    if image_id not in uses or when > uses[image_id]:
        uses[image_id] = when


def since_parameter(nanos: int | None) -> str | None:
    """Given the last event time read (nanoseconds), return the engine's ``since`` value to resume from."""
    if nanos is None:
        return None
    seconds, rest = divmod(nanos, 1_000_000_000)
    return f"{seconds}.{rest:09d}"


class EventStream:
    """Reads the engine's events in a thread into ``output`` as (self, "event", dict), then (self, "ended", why)."""

    def __init__(self, open_stream: Callable[[str | None], Any], since_nanos: int | None,
                 output: "queue.Queue[tuple[Any, str, Any]]"):
        self._open_stream = open_stream
        self.since_nanos = since_nanos
        self.output = output
        self._stream: Any = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sparkjoy-events", daemon=True)

    def start(self) -> "EventStream":
        self._thread.start()
        return self

    def _run(self) -> None:
        why = "event stream ended (engine stopped or restarted?)"
        try:
            self._stream = self._open_stream(since_parameter(self.since_nanos))
            self.output.put((self, "connected", None))
            for event in self._stream:
                if self._closed.is_set():
                    break
                nanos = event_nanos(event) if isinstance(event, Mapping) else None
                # `since` is inclusive: skip what was already read before the reconnect.
                if nanos is not None and self.since_nanos is not None and nanos <= self.since_nanos:
                    continue
                self.output.put((self, "event", event))
        except Exception as error:  # any transport failure means: reconnect
            why = f"event stream failed: {type(error).__name__}: {str(error)[:200]}"
        if not self._closed.is_set():
            self.output.put((self, "ended", why))

    def close(self) -> None:
        self._closed.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:
                pass

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


class DockerResolver:
    """``Resolver`` over a ``DockerEngine``'s calls; any failure answers None."""

    def __init__(self, engine: Any):
        self.engine = engine

    def _inspect(self, kind: str, ref: str) -> Any:
        from ..engine.transport import path_of

        try:
            found = self.engine.read(f"inspect {kind} {ref}", path_of(f"/{kind}s/{{}}/json", ref))
        except Exception:
            return None
        return found if isinstance(found, dict) else None

    def image_of_container(self, container_id: str) -> str | None:
        found = (self._inspect("container", container_id) or {}).get("Image")
        return found if isinstance(found, str) and found else None

    def image_id(self, ref: str) -> str | None:
        if not ref:
            return None
        found = (self._inspect("image", ref) or {}).get("Id")
        return found if isinstance(found, str) and found else None

    def image(self, image_id: str) -> Image | None:
        from ..engine import convert

        inspect = self._inspect("image", image_id)
        if inspect is None:
            return None
        return convert.image_from({}, inspect, ())
