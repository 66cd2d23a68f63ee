"""The daemon on a real engine: last use across restarts, disk pressure, the engine restarting, signals."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sparkjoy.state import State
from tests.daemon.support import RunningDaemon, daemon_process, image_exists, run_and_remove
from tests.fixtures import busybox_layer, import_image, run_container, wait_until

LONG_AGO = datetime(2020, 1, 1, tzinfo=timezone.utc)
KB = 1000
MB = 1_000_000


def test_an_image_loaded_a_minute_ago_and_one_whose_containers_keep_starting_stay_under_a_1h_max_age_across_restarts(
    clean_engine, tmp_path: Path
) -> None:
    engine = clean_engine
    # Already on the engine when sparkjoy first starts (3h "ago", by its clock): never used.
    never_used = import_image(engine, 10 * KB, "never-used:1", created=LONG_AGO, tag_on_load=True)
    used_while_down = import_image(engine, 10 * KB, "used-while-down:1", created=LONG_AGO, tag_on_load=True,
                                   base=[busybox_layer()])

    with RunningDaemon(engine, tmp_path, clock_offset=-timedelta(hours=3), disable=True) as first:
        # Old images (created in 2020, no last-tag time): only sparkjoy's memory knows they are in use.
        loaded = import_image(engine, 10 * KB, "loaded:1", created=LONG_AGO, tag_on_load=True)
        cron = import_image(engine, 10 * KB, "cron:1", created=LONG_AGO, tag_on_load=True, base=[busybox_layer()])
        for _ in range(3):
            run_and_remove(engine, "cron:1")
        first.wait_for_events([loaded, cron])

    # While no daemon runs, a container of another image starts: the engine still has the event.
    run_and_remove(engine, "used-while-down:1")

    with RunningDaemon(engine, tmp_path, clock_offset=timedelta(minutes=50)) as second:
        summary = second.prune_and_wait()

    assert image_exists(engine, loaded), "an image loaded 50 minutes ago is within the 1h max age"
    assert image_exists(engine, cron), "an image whose containers started 50 minutes ago is within the 1h max age"
    assert image_exists(engine, used_while_down), "a use missed while down is replayed from the engine's events"
    assert not image_exists(engine, never_used), "first seen 3h50m ago and never used: old"
    assert summary.removed["image"] == 1

    # The same memory, judged 2h later: now their last use is older than the max age.
    with RunningDaemon(engine, tmp_path, clock_offset=timedelta(hours=2)) as third:
        third.prune_and_wait()
    assert not image_exists(engine, loaded) and not image_exists(engine, cron)


def test_the_engine_restarting_under_the_daemon_is_survived_with_its_memory_and_the_next_prune_is_right(
    engine_factory, tmp_path: Path
) -> None:
    engine = engine_factory()
    stale = import_image(engine, 10 * KB, "stale:1", created=LONG_AGO, tag_on_load=True)
    used = import_image(engine, 10 * KB, "used:1", created=LONG_AGO, tag_on_load=True, base=[busybox_layer()])
    three_hours_ago = datetime.now(timezone.utc) - timedelta(hours=3)
    seeded = State.open(tmp_path / "state.db", engine.host)
    seeded.ensure_seen([stale, used], three_hours_ago)  # sparkjoy first saw both 3h ago
    seeded.close()

    with RunningDaemon(engine, tmp_path, clock_offset=timedelta(minutes=30)) as daemon:
        run_and_remove(engine, "used:1")
        daemon.wait_for_events([used])

        engine.restart()
        daemon.wait_for(lambda: daemon.supervisor.connections >= 2, "the daemon to reconnect", timeout=60)
        daemon.wait_for(lambda: daemon.supervisor.contact.readiness()[0], "the daemon to be ready again")

        memory = daemon.supervisor.state.memory()
        assert memory.first_seen[stale] <= three_hours_ago + timedelta(seconds=1)
        assert used in memory.last_used
        summary = daemon.prune_and_wait()

    assert not image_exists(engine, stale)
    assert image_exists(engine, used)
    assert summary.removed["image"] == 1 and summary.failures == 0


def _filesystem_used(path: str) -> tuple[int, int]:
    stat = os.statvfs(path)
    total = stat.f_blocks * stat.f_frsize
    return total - stat.f_bfree * stat.f_frsize, total


def _percent(value: int, total: int) -> str:
    return f"{100 * value / total:.3f}%"


def test_disk_pressure_evicts_the_least_recently_used_until_under_the_low_mark_and_protected_images_stay(
    engine_factory, tmp_path: Path, caplog
) -> None:
    engine = engine_factory(data_root_size=400 * MB)
    size = 25 * MB
    # Tagged one after the other: their last-tag times order them, oldest first.
    in_use = import_image(engine, size, "lru:0", base=[busybox_layer()])
    run_container(engine, "lru:0", state="running")
    images = [in_use] + [import_image(engine, size, f"lru:{n}") for n in range(1, 6)]
    used, total = _filesystem_used(str(engine.data_root))

    # High just under today's usage; low 60MB below it: three 25MB images must go.
    with caplog.at_level(logging.INFO, logger="sparkjoy"):
        with RunningDaemon(engine, tmp_path / "one", high_watermark=_percent(used - 5 * MB, total),
                           low_watermark=_percent(used - 60 * MB, total), max_age="7d") as daemon:
            daemon.wait_for(lambda: daemon.supervisor.prunes, "an eviction")
            summary = daemon.supervisor.prunes[0]

    assert summary.trigger == "pressure"
    assert [image_exists(engine, i) for i in images] == [True, False, False, False, True, True]
    assert _filesystem_used(str(engine.data_root))[0] < used - 60 * MB
    assert "prune trigger=pressure: removed 3 images" in caplog.text

    # Now a low mark that only deleting the image in use could reach: it stays, and the daemon says so once.
    caplog.clear()
    used, total = _filesystem_used(str(engine.data_root))
    with caplog.at_level(logging.INFO, logger="sparkjoy"):
        with RunningDaemon(engine, tmp_path / "two", high_watermark=_percent(used - 5 * MB, total),
                           low_watermark=_percent(used - 70 * MB, total), max_age="7d") as daemon:
            daemon.wait_for(lambda: daemon.supervisor.prunes, "an eviction")
            checks = daemon.supervisor.pressure_checks
            daemon.wait_for(lambda: daemon.supervisor.pressure_checks >= checks + 5, "more pressure checks")
            prunes = list(daemon.supervisor.prunes)

    assert len(prunes) == 1, "an eviction that cannot reach the low mark is not repeated"
    assert [image_exists(engine, i) for i in images] == [True, False, False, False, False, False]
    assert caplog.text.count("cannot get under the low watermark without breaking a safety rule") == 1
    assert "in use by a container" in caplog.text


def test_sigterm_stops_the_daemon_with_exit_0_and_a_second_daemon_for_the_same_engine_is_refused(
    engine, tmp_path: Path
) -> None:
    log_path = tmp_path / "daemon.log"
    command = [str(Path(sys.executable).with_name("sparkjoy")), "run", "--host", engine.host,
               "--state-db", str(tmp_path / "state.db"), "--listen", "127.0.0.1:0", "--quiet-period", "1h"]
    env = {**engine.env(), "HOME": str(tmp_path)}
    with daemon_process(command, env, log_path) as daemon:
        wait_until(lambda: b"daemon started" in log_path.read_bytes(), timeout=30, what="the daemon to start")

        second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert second.returncode != 0
        assert "another sparkjoy daemon already manages the engine" in second.stderr

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    assert b"daemon stopped; state saved" in log_path.read_bytes()


def test_sigusr1_makes_the_running_daemon_prune_at_once(clean_engine, tmp_path: Path) -> None:
    engine = clean_engine
    doomed = import_image(engine, 10 * KB, "usr1:1", labels={"sigusr1": "yes"})
    bystander = import_image(engine, 10 * KB, "bystander:1")
    log_path = tmp_path / "daemon.log"
    command = [str(Path(sys.executable).with_name("sparkjoy")), "run", "--host", engine.host,
               "--state-db", str(tmp_path / "state.db"), "--listen", "127.0.0.1:0", "--quiet-period", "1h",
               "--max-age=-1s", "--keep-recent", "0", "--label", "sigusr1=yes", "--audit"]
    env = {**engine.env(), "HOME": str(tmp_path)}
    with daemon_process(command, env, log_path) as daemon:
        wait_until(lambda: b"daemon started" in log_path.read_bytes(), timeout=30, what="the daemon to start")
        assert image_exists(engine, doomed), "no prune before it is asked for (a quiet period of 1h)"
        daemon.send_signal(signal.SIGUSR1)
        wait_until(lambda: b"prune trigger=request: removed 1 image" in log_path.read_bytes(), timeout=60,
                   what="the prune SIGUSR1 asked for")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    assert not image_exists(engine, doomed) and image_exists(engine, bystander)
    assert b"audit:" not in log_path.read_bytes()


def test_a_stop_during_a_prune_finishes_the_deletion_in_progress_and_leaves_the_rest(clean_engine, tmp_path: Path,
                                                                                     caplog) -> None:
    engine = clean_engine
    caplog.set_level(logging.INFO, logger="sparkjoy")
    images = [import_image(engine, 100, f"many-{n}:1", created=LONG_AGO, tag_on_load=True) for n in range(80)]
    seeded = State.open(tmp_path / "state.db", engine.host)
    seeded.ensure_seen(images, datetime.now(timezone.utc) - timedelta(days=1))
    seeded.close()

    daemon = RunningDaemon(engine, tmp_path).start()
    try:
        daemon.supervisor.request_prune()
        wait_until(lambda: not all(image_exists(engine, i) for i in images[-10:] + images[:10]), timeout=60,
                   what="the first deletions")
    finally:
        daemon.stop()

    (summary,) = daemon.supervisor.prunes
    left = [i for i in images if image_exists(engine, i)]
    assert summary.stopped_early == "shutdown requested"
    assert 0 < summary.removed["image"] < len(images)
    assert len(left) == len(images) - summary.removed["image"], "every deletion started was finished"
    # Cut short, it is no prune for the schedule: once started again, the next one comes after
    # the quiet period, not an interval later with most of the work left undone (a review's case).
    assert State.open(tmp_path / "state.db", engine.host).prune_mark().when is None
    # What the stop left alone is one warning, not one per object (a new user saw 833 lines).
    not_attempted = [r.getMessage() for r in caplog.records
                     if r.levelno >= logging.WARNING and "not attempted" in r.getMessage()]
    assert not_attempted == [f"{len(left)} object(s) not attempted: shutdown requested (-v lists them)"], not_attempted


def test_with_size_watermarks_a_recently_used_image_outlives_newer_images_nobody_used(clean_engine, tmp_path: Path) -> None:
    from sparkjoy.engine.docker_engine import DockerEngine

    engine = clean_engine
    used = import_image(engine, 2 * MB, "lru-used:1", base=[busybox_layer()])  # tagged first: oldest tag
    newer = [import_image(engine, 2 * MB, f"lru-newer-{n}:1") for n in range(2)]
    seeded = State.open(tmp_path / "state.db", engine.host)
    seeded.record_uses({used: datetime.now(timezone.utc)}, datetime.now(timezone.utc))  # a container ran it just now
    seeded.close()
    usage = DockerEngine.connect(engine.host).usage()

    with RunningDaemon(engine, tmp_path, high_watermark=f"{usage - 500 * KB}B",
                       low_watermark=f"{usage - 3 * MB}B") as daemon:
        (summary,) = daemon.wait_for(lambda: daemon.supervisor.prunes, "an eviction")

    assert summary.trigger == "pressure"
    assert image_exists(engine, used)
    assert not any(image_exists(engine, i) for i in newer)
    assert summary.reclaimed_bytes >= 3 * MB


def test_the_daemons_audit_reports_a_kept_image_that_vanished_during_its_prune(clean_engine, tmp_path: Path,
                                                                               caplog) -> None:
    """`[daemon] audit` (on in every daemon test): a kept image removed by someone else while the
    daemon prunes is an error in the log and a failed object in the summary and the metrics."""
    from types import SimpleNamespace

    from tests.faultproxy import FaultProxy, Rule, hook
    from tests.integration.support import remove_image_by_hand

    engine = clean_engine
    doomed = import_image(engine, 10 * KB, "doomed:1")
    kept = import_image(engine, 10 * KB, "precious:1")
    with FaultProxy(engine.socket_path) as proxy:
        # Someone else deletes the kept image just as the daemon's first deletion goes out.
        proxy.add(Rule("DELETE", r"^/images/", hook(lambda request: remove_image_by_hand(engine, "precious:1"),
                                                     name="another actor"), times=1))
        with caplog.at_level(logging.INFO, logger="sparkjoy"):
            daemon = RunningDaemon(SimpleNamespace(host=proxy.host), tmp_path, exclude="precious:*",
                                   max_age="-1s").start()
            daemon.expect_audit_findings = True
            try:
                summary = daemon.prune_and_wait()
                partial = daemon.supervisor.metrics.sample(
                    "sparkjoy_prune_runs_total", {"trigger": summary.trigger, "result": "partial"})
            finally:
                daemon.stop()

    assert not image_exists(engine, doomed) and not image_exists(engine, kept)
    findings = summary.result.audit
    assert [(f.kind.value, f.id, f.problem) for f in findings] == [("image", kept, "kept image is gone")]
    assert summary.failures == 1
    assert f"audit: image {kept}: kept image is gone" in caplog.text
    assert not summary.result.ok and partial == 1


def test_an_engine_that_cannot_be_reached_is_retried_with_a_doubling_backoff_up_to_the_cap(tmp_path: Path) -> None:
    """The waits between connection attempts double from 1 s and stop growing at the cap, and a
    stop request ends the retrying at once. The waits are recorded, not slept."""
    import threading

    from sparkjoy import config
    from sparkjoy.daemon.settings import DaemonSettings
    from sparkjoy.daemon.supervisor import Supervisor

    loaded = config.load({"engine.host": f"unix://{tmp_path}/nobody.sock", "daemon.state_db": str(tmp_path / "s.db"),
                          "daemon.listen": "off"}, None, environ={"HOME": str(tmp_path)})
    supervisor = Supervisor(loaded, DaemonSettings.from_settings(loaded), backoff_max_seconds=8.0)

    class RecordingStop(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float] = []

        def wait(self, timeout: float | None = None) -> bool:
            self.waits.append(timeout)
            if len(self.waits) == 7:
                self.set()
            return self.is_set()

    supervisor._stop = RecordingStop()
    assert supervisor._connect() is None
    assert supervisor._stop.waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]
    ready, why = supervisor.contact.readiness()
    assert not ready and why.startswith("engine unreachable:"), why


def test_a_keep_recent_place_remembered_wrong_is_read_afresh_before_the_daemon_prunes(clean_engine, tmp_path: Path,
                                                                                      caplog) -> None:
    """The daemon plans from inspects its event stream keeps true. One remembered wrong (here
    k, read once by a proxy as tagged after d) would take the repository's one keep-recent
    place, and d's re-check, which sees only d, would let d go: the places are read afresh
    before the prune, and as k reads otherwise, every image is read again."""
    from types import SimpleNamespace

    from tests.faultproxy import FaultProxy, Rule, rewrite_json
    from tests.integration.support import parse_engine_time

    engine = clean_engine
    k = import_image(engine, 10 * KB, "rank/r:k")
    d = import_image(engine, 10 * KB, "rank/r:d")  # tagged after k: the newest
    with closing(engine.client()) as client:
        d_tagged = parse_engine_time(client.api.inspect_image(d)["Metadata"]["LastTagTime"])
    stale = (d_tagged + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def misread(answer: dict) -> dict:
        return {**answer, "Metadata": {**answer["Metadata"], "LastTagTime": stale}}

    with FaultProxy(engine.socket_path) as proxy:
        proxy.add(Rule("GET", rf"^/images/{k}/json$", rewrite_json(misread), times=1))
        with caplog.at_level(logging.INFO, logger="sparkjoy"):
            daemon = RunningDaemon(SimpleNamespace(host=proxy.host), tmp_path, keep_recent=1, max_age="1h",
                                   clock_offset=timedelta(days=10)).start()
            try:
                summary = daemon.prune_and_wait()
            finally:
                daemon.stop()
    assert image_exists(engine, d) and not image_exists(engine, k)
    assert summary.result is not None and summary.result.ok
    assert "holding keep-recent places changed since the snapshot; reading every image afresh" in caplog.text
