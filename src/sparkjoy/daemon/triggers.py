"""When to prune: a pure decision from the settings, what the daemon knows, and the time.

No clock is read here and nothing is done: ``decide(settings, situation, now)`` returns
whether to prune now, the trigger, and why (or why not). The supervisor asks it on every
tick and after every notable event.

The rules, in order:

1. ``disable``: never.
2. A build in progress on the engine (BuildKit records in use, a classic build's
   containers, or a build announced through ``sparkjoy build``) holds back every
   trigger, for at most ``build_wait_limit`` counted from when a prune first became due.
   After that the prune goes ahead (and says it waited in vain): objects a running build
   uses are never removed anyway, so the bound only stops a stuck build from switching
   the pruner off.
3. A prune asked for (``sparkjoy notify prune``, ``POST /prune``, SIGUSR1), then disk
   pressure, are due at once.
4. Every ``num_builds`` builds when that is set, else every ``interval`` since the last
   prune (both remembered across restarts: a restart does not reset the schedule).
5. The first prune after start, once rule 4 says one is due: when a build has finished
   since the start (builds the events replay from before it do not count), or when
   ``quiet_period`` has passed since start without one (so an engine where nobody builds
   still gets pruned).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from ..units import format_duration


class Trigger(str, Enum):
    # The values are the `trigger` label of the prune metrics and of the summary log line.
    REQUESTED = "request"
    DISK_PRESSURE = "pressure"
    FIRST = "first"
    BUILDS = "builds"
    INTERVAL = "interval"


@dataclass(frozen=True)
class TriggerSettings:
    disable: bool = False
    interval: timedelta = timedelta(hours=1)
    num_builds: int = 0  # 0: use the interval
    quiet_period: timedelta = timedelta(minutes=2)
    build_wait_limit: timedelta = timedelta(minutes=30)


@dataclass(frozen=True)
class Situation:
    """What the daemon knows when it asks.

    ``builds_seen`` and ``builds_at_last_prune`` count builds on one counter (kept in the
    state database, so it survives restarts). ``pruned_since_start``: a prune already ran in
    this process (the first one follows rule 5). ``build_finished_since_start``: a build
    finished after the start (not one the events replayed from before it). ``waiting_since``: when a due prune was
    first held back by a build, None when none is being held back.
    """

    started_at: datetime
    last_prune: datetime | None = None
    pruned_since_start: bool = False
    builds_seen: int = 0
    builds_at_last_prune: int = 0
    builds_in_flight: int = 0
    build_finished_since_start: bool = False
    prune_requested: bool = False
    disk_pressure: bool = False
    waiting_since: datetime | None = None
    in_flight_detail: str = ""  # what the builds in flight are, for the reason


@dataclass(frozen=True)
class Decision:
    prune: bool
    reason: str
    trigger: Trigger | None = None  # the trigger due (also when held back by a build)
    held_by_build: bool = False  # a trigger is due, but a build runs: start (or keep) waiting

    def __str__(self) -> str:
        verb = "prune" if self.prune else "wait"
        return f"{verb} ({self.trigger.value if self.trigger else 'no trigger'}): {self.reason}"


def due_trigger(settings: TriggerSettings, situation: Situation, now: datetime) -> tuple[Trigger | None, str]:
    """Given the settings, what we know and the time, return the trigger that is due (ignoring builds) and why."""
    if situation.prune_requested:
        return Trigger.REQUESTED, "a prune was asked for"
    if situation.disk_pressure:
        return Trigger.DISK_PRESSURE, "disk usage is above the high watermark"
    trigger, why = _scheduled(settings, situation, now)
    if trigger is None or situation.pruned_since_start:
        return trigger, why
    # The first prune after start, once the schedule says one is due (a restart does not
    # reset it): not at the moment the daemon starts, but once a build has finished since, or
    # after the quiet period, so that the first builds of the day touch what they need first.
    if situation.build_finished_since_start:
        return Trigger.FIRST, f"first prune since start ({why}): a build has finished"
    quiet = now - situation.started_at
    if quiet >= settings.quiet_period:
        return Trigger.FIRST, (
            f"first prune since start ({why}): no build in the quiet period ({format_duration(settings.quiet_period)})"
        )
    return None, (
        f"first prune ({why}) waits for a build to finish or the quiet period to pass "
        f"({format_duration(settings.quiet_period - quiet)} left)"
    )


def _scheduled(settings: TriggerSettings, situation: Situation, now: datetime) -> tuple[Trigger | None, str]:
    """Every ``num_builds`` builds, else every ``interval``, both counted from the last prune
    (remembered across restarts). Never pruned: due."""
    if situation.last_prune is None:
        return Trigger.INTERVAL if settings.num_builds <= 0 else Trigger.BUILDS, "no prune remembered"
    if settings.num_builds > 0:
        since = situation.builds_seen - situation.builds_at_last_prune
        if since >= settings.num_builds:
            return Trigger.BUILDS, f"{since} builds since the last prune (num_builds {settings.num_builds})"
        return None, f"{since} of {settings.num_builds} builds since the last prune"
    elapsed = now - situation.last_prune
    if elapsed < timedelta(0):
        # Remembered in the future: the clock stepped back since (NTP correcting an RTC that ran
        # ahead). Waiting for it would stop pruning for as long as the clock was ahead.
        return Trigger.INTERVAL, (
            f"the last prune remembered is {format_duration(-elapsed)} in the future (the clock stepped back?)"
        )
    if elapsed >= settings.interval:
        return Trigger.INTERVAL, (
            f"last prune {format_duration(elapsed)} ago, interval {format_duration(settings.interval)}"
        )
    return None, f"next prune in {format_duration(settings.interval - elapsed)} (interval {format_duration(settings.interval)})"


def decide(settings: TriggerSettings, situation: Situation, now: datetime) -> Decision:
    """Given the settings, what the daemon knows and the time, return whether to prune now and why.

    Example: a 30m interval, a prune 2h ago, no build running -> ``Decision(prune=True,
    trigger=Trigger.INTERVAL, reason="last prune 2h ago, interval 30m")``.
    """
    if settings.disable:
        return Decision(False, "pruning is disabled (daemon.disable)")
    trigger, why = due_trigger(settings, situation, now)
    if trigger is None:
        return Decision(False, why)
    if situation.builds_in_flight > 0:
        detail = f": {situation.in_flight_detail}" if situation.in_flight_detail else ""
        waited = now - (situation.waiting_since or now)
        if waited < settings.build_wait_limit:
            return Decision(
                False,
                f"{why}; waiting for {situation.builds_in_flight} build(s) in progress{detail} "
                f"(waited {format_duration(waited)} of at most {format_duration(settings.build_wait_limit)})",
                trigger,
                held_by_build=True,
            )
        return Decision(
            True,
            f"{why}; builds still in progress{detail} after waiting {format_duration(waited)} "
            f"(build_wait_limit): pruning anyway, never touching what a build uses",
            trigger,
        )
    return Decision(True, why, trigger)
