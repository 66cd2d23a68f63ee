"""The metrics registry: what a prune, a plan and an engine error turn into on /metrics."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sparkjoy.daemon.metrics import KNOWN_TRIGGERS, Metrics, classify_engine_error, metric_names
from sparkjoy.errors import EngineBusy, EngineConflict, EngineError, EngineNotFound, EngineUnreachable
from sparkjoy.executor import ObjectResult, Outcome, RunResult
from sparkjoy.model import BuildCacheRecord, Container, ContainerState, Image, Kind, Snapshot
from sparkjoy.planner import plan as make_plan
from sparkjoy.policy import Policy
from sparkjoy.report import df_summary

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)
LONG_AGO = NOW - timedelta(days=30)
MB = 1_000_000


def snapshot() -> Snapshot:
    """An old unused image (10 MB), a new one in use (5 MB), a stopped container, an old cache record."""
    old = Image("sha256:" + "a" * 64, ("app:old",), LONG_AGO, LONG_AGO, 10 * MB, 0)
    new = Image("sha256:" + "b" * 64, ("app:new",), NOW, NOW, 5 * MB, 0)
    stopped = Container(
        "c" * 64, ("done",), new.id, "app:new", ContainerState.EXITED, LONG_AGO, LONG_AGO, 2 * MB
    )
    record = BuildCacheRecord("r1", "", "regular", "RUN make", False, False, 3 * MB, LONG_AGO, LONG_AGO, 1)
    return Snapshot(NOW, (old, new), (stopped,), (record,), (), 15 * MB)


def a_plan():
    return make_plan(snapshot(), Policy(max_age=timedelta(hours=1), keep_recent=0), now=NOW)


def run_result(outcomes: dict[Kind, Outcome], usage_before: int, usage_after: int, stopped_early: str = "") -> RunResult:
    the_plan = a_plan()
    results = tuple(ObjectResult(o, outcomes.get(o.kind, Outcome.DELETED)) for o in the_plan.deletions)
    return RunResult(the_plan, results, usage_before, usage_after, stopped_early)


def test_every_metric_has_a_help_text_and_appears_in_the_exposition_before_any_prune() -> None:
    body, content_type = Metrics(process_metrics=False).exposition()
    assert content_type.startswith("text/plain")
    exposed = {f.name for f in text_string_to_metric_families(body.decode())}
    for name in metric_names():
        # The parser drops counters' _total suffix from family names.
        assert name.removesuffix("_total") in exposed, name


def test_a_successful_prune_counts_objects_and_predicted_bytes_per_kind_and_sets_last_success() -> None:
    metrics = Metrics(process_metrics=False)
    result = run_result({}, usage_before=100 * MB, usage_after=85 * MB)
    the_plan = result.plan
    assert {o.kind for o in the_plan.deletions} == {Kind.IMAGE, Kind.CONTAINER, Kind.BUILD_CACHE}

    assert metrics.record_run(result, "interval", duration_seconds=2.5, finished_at=1_800_000_000.0) == "ok"

    for kind in (Kind.IMAGE, Kind.CONTAINER, Kind.BUILD_CACHE):
        predicted = sum(o.bytes for o in the_plan.deletions if o.kind is kind)
        assert metrics.sample("sparkjoy_removed_objects_total", {"kind": kind.value}) == 1
        assert metrics.sample("sparkjoy_reclaimed_bytes_total", {"kind": kind.value}) == predicted
    assert metrics.sample("sparkjoy_removed_objects_total", {"kind": "volume"}) == 0
    assert metrics.sample("sparkjoy_measured_reclaimed_bytes_total") == 15 * MB
    assert metrics.sample("sparkjoy_prune_runs_total", {"trigger": "interval", "result": "ok"}) == 1
    assert metrics.sample("sparkjoy_prune_duration_seconds_count", {"trigger": "interval"}) == 1
    assert metrics.sample("sparkjoy_prune_duration_seconds_sum", {"trigger": "interval"}) == 2.5
    assert metrics.sample("sparkjoy_last_success_timestamp_seconds") == 1_800_000_000.0
    assert metrics.sample("sparkjoy_last_run_timestamp_seconds") == 1_800_000_000.0


def test_a_prune_with_a_failure_is_partial_and_leaves_last_success_alone() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.record_run(run_result({}, 10, 5), "first", 1.0, finished_at=1000.0)
    result = run_result({Kind.IMAGE: Outcome.FAILED}, 10, 8)

    assert metrics.record_run(result, "pressure", 1.0, finished_at=2000.0) == "partial"

    assert metrics.sample("sparkjoy_prune_runs_total", {"trigger": "pressure", "result": "partial"}) == 1
    assert metrics.sample("sparkjoy_last_success_timestamp_seconds") == 1000.0
    assert metrics.sample("sparkjoy_last_run_timestamp_seconds") == 2000.0
    # The failed image is not counted as removed (1 from the first run only).
    assert metrics.sample("sparkjoy_removed_objects_total", {"kind": "image"}) == 1


def test_measured_reclaimed_bytes_never_go_down_when_the_engine_grew_during_the_prune() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.record_run(run_result({}, usage_before=10 * MB, usage_after=50 * MB), "interval", 1.0, 1.0)
    assert metrics.sample("sparkjoy_measured_reclaimed_bytes_total") == 0


def test_a_prune_that_never_got_to_delete_is_counted_as_failed() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.record_failed_run("builds", 0.3, finished_at=5.0)
    assert metrics.sample("sparkjoy_prune_runs_total", {"trigger": "builds", "result": "failed"}) == 1
    assert metrics.sample("sparkjoy_last_success_timestamp_seconds") == 0


def test_plan_usage_matches_what_sparkjoy_df_reports() -> None:
    metrics = Metrics(process_metrics=False)
    the_plan = a_plan()
    metrics.record_plan_usage(the_plan)
    usage, _ = df_summary(the_plan)
    for item in usage:
        assert metrics.sample("sparkjoy_disk_usage_bytes", {"kind": item.kind.value}) == item.bytes
        assert metrics.sample("sparkjoy_reclaimable_bytes", {"kind": item.kind.value}) == item.reclaimable
        assert metrics.sample("sparkjoy_objects", {"kind": item.kind.value}) == item.count
    assert metrics.sample("sparkjoy_disk_usage_bytes", {"kind": "image"}) == 15 * MB
    assert metrics.sample("sparkjoy_reclaimable_bytes", {"kind": "image"}) > 0


@pytest.mark.parametrize(
    ("error", "label"),
    [
        (EngineUnreachable("unix:///var/run/docker.sock", "connection refused", "is dockerd running?"), "unreachable"),
        (EngineBusy("prune build cache", 409, "a prune operation is already running"), "busy"),
        (EngineConflict("delete image", 409, "image is being used"), "conflict"),
        (EngineNotFound("inspect image", 404, "no such image"), "not_found"),
        (EngineError("snapshot", 500, "server error"), "error"),
        (OSError("socket closed"), "error"),
    ],
)
def test_engine_errors_are_classified_by_exception_type(error: BaseException, label: str) -> None:
    metrics = Metrics(process_metrics=False)
    assert classify_engine_error(error) == label
    metrics.record_engine_error(error)
    assert metrics.sample("sparkjoy_engine_errors_total", {"error": label}) == 1


def test_builds_in_flight_is_a_gauge_that_refuses_negative_counts() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.set_builds_in_flight(3)
    assert metrics.sample("sparkjoy_builds_in_flight") == 3
    metrics.set_builds_in_flight(0)
    assert metrics.sample("sparkjoy_builds_in_flight") == 0
    with pytest.raises(ValueError):
        metrics.set_builds_in_flight(-1)


@pytest.mark.parametrize("trigger", ["", "Interval", "a prune asked for by Bob", "x" * 40])
def test_a_free_form_trigger_is_refused_so_label_values_stay_few(trigger: str) -> None:
    with pytest.raises(ValueError):
        Metrics(process_metrics=False).record_failed_run(trigger, 1.0, 1.0)


def test_the_documented_triggers_are_accepted() -> None:
    metrics = Metrics(process_metrics=False)
    for trigger in KNOWN_TRIGGERS:
        metrics.record_failed_run(trigger, 1.0, 1.0)


def test_two_registries_in_one_process_do_not_collide() -> None:
    first, second = Metrics(), Metrics()
    first.set_builds_in_flight(2)
    assert second.sample("sparkjoy_builds_in_flight") == 0
    assert first.sample("process_cpu_seconds_total") is not None


def test_openmetrics_is_served_when_the_scraper_asks_for_it() -> None:
    body, content_type = Metrics(process_metrics=False).exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")

