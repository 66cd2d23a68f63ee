"""The daemon's Prometheus metrics, kept in a registry of their own.

A dedicated ``CollectorRegistry`` (never the process-global one) means two daemons in one
process, or a test that builds a fresh ``Metrics`` per case, never collide on metric names.

The supervisor loop owns one ``Metrics`` and tells it what happened; it decides nothing.
Typical calls, in the order a daemon makes them::

    metrics = Metrics()
    metrics.record_plan_usage(plan)                      # after each snapshot + plan
    started = time.monotonic()
    result = Executor(engine).execute(plan)
    metrics.record_run(result, trigger="interval",
                       duration_seconds=time.monotonic() - started, finished_at=time.time())
    metrics.record_engine_error(error)                   # whenever an engine call fails
    metrics.set_builds_in_flight(2)                      # whenever the count changes
    body, content_type = metrics.exposition()            # what /metrics serves

Every metric name and its meaning is listed in ``METRIC_HELP`` and in docs/deploy.md.
"""

from __future__ import annotations

import re
from typing import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

from .. import __version__
from ..errors import EngineBusy, EngineConflict, EngineNotFound, EngineUnreachable
from ..executor import Outcome, RunResult
from ..model import Kind
from ..planner import Plan
from ..report import counted_under, df_summary, shared_records

NAMESPACE = "sparkjoy"

# Triggers the daemon is expected to report. Any lower-case word is accepted (the label
# set stays small because the daemon, not the outside world, chooses it), but these are
# the ones documented in docs/deploy.md.
KNOWN_TRIGGERS = ("first", "interval", "builds", "pressure", "request")
_TRIGGER = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

# A prune's result label: "ok" (every planned object dealt with, nothing failed),
# "partial" (some objects failed or were not attempted, or the audit found a problem),
# "failed" (the run never got to delete: the snapshot or plan failed).
RESULTS = ("ok", "partial", "failed")

# Prunes range from a few hundred milliseconds (nothing to do) to many minutes (a big
# build cache on a slow disk), so the buckets span that, not the library's web defaults.
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)

# Engine error classes by exception type, never by message text.
ERROR_CLASSES = ("unreachable", "busy", "conflict", "not_found", "error")

METRIC_HELP = {
    "reclaimed_bytes_total": "Bytes freed by deleted objects, per kind, as the plan predicted them.",
    "measured_reclaimed_bytes_total": "Bytes freed as measured: the engine's usage before minus after each prune "
    "(never negative; other activity on the engine shows here too).",
    "removed_objects_total": "Objects deleted, per kind.",
    "prune_runs_total": "Prune runs, by trigger and result (ok, partial, failed).",
    "prune_duration_seconds": "Wall time of one prune (snapshot, plan and deletions), by trigger.",
    "disk_usage_bytes": "Bytes on disk per kind after the last prune, each shared layer counted once.",
    "reclaimable_bytes": "Bytes the active policy would free per kind after the last prune.",
    "objects": "Objects per kind after the last prune.",
    "last_success_timestamp_seconds": "Unix time of the last prune whose result was ok (0: none yet).",
    "last_run_timestamp_seconds": "Unix time of the last prune, whatever its result (0: none yet).",
    "engine_errors_total": "Failed engine calls, by class (unreachable, busy, conflict, not_found, error).",
    "builds_in_flight": "Builds the daemon currently knows to be running (engine-observed or announced).",
    "info": "Always 1; the version label says which sparkjoy is running.",
}


class Metrics:
    """Given what the daemon did, keep the numbers ``/metrics`` serves.

    Thread-safe: prometheus_client's metric values are, so the HTTP server may read while
    the supervisor loop writes.

    ``registry``: pass one to share it with other collectors; by default a new one.
    ``process_metrics``: also export the standard ``process_*`` (CPU, memory, open files)
    and ``python_info`` metrics into this registry.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *, process_metrics: bool = True) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry

        self.reclaimed_bytes = Counter(
            "reclaimed_bytes", METRIC_HELP["reclaimed_bytes_total"], ["kind"], namespace=NAMESPACE, registry=r
        )
        self.measured_reclaimed_bytes = Counter(
            "measured_reclaimed_bytes", METRIC_HELP["measured_reclaimed_bytes_total"], namespace=NAMESPACE, registry=r
        )
        self.removed_objects = Counter(
            "removed_objects", METRIC_HELP["removed_objects_total"], ["kind"], namespace=NAMESPACE, registry=r
        )
        self.prune_runs = Counter(
            "prune_runs", METRIC_HELP["prune_runs_total"], ["trigger", "result"], namespace=NAMESPACE, registry=r
        )
        self.prune_duration = Histogram(
            "prune_duration_seconds",
            METRIC_HELP["prune_duration_seconds"],
            ["trigger"],
            namespace=NAMESPACE,
            registry=r,
            buckets=DURATION_BUCKETS,
        )
        self.disk_usage = Gauge(
            "disk_usage_bytes", METRIC_HELP["disk_usage_bytes"], ["kind"], namespace=NAMESPACE, registry=r
        )
        self.reclaimable = Gauge(
            "reclaimable_bytes", METRIC_HELP["reclaimable_bytes"], ["kind"], namespace=NAMESPACE, registry=r
        )
        self.objects = Gauge("objects", METRIC_HELP["objects"], ["kind"], namespace=NAMESPACE, registry=r)
        self.last_success = Gauge(
            "last_success_timestamp_seconds",
            METRIC_HELP["last_success_timestamp_seconds"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.last_run = Gauge(
            "last_run_timestamp_seconds", METRIC_HELP["last_run_timestamp_seconds"], namespace=NAMESPACE, registry=r
        )
        self.engine_errors = Counter(
            "engine_errors", METRIC_HELP["engine_errors_total"], ["error"], namespace=NAMESPACE, registry=r
        )
        self.builds_in_flight = Gauge(
            "builds_in_flight", METRIC_HELP["builds_in_flight"], namespace=NAMESPACE, registry=r
        )
        self.info = Gauge("info", METRIC_HELP["info"], ["version"], namespace=NAMESPACE, registry=r)
        self.info.labels(version=__version__).set(1)

        # Every per-kind series exists from the start, at 0, so a dashboard's rate() and
        # sum() see a series before the first prune instead of "no data".
        for kind in Kind:
            for metric in (self.reclaimed_bytes, self.removed_objects):
                metric.labels(kind=kind.value)
            for metric in (self.disk_usage, self.reclaimable, self.objects):
                metric.labels(kind=kind.value)
        for error_class in ERROR_CLASSES:
            self.engine_errors.labels(error=error_class)

        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

    # -- events ---------------------------------------------------------------------------

    def record_run(
        self,
        result: RunResult,
        trigger: str,
        duration_seconds: float,
        finished_at: float,
    ) -> str:
        """Given one executed prune, count it; return its result label ("ok" or "partial").

        ``trigger`` is a lower-case word such as those in ``KNOWN_TRIGGERS``.
        ``finished_at`` is a Unix time (passed in, not read here, so tests control it).
        Per-kind bytes are the plan's prediction for each object actually deleted, under the kind
        whose size holds them (report.counted_under), as the reclaimable gauge counts them; the
        engine's measured total goes to ``measured_reclaimed_bytes_total``.
        """
        _check_trigger(trigger)
        for kind in Kind:
            removed = result.count(kind)
            if removed:
                self.removed_objects.labels(kind=kind.value).inc(removed)
        predicted: dict[Kind, int] = {}
        shared = shared_records(result.plan.snapshot)
        for object_result in result.results:
            if object_result.outcome is Outcome.DELETED:
                # Under the kind whose size holds the bytes, as sparkjoy_reclaimable_bytes counts them.
                kind = counted_under(object_result.planned, shared)
                predicted[kind] = predicted.get(kind, 0) + max(object_result.planned.bytes, 0)
        for kind, freed in predicted.items():
            self.reclaimed_bytes.labels(kind=kind.value).inc(freed)
        # Counters never go down; a negative measurement means the engine grew meanwhile.
        self.measured_reclaimed_bytes.inc(max(result.reclaimed_bytes, 0))

        outcome = "ok" if result.ok else "partial"
        self._count_run(trigger, outcome, duration_seconds, finished_at)
        if result.ok:
            self.last_success.set(finished_at)
        return outcome

    def record_failed_run(self, trigger: str, duration_seconds: float, finished_at: float) -> None:
        """Count a prune that never got to delete (snapshot or plan failed: engine lost, say).

        Record the engine error itself with ``record_engine_error``.
        """
        _check_trigger(trigger)
        self._count_run(trigger, "failed", duration_seconds, finished_at)

    def record_plan_usage(self, plan: Plan) -> None:
        """Given a plan, set disk usage, reclaimable bytes and object counts per kind.

        Uses ``report.df_summary``, so the numbers match ``sparkjoy df``.
        """
        usage, _unique = df_summary(plan)
        for item in usage:
            self.disk_usage.labels(kind=item.kind.value).set(max(item.bytes, 0))
            self.reclaimable.labels(kind=item.kind.value).set(max(item.reclaimable, 0))
            self.objects.labels(kind=item.kind.value).set(item.count)

    def record_engine_error(self, error: BaseException) -> str:
        """Count one failed engine call, classified by exception type; return the class label."""
        error_class = classify_engine_error(error)
        self.engine_errors.labels(error=error_class).inc()
        return error_class

    def set_builds_in_flight(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"builds in flight cannot be negative: {count}")
        self.builds_in_flight.set(count)

    # -- output ---------------------------------------------------------------------------

    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """Return (body, content type) for a scrape; ``accept`` is the request's Accept header.

        Prometheus text format by default, OpenMetrics when the scraper asks for it.
        """
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The current value of one sample, by full name (e.g. ``sparkjoy_prune_runs_total``), or None."""
        return self.registry.get_sample_value(name, labels or {})

    # -- inside ---------------------------------------------------------------------------

    def _count_run(self, trigger: str, outcome: str, duration_seconds: float, finished_at: float) -> None:
        self.prune_runs.labels(trigger=trigger, result=outcome).inc()
        self.prune_duration.labels(trigger=trigger).observe(max(duration_seconds, 0.0))
        self.last_run.set(finished_at)


def classify_engine_error(error: BaseException) -> str:
    """Given an exception from an engine call, return its class label for ``engine_errors_total``.

    >>> classify_engine_error(EngineUnreachable("unix:///x", "refused", ""))
    'unreachable'
    """
    if isinstance(error, EngineUnreachable):
        return "unreachable"
    if isinstance(error, EngineBusy):  # before EngineConflict: busy is a kind of 409
        return "busy"
    if isinstance(error, EngineConflict):
        return "conflict"
    if isinstance(error, EngineNotFound):
        return "not_found"
    return "error"


def metric_names() -> Iterable[str]:
    """Every sparkjoy metric's exposed name (counters with their ``_total`` suffix)."""
    return (f"{NAMESPACE}_{short}" for short in METRIC_HELP)


def _check_trigger(trigger: str) -> None:
    # The label value is chosen by the daemon, but a typo or a free-form string here would
    # make a new time series per value, so it is checked rather than trusted.
    if not _TRIGGER.match(trigger):
        raise ValueError(f"trigger must be a short lower-case word such as {', '.join(KNOWN_TRIGGERS)}: {trigger!r}")
