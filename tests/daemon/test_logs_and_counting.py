"""The summary log line (text and JSON lines) and prunes every N builds on a real engine."""

from __future__ import annotations

import io
import json
import logging
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sparkjoy.daemon.supervisor import PruneSummary, configure_logging
from sparkjoy.state import State
from tests.daemon.support import RunningDaemon, image_exists
from tests.fixtures import import_image

SUMMARY = PruneSummary(
    trigger="interval", reason="last prune 1h ago", at=datetime(2026, 12, 3, tzinfo=timezone.utc),
    duration_seconds=3.14, removed={"container": 2, "image": 1, "build-cache": 12, "volume": 0},
    reclaimed_bytes=1_200_000_000, predicted_bytes=1_250_000_000, failures=0,
)


def test_the_summary_line_names_the_trigger_the_removals_per_kind_and_the_measured_bytes() -> None:
    assert SUMMARY.line() == (
        "prune trigger=interval: removed 2 containers, 1 image, 12 build-cache records; reclaimed 1.2GB "
        "measured (predicted 1.25GB); 0 failed; took 3.1s"
    )


def test_json_logs_are_one_object_per_line_with_the_prune_fields() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("sparkjoy")
    saved = (list(logger.handlers), logger.level)
    configure_logging("json", logging.INFO, stream)
    try:
        logging.getLogger("sparkjoy.daemon").info("%s", SUMMARY.line(), extra={"fields": SUMMARY.fields()})
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])

    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "info" and record["message"].startswith("prune trigger=interval")
    assert record["trigger"] == "interval" and record["removed"]["build-cache"] == 12
    assert record["reclaimed_bytes"] == 1_200_000_000
    assert record["stopped_early"] is None and record["note"] is None  # not "": nothing to say


def test_every_n_builds_counts_what_the_engine_reports_whatever_tool_tagged_it(clean_engine, tmp_path: Path) -> None:
    engine = clean_engine
    stale = import_image(engine, 1000, "stale:1", created=datetime(2020, 1, 1, tzinfo=timezone.utc),
                         tag_on_load=True)
    seeded = State.open(tmp_path / "state.db", engine.host)
    seeded.ensure_seen([stale], datetime(2020, 1, 1, tzinfo=timezone.utc))
    seeded.close()
    built = [import_image(engine, 1000, tag_on_load=True) for _ in range(3)]

    with RunningDaemon(engine, tmp_path, num_builds=2) as daemon:
        def tag(image_id: str, name: str) -> None:
            with closing(engine.client()) as client:
                client.api.tag(image_id, name, "latest")

        tag(built[0], "app-a")  # the first build finishing: the first prune
        first = daemon.wait_for(lambda: daemon.supervisor.prunes, "the first prune")[0]
        assert first.trigger == "first"
        assert not image_exists(engine, stale)

        tag(built[1], "app-b")
        daemon.wait_for(lambda: daemon.supervisor.state.prune_mark().builds_seen >= 2, "the second build counted")
        assert len(daemon.supervisor.prunes) == 1, "one build since the last prune is not yet two"

        tag(built[2], "app-c")
        daemon.wait_for(lambda: len(daemon.supervisor.prunes) == 2, "the prune after two more builds")
        assert daemon.supervisor.prunes[1].trigger == "builds"


def test_a_prune_shows_in_the_metrics_and_readyz_says_the_engine_was_reached(engine, tmp_path: Path) -> None:
    import urllib.request

    with RunningDaemon(engine, tmp_path) as daemon:
        daemon.prune_and_wait()
        base = daemon.supervisor.http.url
        with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
            metrics = response.read().decode()
        with urllib.request.urlopen(base + "/readyz", timeout=10) as response:
            ready = (response.status, response.read().decode())

    assert 'sparkjoy_prune_runs_total{result="ok",trigger="request"} 1.0' in metrics
    assert ready[0] == 200 and ready[1].startswith("ready: engine reached")


def test_the_usage_gauges_show_the_engine_as_the_prune_left_it(clean_engine, tmp_path: Path) -> None:
    """From a new user's trial: the gauges were set from the plan before the prune, so after a
    prune that freed everything they still showed it, and the documented alert on
    sparkjoy_reclaimable_bytes fired after every prune that worked."""
    engine = clean_engine
    doomed = [import_image(engine, 200_000, f"gauge-{n}:1", tag_on_load=True) for n in range(3)]
    kept = import_image(engine, 100_000, "gauge-kept:1", tag_on_load=True)

    with RunningDaemon(engine, tmp_path, max_age="-1s", exclude=["gauge-kept:*"]) as daemon:
        summary = daemon.prune_and_wait()
        metrics = daemon.supervisor.metrics

        def gauge(name: str, kind: str) -> float:
            return metrics.registry.get_sample_value(name, {"kind": kind})

        assert summary.removed["image"] == 3 and not any(image_exists(engine, i) for i in doomed)
        assert image_exists(engine, kept)
        assert gauge("sparkjoy_objects", "image") == 1
        assert gauge("sparkjoy_reclaimable_bytes", "image") == 0
        assert gauge("sparkjoy_disk_usage_bytes", "image") >= 100_000


@pytest.mark.parametrize("buildkit", [True, False], ids=["BuildKit", "classic"])
def test_a_real_docker_build_counts_as_a_build(clean_engine, tmp_path: Path, buildkit: bool) -> None:
    """The build count comes from the engine's own events, so `docker build -t` with either
    builder counts, whatever tool ran it (here the docker CLI, never told about the daemon)."""
    from tests.fixtures import BUSYBOX_BASE, build

    engine = clean_engine
    with RunningDaemon(engine, tmp_path, num_builds=5) as daemon:
        before = daemon.supervisor.state.prune_mark().builds_seen
        build(engine, BUSYBOX_BASE + f"RUN echo {'kit' if buildkit else 'classic'} > /which\n", "counted:1",
              buildkit=buildkit)
        daemon.wait_for(lambda: daemon.supervisor.state.prune_mark().builds_seen == before + 1,
                        "the build to be counted")
        build(engine, BUSYBOX_BASE + "RUN echo again > /again\n", "counted:2", buildkit=buildkit)
        daemon.wait_for(lambda: daemon.supervisor.state.prune_mark().builds_seen == before + 2,
                        "the second build to be counted")


def test_builds_replayed_from_before_the_start_are_counted_but_do_not_start_the_first_prune(
        clean_engine, tmp_path: Path) -> None:
    """From a new user's trial: a build made while the daemon was down, replayed by the event
    stream at start, counted as 'a build has finished', and the daemon pruned 0.13 s after it
    started, before the morning's first builds had touched what they need."""
    engine = clean_engine
    built = [import_image(engine, 1000, tag_on_load=True) for _ in range(3)]
    with RunningDaemon(engine, tmp_path, disable=True) as first:  # leaves its event mark
        with closing(engine.client()) as client:
            client.api.tag(built[2], "seen-by-the-first", "1")
        first.wait_for(lambda: first.supervisor.state.prune_mark().builds_seen >= 1, "an event read and marked")
    with closing(engine.client()) as client:
        client.api.tag(built[0], "made-while-down", "1")  # a build while no daemon runs

    with RunningDaemon(engine, tmp_path) as second:  # num_builds off, the default 1h interval
        second.wait_for(lambda: second.supervisor.state.prune_mark().builds_seen >= 2, "the replayed build counted")
        second.wait_for(lambda: "waits for a build to finish" in second.supervisor.last_decision,
                        "the first prune to wait")
        assert not second.supervisor.build_finished_since_start
        assert second.supervisor.prunes == []

        with closing(engine.client()) as client:
            client.api.tag(built[1], "made-now", "1")  # the first build since the start
        first_prune = second.wait_for(lambda: second.supervisor.prunes, "the first prune")[0]
        assert first_prune.trigger == "first"
        assert "a build has finished" in first_prune.reason
