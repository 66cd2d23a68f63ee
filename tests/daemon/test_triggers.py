"""The scheduling table of the article's pruner, as data: settings + situation + now -> prune or not.

The clock is injected: every case names its own `now`, nothing reads the time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone

import pytest

from sparkjoy.daemon.triggers import Situation, Trigger, TriggerSettings, decide

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
STARTED = NOW - timedelta(hours=5)
# A daemon that has run a while and pruned once since it started.
RUNNING = Situation(started_at=STARTED, pruned_since_start=True, last_prune=NOW - timedelta(hours=2))


@dataclass(frozen=True)
class Case:
    name: str
    settings: TriggerSettings
    situation: Situation
    prune: bool
    trigger: Trigger | None = None
    reason_mentions: str = ""


CASES = [
    Case("a 30m interval with the last prune 2h ago prunes",
         TriggerSettings(interval=timedelta(minutes=30)), RUNNING, True, Trigger.INTERVAL, "last prune 2h ago"),
    Case("a 3h interval with the last prune 2h ago does not prune",
         TriggerSettings(interval=timedelta(hours=3)), RUNNING, False, None, "next prune in 1h"),
    Case("the default interval with the last prune 40m ago does not prune",
         TriggerSettings(), replace(RUNNING, last_prune=NOW - timedelta(minutes=40)), False, None, "next prune in 20m"),
    Case("5 builds configured, 11 seen since start and the last prune at build 5 prunes",
         TriggerSettings(num_builds=5), replace(RUNNING, builds_seen=11, builds_at_last_prune=5), True,
         Trigger.BUILDS, "6 builds since the last prune"),
    Case("10 builds configured and 6 since the last prune does not prune",
         TriggerSettings(num_builds=10), replace(RUNNING, builds_seen=6, builds_at_last_prune=0), False, None,
         "6 of 10 builds"),
    Case("disabled never prunes, even when everything else is due",
         TriggerSettings(disable=True, interval=timedelta(minutes=1)),
         replace(RUNNING, prune_requested=True, disk_pressure=True), False, None, "disabled"),
    Case("a due interval does not prune while a build runs",
         TriggerSettings(interval=timedelta(minutes=30)), replace(RUNNING, builds_in_flight=1), False,
         Trigger.INTERVAL, "waiting for 1 build(s) in progress"),
    Case("a prune asked for does not prune while a build runs",
         TriggerSettings(), replace(RUNNING, prune_requested=True, builds_in_flight=2), False,
         Trigger.REQUESTED, "waiting for 2 build(s)"),
    Case("the first prune does not happen while the first builds are in flight",
         TriggerSettings(), Situation(started_at=STARTED, builds_in_flight=1, build_finished_since_start=True),
         False, Trigger.FIRST, "waiting for 1 build(s)"),
    Case("the first prune happens once the builds in flight have finished",
         TriggerSettings(), Situation(started_at=STARTED, builds_in_flight=0, build_finished_since_start=True),
         True, Trigger.FIRST, "a build has finished"),
    Case("the first prune does not happen at the moment the daemon starts",
         TriggerSettings(), Situation(started_at=NOW), False, None, "quiet period"),
    Case("the first prune happens after the quiet period when no build comes",
         TriggerSettings(quiet_period=timedelta(minutes=2)), Situation(started_at=NOW - timedelta(minutes=3)),
         True, Trigger.FIRST, "no build in the quiet period"),
    # A restart does not reset the schedule: a daemon restarted every few minutes pruned every
    # quiet period (2m), and Tilt's users lost their caches to prunes after restarts.
    Case("a remembered recent prune holds the first prune after a restart until the interval is up",
         TriggerSettings(), Situation(started_at=STARTED, last_prune=NOW - timedelta(minutes=1),
                                      build_finished_since_start=True), False, None, "next prune in 59m"),
    Case("a remembered count of builds holds the first prune after a restart until num_builds",
         TriggerSettings(num_builds=5), Situation(started_at=NOW - timedelta(hours=1), builds_seen=7,
                                                  builds_at_last_prune=4, last_prune=NOW - timedelta(hours=2),
                                                  build_finished_since_start=True),
         False, None, "3 of 5 builds"),
    Case("a restart after the interval is up: the first prune waits for a build",
         TriggerSettings(), Situation(started_at=NOW - timedelta(seconds=30), last_prune=NOW - timedelta(hours=9)),
         False, None, "waits for a build to finish or the quiet period"),
    Case("a restart after the interval is up: the first prune comes once a build has finished",
         TriggerSettings(), Situation(started_at=NOW - timedelta(seconds=30), last_prune=NOW - timedelta(hours=9),
                                      build_finished_since_start=True), True, Trigger.FIRST, "a build has finished"),
    Case("a restart after num_builds builds: the first prune comes after the quiet period",
         TriggerSettings(num_builds=5), Situation(started_at=NOW - timedelta(minutes=3), builds_seen=9,
                                                  builds_at_last_prune=4, last_prune=NOW - timedelta(hours=2)),
         True, Trigger.FIRST, "5 builds since"),
    Case("never pruned, with num_builds: the first prune comes once the first build has finished",
         TriggerSettings(num_builds=5), Situation(started_at=NOW - timedelta(seconds=30), builds_seen=1,
                                                  build_finished_since_start=True),
         True, Trigger.FIRST, "no prune remembered"),
    Case("a last prune remembered in the future (the clock stepped back) is no reason to wait",
         TriggerSettings(), replace(RUNNING, last_prune=NOW + timedelta(days=3)), True, Trigger.INTERVAL,
         "in the future"),
    Case("after a restart, a last prune remembered in the future lets the first prune come as usual",
         TriggerSettings(), Situation(started_at=NOW - timedelta(minutes=10), last_prune=NOW + timedelta(days=3)),
         True, Trigger.FIRST, "no build in the quiet period"),
    Case("a prune asked for prunes at once",
         TriggerSettings(), replace(RUNNING, last_prune=NOW - timedelta(minutes=1), prune_requested=True), True,
         Trigger.REQUESTED),
    Case("disk pressure prunes at once, even right after a prune",
         TriggerSettings(), replace(RUNNING, last_prune=NOW - timedelta(minutes=1), disk_pressure=True), True,
         Trigger.DISK_PRESSURE),
    Case("a build still running after the wait limit no longer holds the prune back",
         TriggerSettings(interval=timedelta(minutes=30), build_wait_limit=timedelta(minutes=30)),
         replace(RUNNING, builds_in_flight=1, waiting_since=NOW - timedelta(minutes=31)), True, Trigger.INTERVAL,
         "pruning anyway"),
    Case("a build running for less than the wait limit still holds the prune back",
         TriggerSettings(interval=timedelta(minutes=30), build_wait_limit=timedelta(minutes=30)),
         replace(RUNNING, builds_in_flight=1, waiting_since=NOW - timedelta(minutes=29)), False, Trigger.INTERVAL,
         "waited 29m of at most 30m"),
    Case("every N builds ignores the interval",
         TriggerSettings(num_builds=5), replace(RUNNING, last_prune=NOW - timedelta(days=3), builds_seen=2), False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name.replace(" ", "_") for c in CASES])
def test_scheduling_table(case: Case) -> None:
    decision = decide(case.settings, case.situation, NOW)

    assert decision.prune is case.prune, decision
    assert decision.trigger is case.trigger, decision
    assert case.reason_mentions in decision.reason


def test_a_decision_held_by_a_build_says_so_and_names_the_trigger() -> None:
    decision = decide(TriggerSettings(), replace(RUNNING, builds_in_flight=1, in_flight_detail="1 announced"), NOW)

    assert decision.held_by_build
    assert str(decision).startswith("wait (interval): ")
    assert "1 announced" in decision.reason
