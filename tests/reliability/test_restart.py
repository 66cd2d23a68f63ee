"""The engine stopped and restarted in the middle of a prune (IsolatedEngine.restart(),
triggered by the fault proxy on the n-th image deletion).

No object outside the plan may be gone; the report must say which deletions did not
happen (each object it reports "not attempted" is still there); the object in flight when
the engine went is reported as failed, never as deleted; and a prune after the engine is
back finishes the job.
"""

from __future__ import annotations

import threading
import time

import pytest

from sparkjoy.errors import ExitCode
from sparkjoy.executor import DELETE_WORKERS, Outcome

from tests import fixtures
from tests.engine import IsolatedEngine
from tests.faultproxy import Exchange, Rule, drop, hook
from tests.reliability.support import (
    assert_no_traceback, greedy_policy, inventory, library_prune, lost, make_world, planned_keys, prune_cli,
)


class Restarter:
    """Restarts the engine from a proxy hook, in the background, once it is seen down."""

    def __init__(self, engine: IsolatedEngine):
        self.engine = engine
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None
        # Set once begin() has started the restart: the proxy counts a fault as injected when
        # its rule matches, before the hook runs, so a test that saw the count may get here first.
        self.begun = threading.Event()

    def _restart(self) -> None:
        try:
            self.engine.restart()
        except BaseException as error:  # reported by wait()
            self.error = error

    def begin(self, request=None) -> None:
        """Stop the engine now and start it again in the background; return once it is down."""
        self.thread = threading.Thread(target=self._restart, daemon=True)
        self.thread.start()
        self.begun.set()
        fixtures.wait_until(lambda: not self.engine.ping(timeout=0.5), timeout=30, what="the engine to go down",
                            interval=0.01)

    def wait(self) -> None:
        """Wait until the engine is back (restart() returns only once it answers /_ping)."""
        assert self.begun.wait(timeout=60), "the restart never happened"
        assert self.thread is not None
        self.thread.join(timeout=90)
        assert not self.thread.is_alive(), "the engine did not come back"
        if self.error:
            raise self.error


def _answer_then_die(restarter: Restarter):
    """The engine does the deletion, then goes down before its answer reaches the client."""
    def action(exchange: Exchange) -> None:
        exchange.fetch()
        restarter.begin()
        exchange.close()
    action.fault_name = "engine restart"
    return action


@pytest.mark.parametrize("when", ["before the deletion reaches it", "after it deleted, before it answered"])
def test_an_engine_restart_mid_prune_loses_nothing_and_says_what_did_not_happen(when, proxy, clean_engine, count):
    world = make_world(clean_engine, images=8, containers=2)
    before = inventory(clean_engine)
    restarter = Restarter(clean_engine)
    if when.startswith("before"):
        proxy.add(Rule("DELETE", r"^/images/", hook(restarter.begin, drop(), name="engine restart"), nth=3))
    else:
        proxy.add(Rule("DELETE", r"^/images/", _answer_then_die(restarter), nth=3))

    run = prune_cli(proxy.host)
    restarter.wait()

    after = inventory(clean_engine)
    assert_no_traceback(run)
    problems = lost(before, after, run.planned_keys())
    count(objects_checked=before.size, objects_lost=len(problems), engine_restarts=1, runs=1)
    assert not problems
    assert run.returncode == ExitCode.FAILED
    report = run.json
    assert report["stopped_early"].startswith("engine unreachable")
    results = run.results()
    planned = [(o["kind"], o["id"]) for o in report["objects"] if o["decision"] == "delete"]
    outcomes = [results[key] for key in planned]
    # Images go DELETE_WORKERS at a time: the ones in flight when the engine went are failed
    # (their fate is not known to sparkjoy) or partial (the engine removed a tag, then failed
    # on the image as it shut down: "error deleting lease"), the ones done before deleted,
    # every one not yet begun not attempted; so is everything after the images (cache, volumes).
    in_flight = outcomes.count("failed") + outcomes.count("partial")
    assert 1 <= in_flight <= DELETE_WORKERS, outcomes
    assert set(outcomes) <= {"deleted", "failed", "partial", "not attempted"}, outcomes
    last_image = max(n for n, (kind, _) in enumerate(planned) if kind == "image")
    assert set(outcomes[last_image + 1:]) <= {"not attempted"}, outcomes
    for (kind, object_id), outcome in results.items():
        if outcome == "not attempted":
            assert (kind, object_id) in after.keys(), f"{kind} {object_id} was reported not attempted but is gone"
        if outcome == "deleted":
            assert (kind, object_id) not in after.keys()
        if outcome == "partial":
            assert (kind, object_id) in after.keys(), f"{kind} {object_id} was reported partial but is gone"

    # The engine is back: the next prune finishes the job, and its audit is clean.
    again = prune_cli(proxy.host)
    final = inventory(clean_engine)
    assert_no_traceback(again)
    assert again.returncode == ExitCode.OK, again.stderr
    assert not lost(after, final, again.planned_keys())
    assert set(world.deletable_images).isdisjoint(final.images)
    # The restart stopped the running container, so this time it and its volume went too
    # (the greedy policy's due). The excluded image stays. The ageless image (no last-tag
    # time) was kept by the first run as never seen; that run recorded its first sighting,
    # so under a negative max age (everything is old) the second run deletes it, and says so.
    excluded, _, ageless = world.kept_images
    assert excluded in final.images
    first = {o["id"]: o for o in run.json["objects"] if o["kind"] == "image"}
    second = {o["id"]: o for o in again.json["objects"] if o["kind"] == "image"}
    assert first[ageless]["decision"] == "keep", first[ageless]
    assert second[ageless]["decision"] == "delete" and "first seen by sparkjoy" in second[ageless]["reason"], \
        second[ageless]
    assert ageless not in final.images


def test_the_library_run_reports_the_restart_per_object(proxy, clean_engine, count):
    world = make_world(clean_engine, images=6)
    before = inventory(clean_engine)
    restarter = Restarter(clean_engine)
    proxy.add(Rule("DELETE", r"^/containers/", hook(restarter.begin, drop(), name="engine restart"), nth=2))

    the_plan, result = library_prune(proxy.host, greedy_policy())
    restarter.wait()

    after = inventory(clean_engine)
    problems = lost(before, after, planned_keys(the_plan))
    count(objects_checked=before.size, objects_lost=len(problems), engine_restarts=1, runs=1)
    assert not problems
    outcomes = [r.outcome for r in result.results]
    assert outcomes[0] is Outcome.DELETED and outcomes[1] is Outcome.FAILED
    assert set(outcomes[2:]) == {Outcome.SKIPPED}
    assert "may or may not" in result.results[1].detail
    assert all((r.planned.kind.value, r.planned.id) in after.keys() for r in result.results[1:])
    assert result.audit is None  # no audit against an engine that went away
    assert not result.ok
