"""The supervisor loop of ``sparkjoy run``: connect, learn, decide, prune, and stay up.

One thread does the work: it reads what the event stream (a thread of its own) and the
HTTP hooks (request threads) put on one queue, records what it learned in the state
database, asks ``triggers.decide`` whether to prune, and prunes with the same snapshot,
planner and executor as ``sparkjoy prune``. Nothing else writes state or deletes.

Staying up:

- The engine going away (event stream ends, a call fails to connect) means: reconnect
  with exponential backoff (1s doubling to ``backoff_max``), replaying the events missed
  meanwhile from the last event time saved.
- ``request_stop()`` (SIGTERM, SIGINT) lets the deletion in progress finish (the executor
  checks between objects), then everything is saved (each write is its own transaction
  anyway) and ``run()`` returns 0.
- A lock file next to the state database, named after the engine's address and held with
  ``flock``, keeps a second daemon for the same engine from starting.

Logs: one summary line per prune (trigger, objects removed per kind, bytes reclaimed as
measured), one line per decision change ("waiting for 1 build in progress"), details at
debug level; plain text or JSON lines (``configure_logging``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import queue
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .. import config
from ..engine.connect import resolve
from ..engine.convert import changed_object
from ..engine.docker_engine import DockerEngine
from ..errors import ConfigError, EngineError, EngineUnreachable, SparkjoyError
from ..executor import Executor, ObjectResult, Outcome, RunResult, ranks_changed
from ..model import Kind, Snapshot
from ..planner import plan as make_plan
from ..usage import engine_usage
from ..policy import Policy
from ..state import State
from ..units import format_bytes, format_duration
from .events import DockerResolver, EventInterpreter, EventStream, observe
from .settings import DaemonSettings, lock_path
from .triggers import Decision, Situation, Trigger, TriggerSettings, decide, due_trigger
from .watermarks import Eviction, eviction_policy, plan_eviction

log = logging.getLogger("sparkjoy.daemon")

PING_EVERY_SECONDS = 15.0
# While a due prune waits for a build, how often to look at the engine again (/system/df).
BUILD_CHECK_EVERY_SECONDS = 10.0
# After a failed snapshot or plan, how long before trying again.
RETRY_AFTER_FAILURE_SECONDS = 60.0
# Prunes that could not start, in a row, before the daemon reconnects: the connection itself
# (an API version negotiated with an engine that answered wrongly, say) may be what fails.
RECONNECT_AFTER_FAILED_STARTS = 3


class DaemonAlreadyRunning(SparkjoyError):
    """Another sparkjoy daemon holds the lock for this engine."""

    def __init__(self, host: str, lock_file: Path, holder: str):
        self.host = host
        self.lock_file = lock_file
        super().__init__(
            f"another sparkjoy daemon already manages the engine at {host} (lock {lock_file} is held"
            f"{', by ' + holder if holder else ''}); only one may run per engine"
        )


class _EngineLost(Exception):
    def __init__(self, why: str):
        self.why = why
        super().__init__(why)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


class BuildIdInUse(Exception):
    """A build was announced with the id of one in progress."""


@dataclass(frozen=True)
class PruneSummary:
    """One prune, as the summary log line tells it."""

    trigger: str
    reason: str
    at: datetime
    duration_seconds: float
    removed: dict[str, int]
    reclaimed_bytes: int
    predicted_bytes: int
    failures: int
    stopped_early: str = ""
    note: str = ""
    result: RunResult | None = field(default=None, repr=False, compare=False)

    def line(self) -> str:
        removed = ", ".join(_count(count, kind) for kind, count in self.removed.items() if count) or "nothing"
        text = (f"prune trigger={self.trigger}: removed {removed}; reclaimed {format_bytes(self.reclaimed_bytes)} "
                f"measured (predicted {format_bytes(self.predicted_bytes)}); {self.failures} failed; "
                f"took {self.duration_seconds:.1f}s")
        if self.stopped_early:
            text += f"; stopped early: {self.stopped_early}"
        return text

    def fields(self) -> dict[str, Any]:
        return {
            "event": "prune", "trigger": self.trigger, "reason": self.reason, "removed": self.removed,
            "reclaimed_bytes": self.reclaimed_bytes, "predicted_bytes": self.predicted_bytes,
            "failures": self.failures, "duration_seconds": round(self.duration_seconds, 3),
            "stopped_early": self.stopped_early or None, "note": self.note or None,
        }


def _count(count: int, kind: str) -> str:
    noun = "build-cache record" if kind == Kind.BUILD_CACHE.value else kind
    return f"{count} {noun}" + ("" if count == 1 else "s")


class _DebugReporter:
    def object_done(self, result: ObjectResult) -> None:
        planned = result.planned
        log.debug("%s %s %s %s%s", result.outcome.value, planned.kind.value, planned.id,
                  ",".join(planned.names), f": {result.detail}" if result.detail else "")


class Supervisor:
    """The daemon. ``run()`` blocks until ``request_stop()``; returns the exit code (0).

    ``clock`` gives the current UTC time (inject one to judge ages as of another time);
    ``metrics`` (a ``daemon.metrics.Metrics``) and ``serve_http`` wire the HTTP side;
    ``tick_seconds``, ``pressure_check_seconds``, ``backoff_max_seconds`` and
    ``build_check_seconds`` are the loop's pacing, shortened by tests.
    """

    def __init__(
        self,
        settings: config.Settings,
        daemon: DaemonSettings,
        *,
        clock: Callable[[], datetime] = utc_now,
        metrics: Any = None,
        serve_http: bool = True,
        tick_seconds: float = 1.0,
        pressure_check_seconds: float = 30.0,
        backoff_max_seconds: float = 30.0,
        build_check_seconds: float = BUILD_CHECK_EVERY_SECONDS,
    ):
        self.settings = settings
        self.daemon = daemon
        self.policy = settings.policy
        self.clock = clock
        self.tick_seconds = tick_seconds
        self.pressure_check_seconds = pressure_check_seconds
        self.backoff_max_seconds = backoff_max_seconds
        self.build_check_seconds = build_check_seconds
        self.triggers = TriggerSettings(
            disable=daemon.disable, interval=daemon.interval, num_builds=daemon.num_builds,
            quiet_period=daemon.quiet_period, build_wait_limit=daemon.build_wait_limit,
        )
        if metrics is None:
            from .metrics import Metrics

            metrics = Metrics()
        self.metrics = metrics
        self.serve_http = serve_http and bool(daemon.listen)

        self.host = resolve(settings.host).base_url
        self.state_path = daemon.state_path()
        self.state: State | None = None
        self._queue: "queue.Queue[tuple[Any, str, Any]]" = queue.Queue()
        self._stop = threading.Event()
        self._lock_file: Any = None
        self.http: Any = None
        from .http import EngineContact

        self.contact = EngineContact(max_age_seconds=max(PING_EVERY_SECONDS * 4, 60))

        # What this run knows (the loop thread's own; other threads only read it).
        self.started_at: datetime | None = None
        self.pruned_since_start = False
        self.last_prune_here: datetime | None = None
        self.build_finished_since_start = False
        # The engine's clock when the daemon first reached it: builds the event stream replays
        # from before are counted, but do not set build_finished_since_start.
        self._start_nanos: int | None = None
        self.prune_requested = False
        self.waiting_since: datetime | None = None
        self.announced_builds: dict[str, datetime] = {}
        # The ids announced and not finished, kept by the HTTP threads themselves, so that a
        # finish for an id never announced (a typo) is refused at once, not taken in silence
        # while the real build holds prunes back for build_wait_limit.
        self._open_builds: set[str] = set()
        self._open_builds_lock = threading.Lock()
        self.engine_in_use_records = 0
        self.disk_pressure = False
        self.pressure_blocked_at: datetime | None = None  # an eviction could not reach the low mark
        self.last_eviction: Eviction | None = None
        self.last_decision = ""
        self._last_decision_key: tuple | None = None
        self.prunes: list[PruneSummary] = []
        self.connections = 0
        self.events_read = 0
        self.pressure_checks = 0
        self.data_root: str | None = None
        self.interpreter: EventInterpreter | None = None
        self._engine: DockerEngine | None = None  # the connection being served
        self._failed_starts = 0  # prunes in a row whose snapshot failed
        self._stream: EventStream | None = None
        self._next_attempt = 0.0
        self._next_build_check = 0.0
        self._next_pressure_check = 0.0

    # -- control (any thread) ------------------------------------------------------------

    def request_stop(self) -> None:
        """Finish the deletion in progress, save, and make ``run()`` return."""
        self._stop.set()
        self._queue.put((None, "wake", None))

    def request_prune(self) -> None:
        """Prune as soon as no build is in progress (at most ``build_wait_limit`` later)."""
        self._queue.put((None, "prune", None))

    def build_started(self, build_id: str | None = None) -> str:
        """A dev tool says a build starts; returns the id to finish it with."""
        build_id = build_id or uuid.uuid4().hex[:12]
        with self._open_builds_lock:  # queued under the lock: a finish never overtakes its start
            if build_id in self._open_builds:
                raise BuildIdInUse(build_id)
            self._open_builds.add(build_id)
            self._queue.put((None, "build-start", build_id))
        return build_id

    def build_finished(self, build_id: str) -> bool:
        """A dev tool says the build finished; False when no build of that id is in progress."""
        with self._open_builds_lock:
            if build_id not in self._open_builds:
                return False
            self._open_builds.discard(build_id)
            self._queue.put((None, "build-finish", build_id))
        return True

    def claim(self, repositories: list[str]) -> None:
        """A dev tool says these repository globs are its own (used with ``scope_from_builds``)."""
        self._queue.put((None, "claim", list(repositories)))

    def effective_policy(self) -> Policy | None:
        """The policy with the claimed repositories as scope under ``scope_from_builds``;
        None when that leaves nothing in scope (no tool has claimed anything yet)."""
        if not self.daemon.scope_from_builds:
            return self.policy
        assert self.state is not None
        repos = tuple(dict.fromkeys(self.policy.repos + self.state.claims()))
        return replace(self.policy, repos=repos) if repos else None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        self._acquire_lock()
        try:
            self.state = State.open(self.state_path, self.host)
            self.started_at = self.clock()
            self._start_http()
            log.info("sparkjoy daemon started for engine %s (state %s); %s", self.host,
                     self.state.path or "in memory", self._schedule_text())
            pause = 0.0
            while not self._stop.is_set():
                engine = self._connect()
                if engine is None:
                    break
                served_from = time.monotonic()
                try:
                    self._serve(engine)
                except _EngineLost as lost:
                    self.contact.lost(lost.why)
                    log.warning("lost the engine at %s: %s; reconnecting", self.host, lost.why)
                finally:
                    self._close_stream()
                # An engine that answers pings but keeps dropping the event stream must not
                # make this a busy loop: back off unless the last connection lasted a while.
                pause = 0.0 if time.monotonic() - served_from > 60 else min(max(pause * 2, 0.5),
                                                                               self.backoff_max_seconds)
                self._stop.wait(pause)
        finally:
            self._close_stream()
            if self.http is not None:
                self.http.stop()
            if self.state is not None:
                self.state.close()
            self._release_lock()
        log.info("sparkjoy daemon stopped; state saved")
        return 0

    def _schedule_text(self) -> str:
        if self.daemon.disable:
            return "pruning disabled"
        every = (f"every {self.daemon.num_builds} builds" if self.daemon.num_builds
                 else f"every {format_duration(self.daemon.interval)}")
        text = (f"prunes {every} from the last prune; once due after a start, after a build or "
                f"{format_duration(self.daemon.quiet_period)} quiet")
        if self.daemon.high_watermark:
            text += f", evicts above {self.daemon.high_watermark} down to {self.daemon.low_watermark}"
        return text

    def _connect(self) -> DockerEngine | None:
        delay = 1.0
        failures = 0
        while not self._stop.is_set():
            try:
                # Snapshot inspects are remembered while the event stream says nothing changed.
                engine = DockerEngine.connect(self.settings.host, timeout=self.settings.timeout,
                                              remember_inspects=True)
                self.connections += 1
                self.contact.reached()
                if failures:
                    log.info("engine at %s is back after %d failed attempt(s)", self.host, failures)
                return engine
            except EngineUnreachable as error:
                failures += 1
                self.contact.lost(error.cause)
                self.metrics.record_engine_error(error)
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "cannot reach the engine at %s: %s; retrying with backoff (up to %ss)",
                        self.host, error.cause, int(self.backoff_max_seconds))
            self._stop.wait(delay)
            delay = min(delay * 2, self.backoff_max_seconds)
        return None

    def _serve(self, engine: DockerEngine) -> None:
        self._engine = engine
        if self._start_nanos is None:
            self._start_nanos = engine.clock_nanos() or time.time_ns()
            # The quiet period counts from when the engine was first reached: an engine that
            # came up after it would otherwise be pruned at once, before any build ran on it.
            self.started_at = self.clock()
        assert self.state is not None
        engine.know_histories(self.state.histories())  # read by an earlier start or a one-shot run
        self.interpreter = EventInterpreter(DockerResolver(engine), self._counting_policy())
        # The stream gets a client of its own: it blocks in a read for as long as it lives.
        stream_api = engine.stream_client()
        assert self.state is not None
        self._stream = EventStream(
            lambda since: stream_api.events(since=since, decode=True), self.state.last_event_nanos, self._queue
        ).start()
        try:
            self._see_current_images(engine)
            if self.daemon.high_watermark is not None and self.daemon.high_watermark.is_percent:
                self.data_root = self._find_data_root(engine)
        except EngineUnreachable as error:
            raise _EngineLost(error.cause) from error
        next_ping = time.monotonic() + PING_EVERY_SECONDS
        self._next_pressure_check = 0.0
        while not self._stop.is_set():
            self._drain(self.tick_seconds)
            if self._stop.is_set():
                break
            try:
                if time.monotonic() >= next_ping:
                    engine.ping()
                    self.contact.reached()
                    next_ping = time.monotonic() + PING_EVERY_SECONDS
                self._check_pressure(engine)
                self._maybe_prune(engine)
            except EngineUnreachable as error:
                self.metrics.record_engine_error(error)
                raise _EngineLost(error.cause) from error
            except EngineError as error:
                # The engine answered with an error: log it, count it, try again later; never exit.
                self.metrics.record_engine_error(error)
                log.error("%s; trying again in %ds", error, int(RETRY_AFTER_FAILURE_SECONDS))
                self._next_attempt = time.monotonic() + RETRY_AFTER_FAILURE_SECONDS

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _see_current_images(self, engine: DockerEngine) -> None:
        """Record every image the engine has as seen: one never seen before counts as first seen now."""
        try:
            listed = engine.read("list images (GET /images/json)", "/images/json")
        except EngineUnreachable as error:
            raise _EngineLost(error.cause) from error
        except EngineError as error:
            log.warning("could not list images: %s", error)
            return
        assert self.state is not None
        ids = [e.get("Id") for e in listed or [] if isinstance(e, dict)]
        new = self.state.ensure_seen([i for i in ids if isinstance(i, str) and i], self.clock())
        if new:
            log.info("first sighting of %d image(s): their age counts from now unless they carry a last-tag "
                     "time", new)

    def _find_data_root(self, engine: DockerEngine) -> str:
        path = self.daemon.data_root
        if not path:
            info = engine.read("read engine info (GET /info)", "/info")
            path = info.get("DockerRootDir") if isinstance(info, dict) else None
        try:
            os.statvfs(path or "")
        except OSError as error:
            raise ConfigError(
                f"daemon.high_watermark {self.daemon.high_watermark} is a percentage of the filesystem holding the "
                f"engine's data root ({path or 'unknown'}), which is not visible here ({error.strerror or error}). "
                "Fix: set daemon.data_root to where it is mounted, or use sizes for both watermarks"
            ) from None
        return path  # type: ignore[return-value]

    # -- what arrives on the queue -------------------------------------------------------

    def _drain(self, timeout: float) -> None:
        try:
            items = [self._queue.get(timeout=timeout)]
        except queue.Empty:
            return
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        events = []
        lost = None
        for source, what, payload in items:
            if source is not None and source is not self._stream:
                continue  # from a stream of before the reconnect
            if what == "event":
                events.append(payload)
            elif what == "connected":
                self.contact.reached()
                # Answers read before the stream was there may have missed a change.
                if self._engine is not None:
                    self._engine.forget()
            elif what == "ended":
                lost = payload
            elif what == "prune":
                if self.daemon.disable:
                    log.warning("a prune was asked for, but pruning is disabled (daemon.disable)")
                else:
                    self.prune_requested = True
                    log.info("prune asked for")
            elif what == "build-start":
                self.announced_builds[payload] = self.clock()
                log.info("build %s announced as starting", payload)
            elif what == "claim":
                assert self.state is not None
                self.state.record_claims(payload, self.clock())
                if self.interpreter is not None:
                    self.interpreter.policy = self._counting_policy()
                log.info("repositories claimed by a dev tool: %s", ", ".join(payload))
            elif what == "build-finish":
                if self.announced_builds.pop(payload, None) is not None:
                    self.build_finished_since_start = True
                    log.info("build %s announced as finished", payload)
        if events:
            self._learn(events)
        self._update_builds_gauge()
        if lost is not None:
            raise _EngineLost(lost)

    def _learn(self, events: list[dict]) -> None:
        assert self.state is not None and self.interpreter is not None
        if self._engine is not None:
            for event in events:
                changed = changed_object(event)
                if changed is not False:
                    self._engine.forget(changed)
        observations = [o for o in (observe(e) for e in events) if o is not None]
        self.events_read += len(events)
        self.contact.reached()
        learned = self.interpreter.learn(observations)
        nanos = max((o.nanos for o in observations), default=None)
        self.state.record_events(learned.uses, learned.builds, nanos, self.clock())
        if learned.builds:
            # Builds the events replay from before the start count towards num_builds, but
            # are no reason for the first prune: not at the moment the daemon starts.
            if learned.last_build_nanos is not None and learned.last_build_nanos > (self._start_nanos or 0):
                self.build_finished_since_start = True
            log.debug("counted %d build(s) from the engine's events", learned.builds)

    # -- deciding ------------------------------------------------------------------------

    def _builds_in_flight(self, now: datetime) -> tuple[int, str]:
        # An announcement older than the wait limit is from a tool that died without saying so.
        stale = [b for b, at in self.announced_builds.items() if now - at > self.daemon.build_wait_limit]
        for build_id in stale:
            del self.announced_builds[build_id]
            with self._open_builds_lock:
                self._open_builds.discard(build_id)
            log.warning("build %s was announced %s ago and never finished; no longer waiting for it", build_id,
                        format_duration(self.daemon.build_wait_limit))
        parts = []
        count = 0
        if self.announced_builds:
            count += len(self.announced_builds)
            parts.append(f"{len(self.announced_builds)} announced")
        if self.interpreter is not None and self.interpreter.classic_build_in_progress():
            count += 1
            parts.append("a classic build's steps")
        if self.engine_in_use_records:
            count += 1
            parts.append(f"{self.engine_in_use_records} build-cache record(s) in use (BuildKit)")
        return count, ", ".join(parts)

    def _update_builds_gauge(self) -> None:
        self._set_builds_gauge(self._builds_in_flight(self.clock())[0])

    def _set_builds_gauge(self, count: int) -> None:
        try:
            self.metrics.set_builds_in_flight(count)
        except Exception:
            pass

    def situation(self, now: datetime) -> Situation:
        assert self.state is not None and self.started_at is not None
        mark = self.state.prune_mark()
        in_flight, detail = self._builds_in_flight(now)
        self._set_builds_gauge(in_flight)  # fresh on every tick: stale announcements drop here
        # The remembered time, or this process's own when the database could not keep it:
        # a failing database must never turn into a prune on every tick.
        last_prune = max((t for t in (mark.when, self.last_prune_here) if t is not None), default=None)
        return Situation(
            started_at=self.started_at,
            last_prune=last_prune,
            pruned_since_start=self.pruned_since_start,
            builds_seen=mark.builds_seen,
            builds_at_last_prune=mark.builds_at_last_prune,
            builds_in_flight=in_flight,
            build_finished_since_start=self.build_finished_since_start,
            prune_requested=self.prune_requested,
            disk_pressure=self.disk_pressure,
            waiting_since=self.waiting_since,
            in_flight_detail=detail,
        )

    def _say(self, decision: Decision) -> None:
        """Log a decision when it changes in kind (not every second because a countdown moved)."""
        self.last_decision = str(decision)
        key = (decision.prune, decision.trigger, decision.held_by_build)
        if key != self._last_decision_key:
            level = logging.INFO if decision.held_by_build else logging.DEBUG
            log.log(level, "%s", self.last_decision)
            self._last_decision_key = key

    def _maybe_prune(self, engine: DockerEngine) -> None:
        now = self.clock()
        situation = self.situation(now)
        if self.triggers.disable:
            self._say(decide(self.triggers, situation, now))
            return
        trigger, why = due_trigger(self.triggers, situation, now)
        if trigger is None:
            self.waiting_since = None
            self._say(Decision(False, why))
            return
        if time.monotonic() < max(self._next_attempt, self._next_build_check):
            return
        try:
            snapshot = engine.snapshot()
        except EngineError as error:
            self._failed(trigger, error)
            return
        self.contact.reached()
        self._failed_starts = 0
        if self.state is not None:
            self.state.save_histories(engine.histories_of(snapshot))  # for the next start
        if self._stop.is_set():
            return  # asked to stop while the engine was read: no plan, and the schedule stays
        self.engine_in_use_records = sum(1 for r in snapshot.build_cache if r.in_use)
        now = self.clock()
        decision = decide(self.triggers, self.situation(now), now)
        self._say(decision)
        if decision.held_by_build:
            self.waiting_since = self.waiting_since or now
            self._next_build_check = time.monotonic() + self.build_check_seconds
            return
        if decision.prune and decision.trigger is not None:
            self._prune(engine, snapshot, decision)

    def _failed(self, trigger: Trigger, error: EngineError) -> None:
        self.metrics.record_engine_error(error)
        self.metrics.record_failed_run(trigger.value, 0.0, time.time())
        log.error("prune (trigger=%s) could not start: %s; trying again in %ds", trigger.value, error,
                  int(RETRY_AFTER_FAILURE_SECONDS))
        self._next_attempt = time.monotonic() + RETRY_AFTER_FAILURE_SECONDS
        self._failed_starts += 1
        if self._failed_starts >= RECONNECT_AFTER_FAILED_STARTS:
            self._failed_starts = 0
            raise _EngineLost(f"{RECONNECT_AFTER_FAILED_STARTS} prunes in a row could not start ({error}); "
                              "connecting afresh, the API version negotiated again")

    # -- disk pressure -------------------------------------------------------------------

    def measure(self, engine: DockerEngine) -> tuple[int, int | None]:
        """Return (bytes used, filesystem size or None): of the data root's filesystem for
        percentage marks, else Docker's own usage."""
        high = self.daemon.high_watermark
        if high is not None and high.is_percent:
            stat = os.statvfs(self.data_root or "")
            total = stat.f_blocks * stat.f_frsize
            return total - stat.f_bfree * stat.f_frsize, total
        return engine.usage(), None

    def _check_pressure(self, engine: DockerEngine) -> None:
        high, low = self.daemon.high_watermark, self.daemon.low_watermark
        if high is None or low is None or time.monotonic() < self._next_pressure_check:
            return
        self._next_pressure_check = time.monotonic() + self.pressure_check_seconds
        try:
            used, total = self.measure(engine)
        except EngineError as error:
            log.warning("could not measure disk usage: %s", error)
            return
        self.pressure_checks += 1
        over = used > high.threshold(total)
        if self.pressure_blocked_at is not None:
            # An eviction already did all it safely could: wait for usage to drop below the
            # high mark (someone freed space), or an interval (objects may have become eligible).
            if not over or self.clock() - self.pressure_blocked_at >= self.daemon.interval:
                self.pressure_blocked_at = None
            else:
                over = False
        if over and not self.disk_pressure:
            log.info("disk usage %s is above the high watermark %s", self._usage_text(used, total), high)
        self.disk_pressure = over

    def _usage_text(self, used: int, total: int | None) -> str:
        if total:
            return f"{format_bytes(used)} ({100 * used / total:.1f}% of {format_bytes(total)})"
        return format_bytes(used)

    # -- pruning -------------------------------------------------------------------------

    def _counting_policy(self) -> Policy:
        # Builds count when an image of the scope is tagged; before any claim, none does.
        policy = self.effective_policy() if self.state is not None else self.policy
        return policy if policy is not None else replace(self.policy, repos=("\0 nothing claimed yet",))

    def _prune(self, engine: DockerEngine, snapshot: Snapshot, decision: Decision, fresh: bool = False) -> None:
        assert self.state is not None and decision.trigger is not None
        trigger = decision.trigger
        started = time.monotonic()
        now = self.clock()
        policy = self.effective_policy()
        if policy is None:
            log.info("prune (trigger=%s) skipped: scope_from_builds is on and no dev tool has claimed a "
                     "repository yet, so nothing is in scope", trigger.value)
            if trigger is not Trigger.DISK_PRESSURE:
                self.state.record_prune(now)
                self.pruned_since_start = True
                self.last_prune_here = now
            self.prune_requested = False
            self.disk_pressure = False
            self.waiting_since = None
            return
        image_ids = [image.id for image in snapshot.images]
        self.state.ensure_seen(image_ids, now)
        memory = self.state.memory()
        note = ""
        eviction: Eviction | None = None
        if trigger is Trigger.DISK_PRESSURE:
            used, total = self.measure(engine)
            need = used - self.daemon.low_watermark.threshold(total)  # type: ignore[union-attr]
            if need <= 0:
                self.disk_pressure = False
                log.info("disk usage %s is already under the low watermark: nothing to evict",
                         self._usage_text(used, total))
                return
            eligible = make_plan(snapshot, eviction_policy(policy), memory, now=now)
            eviction = plan_eviction(eligible, need)
            the_plan = eviction.plan
            note = eviction.describe()
            doing = note if eviction.met else (
                f"evicting every eligible object ({len(the_plan.deletions)}), freeing {format_bytes(eviction.predicted_bytes)} "
                f"of the {format_bytes(need)} needed")
            log.info("disk usage %s above %s: %s", self._usage_text(used, total), self.daemon.high_watermark, doing)
        else:
            the_plan = make_plan(snapshot, policy, memory, now=now)
        if not fresh:
            # The snapshot rests on inspects the event stream keeps true; the images whose
            # keep-recent places decide others' deletion are read afresh first (see
            # executor.ranks_changed), and if one reads otherwise, everything is.
            try:
                changed = ranks_changed(engine, the_plan)
            except EngineUnreachable:
                raise
            except EngineError as error:
                self._failed(trigger, error)
                return
            if changed:
                log.info("prune (trigger=%s): %d image(s) holding keep-recent places changed since the snapshot; "
                         "reading every image afresh", trigger.value, len(changed))
                engine.forget()
                return self._prune(engine, engine.snapshot(), decision, fresh=True)
        try:
            self.metrics.record_plan_usage(make_plan(snapshot, policy, memory, now=now)
                                           if eviction else the_plan)
        except Exception as error:  # metrics must never stop a prune
            log.debug("metrics: %s", error)

        if self._stop.is_set():
            log.info("prune (trigger=%s) not started: stopping", trigger.value)
            return
        executor = Executor(engine, reporter=_DebugReporter(), should_stop=self._stop.is_set,
                            wait=lambda seconds: self._stop.wait(seconds) and None, audit=self.daemon.audit)
        try:
            # Executed right after its snapshot: the snapshot's usage is the usage before.
            result = executor.execute(the_plan, usage_before=engine_usage(the_plan.snapshot))
        except EngineUnreachable:
            raise
        except EngineError as error:
            self._failed(trigger, error)
            return
        duration = time.monotonic() - started

        deleted_images = result.deleted_ids(Kind.IMAGE)
        self.state.forget_except(set(image_ids) - deleted_images)
        self.state.remember_left_behind(the_plan, deleted_images, self.clock())
        if trigger is not Trigger.DISK_PRESSURE and not result.stopped_early:
            # Eviction is not the policy's prune: it does not move the interval or build count.
            # Nor does a prune a stop or a lost engine cut short: the next one comes as if it
            # had not run (after the quiet period, once started again), not an interval later.
            self.state.record_prune(now)
            self.pruned_since_start = True
            self.last_prune_here = now
        if trigger is Trigger.REQUESTED:
            self.prune_requested = False
        self.waiting_since = None
        self._last_decision_key = None

        removed = {kind.value: result.count(kind) for kind in Kind}
        summary = PruneSummary(
            trigger=trigger.value, reason=decision.reason, at=now, duration_seconds=duration, removed=removed,
            reclaimed_bytes=result.reclaimed_bytes,
            predicted_bytes=sum(r.planned.bytes for r in result.results if r.outcome is Outcome.DELETED),
            failures=len([r for r in result.results if r.outcome in (Outcome.FAILED, Outcome.PARTIAL)])
            + len(result.audit or ()) + len(result.unplanned),
            stopped_early=result.stopped_early, note=note, result=result,
        )
        self.prunes.append(summary)
        log.info("%s", summary.line(), extra={"fields": summary.fields()})
        skipped = [f for f in result.failures if f.outcome is Outcome.SKIPPED]
        for failure in result.failures:
            # The objects a stop left alone are one line (a stop during a big prune gave one
            # warning per object, 833 in 10 ms), each of them at debug level.
            level = logging.DEBUG if failure.outcome is Outcome.SKIPPED else logging.WARNING
            log.log(level, "%s %s %s: %s", failure.outcome.value, failure.planned.kind.value, failure.planned.id,
                    failure.detail)
        if skipped:
            log.warning("%d object(s) not attempted: %s (-v lists them)", len(skipped), skipped[0].detail)
        for finding in result.audit or ():
            log.error("audit: %s %s: %s", finding.kind.value, finding.id, finding.problem)
        for item in result.unplanned:
            log.error("removed beyond the plan, changed by someone else in the instant between the re-check "
                      "and the deletion: %s", item)
        try:
            self.metrics.record_run(result, trigger=trigger.value, duration_seconds=duration, finished_at=time.time())
        except Exception as error:
            log.debug("metrics: %s", error)
        if not self._stop.is_set():
            self._record_usage(engine)

        if eviction is not None:
            self.last_eviction = eviction
            self._after_eviction(engine, eviction)

    def _record_usage(self, engine: DockerEngine) -> None:
        """Set the usage gauges (objects, disk usage, reclaimable bytes) from the engine as a
        prune left it: set from the plan before it, they showed what it had just freed as
        still there, and an alert on reclaimable bytes fired after every prune that worked."""
        assert self.state is not None
        try:
            after = engine.snapshot()
            self.metrics.record_plan_usage(make_plan(after, self._counting_policy(), self.state.memory(),
                                                     now=self.clock()))
        except EngineUnreachable:
            raise
        except Exception as error:  # metrics must never stop the daemon
            log.debug("metrics after the prune: %s", error)

    def _after_eviction(self, engine: DockerEngine, eviction: Eviction) -> None:
        used, total = self.measure(engine)
        low = self.daemon.low_watermark.threshold(total)  # type: ignore[union-attr]
        self.disk_pressure = False
        if used <= low and eviction.met:
            log.info("disk usage %s is under the low watermark %s", self._usage_text(used, total),
                     self.daemon.low_watermark)
            return
        first_time = self.pressure_blocked_at is None
        self.pressure_blocked_at = self.clock()
        message = (eviction.describe() if not eviction.met else
                   f"usage {self._usage_text(used, total)} is still above the low watermark "
                   f"{self.daemon.low_watermark} after evicting")
        if first_time:
            log.warning("%s; not evicting more until usage drops under the high watermark or %s pass",
                        message, format_duration(self.daemon.interval))

    # -- HTTP ----------------------------------------------------------------------------

    def _start_http(self) -> None:
        if not self.serve_http:
            return
        from .http import HookError, ServiceServer, parse_listen

        def claimed(payload: dict) -> list[str]:
            repos = payload.get("repos", [])
            if (not isinstance(repos, list) or len(repos) > 100
                    or not all(isinstance(r, str) and r.strip() and len(r) <= 255 for r in repos)):
                raise HookError(400, "repos must be a list of at most 100 repository names or globs")
            return [r.strip() for r in repos]

        def on_build_start(payload: dict) -> dict:
            build_id = payload.get("id")
            if build_id is not None and (not isinstance(build_id, str) or not build_id.strip()):
                raise HookError(400, "id must be a non-empty string")
            repos = claimed(payload)
            try:
                started = self.build_started(build_id)
            except BuildIdInUse:
                raise HookError(409, f"a build {build_id!r} is in progress already: give each build its own id "
                                     "(or none, for a new one)") from None
            if repos:
                self.claim(repos)
            return {"id": started}

        def on_build_finish(payload: dict) -> dict:
            build_id = payload.get("id")
            if not isinstance(build_id, str) or not build_id:
                raise HookError(400, "send the id that /build/start answered")
            repos = claimed(payload)
            if not self.build_finished(build_id):
                raise HookError(404, f"no build {build_id!r} is in progress here: never announced to this daemon "
                                     "(since it started), finished already, or dropped after build_wait_limit")
            if repos:
                self.claim(repos)
            return {"id": build_id}

        def on_prune(payload: dict) -> None:
            if self.daemon.disable:
                raise HookError(409, "pruning is disabled (daemon.disable): this daemon only records last use")
            self.request_prune()

        host, port = parse_listen(self.daemon.listen)
        self.http = ServiceServer(self.metrics, self.contact.readiness, host=host, port=port,
                                  on_build_start=on_build_start, on_build_finish=on_build_finish,
                                  on_prune=on_prune)
        self.http.start()

    # -- the lock ------------------------------------------------------------------------

    def _acquire_lock(self) -> None:
        path = lock_path(self.state_path, self.host)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(path, "a+")
        except OSError as error:
            fallback = Path(tempfile.gettempdir()) / path.name
            log.warning("cannot create the lock file %s (%s); using %s", path, error.strerror or error, fallback)
            path = fallback
            handle = open(path, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip()
            handle.close()
            raise DaemonAlreadyRunning(self.host, path, holder) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            finally:
                self._lock_file.close()
                self._lock_file = None


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def configure_logging(log_format: str = "text", level: int = logging.INFO, stream: Any = None) -> None:
    """Send sparkjoy's logs to stderr as plain text or JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("sparkjoy")
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
