"""The daemon under engine faults, through the fault proxy: it keeps running, recovers when
the fault clears, and its next prune is correct; it reconnects when the engine restarts in
the middle of a prune. No traceback reaches its log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

from sparkjoy.daemon import supervisor as supervisor_module
from sparkjoy.executor import Outcome
from sparkjoy.state import State

from tests import fixtures
from tests.daemon.support import RunningDaemon
from tests.faultproxy import Rule, api_version, cut_json, delay, drop, hook, malformed_json, respond, slow_body
from tests.reliability.support import World, inventory, lost, make_world
from tests.reliability.test_restart import Restarter

GREEDY = {"max_age": "-1s", "keep_recent": 0, "volumes": "all", "exclude": ["keep/*"], "engine.timeout": "2s"}


@dataclass(frozen=True)
class Fault:
    name: str
    rules: Callable[[World], list[Rule]]
    before_start: bool = False  # the event stream is opened once, when the daemon connects


FAULTS = [
    Fault("500 on every disk-usage read", lambda w: [Rule("GET", r"^/system/df$", respond(500))]),
    Fault("malformed JSON from disk usage", lambda w: [Rule("GET", r"^/system/df$", malformed_json())]),
    Fault("truncated image inspects", lambda w: [Rule("GET", r"^/images/[^/]+/json$", cut_json(0.4))]),
    Fault("500 on every image deletion", lambda w: [Rule("DELETE", r"^/images/", respond(500))]),
    Fault("answers slower than the timeout", lambda w: [Rule("DELETE", r"^/(images|containers)/", delay(5))]),
    Fault("connections dropped on deletions", lambda w: [Rule("DELETE", r"^/", drop())]),
    Fault("409 on every image deletion", lambda w: [Rule("DELETE", r"^/images/", respond(
        409, {"message": "conflict: unable to delete (must be forced) - image is being used by stopped container"}))]),
    Fault("404 on the first image inspects", lambda w: [Rule("GET", r"^/images/[^/]+/json$", respond(
        404, {"message": "No such image"}), times=3)]),
    Fault("disk usage sent a few bytes at a time", lambda w: [Rule("GET", r"^/system/df$", slow_body(64, 0.01),
                                                                   times=2)]),
    Fault("another API version on ping and version", lambda w: [Rule("GET", r"^/(_ping|version)$",
                                                                     api_version("1.24"))], before_start=True),
    Fault("the event stream cut mid-stream", lambda w: [Rule("GET", r"^/events$", drop(after_bytes=1), nth=1)],
          before_start=True),
]


def _clean(summary) -> bool:
    result = summary.result
    return (result is not None and not result.stopped_early
            and all(r.outcome in (Outcome.DELETED, Outcome.GONE, Outcome.KEPT) for r in result.results))


def _planned(daemon: RunningDaemon) -> set[tuple[str, str]]:
    return {(o.kind.value, o.id) for s in daemon.supervisor.prunes if s.result is not None
            for o in s.result.plan.deletions}


@pytest.fixture
def fast_retries(monkeypatch):
    # A prune that could not start is tried again after a minute; the tests need not wait that long.
    monkeypatch.setattr(supervisor_module, "RETRY_AFTER_FAILURE_SECONDS", 0.3)


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.name)
def test_the_daemon_survives_a_fault_and_prunes_right_once_it_clears(fault, proxy, clean_engine, tmp_path: Path,
                                                                    fast_retries, caplog, count):
    world = make_world(clean_engine)
    before = inventory(clean_engine)
    caplog.set_level(logging.INFO, logger="sparkjoy")
    if fault.before_start:
        for rule in fault.rules(world):
            proxy.add(rule)
    daemon = RunningDaemon(SimpleNamespace(host=proxy.host), tmp_path, **GREEDY).start()
    try:
        if not fault.before_start:
            for rule in fault.rules(world):
                proxy.add(rule)
        else:
            # The cut comes with the first event: make some (a container's life).
            fixtures.run_container(clean_engine, world.deletable_images[1], state="created")
        daemon.supervisor.request_prune()
        daemon.wait_for(lambda: proxy.total_injected >= 1, f"the fault ({fault.name}) to fire", timeout=60)
        if "event stream" in fault.name:
            daemon.wait_for(lambda: daemon.supervisor.connections >= 2, "the daemon to reconnect")
        proxy.clear()

        # Once the fault is gone, a prune asked for now is complete and correct.
        daemon.wait_for(lambda: daemon.supervisor.prunes, "a prune", timeout=90)
        summary = daemon.prune_and_wait(timeout=90)
        assert _clean(summary), (summary.line(), summary.result.results if summary.result else None)
    finally:
        daemon.stop()  # raises if the daemon thread died; asserts exit code 0

    after = inventory(clean_engine)
    problems = lost(before, after, _planned(daemon))
    count(objects_checked=before.size, objects_lost=len(problems), daemon_runs=1)
    assert not problems
    assert set(world.deletable_images).isdisjoint(after.images)
    # Excluded, and used by a running container. (The ageless image goes: the daemon remembers
    # when it first saw it, and with a negative max age that is old.)
    assert set(world.kept_images[:2]) <= set(after.images) and world.running_container in after.containers
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]


def test_the_daemon_reconnects_after_the_engine_restarts_mid_prune(proxy, clean_engine, tmp_path: Path,
                                                                   fast_retries, caplog, count):
    world = make_world(clean_engine, images=6)
    before = inventory(clean_engine)
    restarter = Restarter(clean_engine)
    caplog.set_level(logging.INFO, logger="sparkjoy")
    daemon = RunningDaemon(SimpleNamespace(host=proxy.host), tmp_path, **GREEDY).start()
    try:
        proxy.add(Rule("DELETE", r"^/images/", hook(restarter.begin, drop(), name="engine restart"), nth=2))
        daemon.supervisor.request_prune()
        daemon.wait_for(lambda: proxy.total_injected >= 1, "the restart", timeout=60)
        restarter.wait()
        daemon.wait_for(lambda: daemon.supervisor.connections >= 2, "the daemon to reconnect", timeout=90)
        first = daemon.supervisor.prunes[0] if daemon.supervisor.prunes else None
        summary = daemon.prune_and_wait(timeout=90)
        assert _clean(summary), summary.line()
    finally:
        daemon.stop()

    after = inventory(clean_engine)
    problems = lost(before, after, _planned(daemon))
    count(objects_checked=before.size, objects_lost=len(problems), daemon_runs=1, engine_restarts=1)
    assert not problems
    if first is not None and first.result is not None:  # the interrupted prune said what it did not do
        assert first.result.stopped_early.startswith("engine unreachable")
        assert any(r.outcome is Outcome.SKIPPED for r in first.result.results)
    assert set(world.deletable_images).isdisjoint(after.images)
    assert not [r for r in caplog.records if r.exc_info], "a traceback reached the daemon's log"


def test_a_stop_while_the_engine_is_read_for_a_prune_starts_no_prune_and_moves_no_schedule(
        proxy, clean_engine, tmp_path: Path) -> None:
    """From a new user's trial: SIGTERM while the daemon's snapshot waited on the engine, and it
    still planned and ran a prune ('removed nothing ... stopped early'), recorded as the last."""
    world = make_world(clean_engine)
    before = inventory(clean_engine)
    daemon = RunningDaemon(SimpleNamespace(host=proxy.host), tmp_path, **GREEDY).start()
    stopper: list = []

    def stop_now(request) -> None:
        import threading

        stopper.append(threading.Thread(target=daemon.stop))
        stopper[0].start()
        daemon.wait_for(lambda: daemon.supervisor.stopping, "the stop to be asked for")

    proxy.add(Rule("GET", r"^/system/df$", hook(stop_now, name="a stop while the engine is read"), times=1))
    daemon.supervisor.request_prune()
    fixtures.wait_until(lambda: stopper and not stopper[0].is_alive(), timeout=60, what="the daemon to stop")

    assert daemon.supervisor.prunes == []
    # Read from the file (the daemon's own state is closed once it stopped, and reads nothing).
    remembered = State.open(tmp_path / "state.db", daemon.supervisor.host)
    try:
        assert remembered.prune_mark().when is None
    finally:
        remembered.close()
    assert not lost(before, inventory(clean_engine), set())
    assert all(i in inventory(clean_engine).images for i in world.deletable_images)


def test_the_quiet_period_counts_from_when_the_engine_is_first_reached(proxy, clean_engine, tmp_path: Path) -> None:
    """A review's case: an engine that came up after the quiet period was pruned the moment the
    daemon reached it, before the morning's first build had touched anything."""
    make_world(clean_engine)
    proxy.add(Rule("GET", r"^/_ping$", respond(500), times=3))  # down for three attempts, about 3 s
    daemon = RunningDaemon(SimpleNamespace(host=proxy.host), tmp_path, **{**GREEDY, "quiet_period": "2s"})
    daemon.start()  # returns once it has connected
    try:
        assert proxy.total_injected == 3
        daemon.wait_for(lambda: "waits for a build to finish or the quiet period" in daemon.supervisor.last_decision,
                        "the first prune to wait for the quiet period")
        assert daemon.supervisor.prunes == []
        (first,) = daemon.wait_for(lambda: daemon.supervisor.prunes, "the first prune after the quiet period")
        assert first.trigger == "first"
    finally:
        daemon.stop()
