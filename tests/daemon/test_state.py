"""The daemon's SQLite memory: it survives a reopen, and a bad file means a warning and a fresh start."""

from __future__ import annotations

import logging
import os
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from sparkjoy.state import State, default_path

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc)


def test_last_use_first_sighting_events_and_prunes_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = State.open(path, "unix:///e1")
    state.ensure_seen(["sha256:a", "sha256:b"], NOW - timedelta(hours=3))
    state.record_events({"sha256:a": NOW - timedelta(minutes=5)}, builds=3, last_event_nanos=123, now=NOW)
    state.record_prune(NOW - timedelta(minutes=1))
    state.record_events({}, builds=2, last_event_nanos=456, now=NOW)
    state.close()

    reopened = State.open(path, "unix:///e1")
    memory = reopened.memory()
    mark = reopened.prune_mark()

    assert reopened.persistent
    assert memory.last_used == {"sha256:a": NOW - timedelta(minutes=5)}
    assert memory.first_seen["sha256:b"] == NOW - timedelta(hours=3)
    assert reopened.last_event_nanos == 456
    assert (mark.when, mark.builds_seen, mark.builds_at_last_prune) == (NOW - timedelta(minutes=1), 5, 3)


def test_a_later_use_replaces_an_earlier_one_but_never_the_other_way() -> None:
    state = State.open(None, "e")
    state.record_uses({"sha256:a": NOW}, NOW)
    state.record_uses({"sha256:a": NOW - timedelta(hours=1)}, NOW)

    assert state.memory().last_used["sha256:a"] == NOW


def test_the_first_sighting_is_never_moved_by_a_later_one() -> None:
    state = State.open(None, "e")

    assert state.ensure_seen(["sha256:a"], NOW - timedelta(hours=2)) == 1
    assert state.ensure_seen(["sha256:a"], NOW) == 0
    assert state.memory().first_seen["sha256:a"] == NOW - timedelta(hours=2)


def test_two_engines_in_one_file_keep_their_own_memory(tmp_path: Path) -> None:
    one = State.open(tmp_path / "s.db", "unix:///one")
    two = State.open(tmp_path / "s.db", "unix:///two")
    one.record_uses({"sha256:a": NOW}, NOW)

    assert two.memory().last_used == {}
    assert two.last_event_nanos is None


def test_images_the_engine_no_longer_has_are_forgotten() -> None:
    state = State.open(None, "e")
    state.ensure_seen(["sha256:a", "sha256:b"], NOW)

    assert state.forget_except(["sha256:b"]) == 1
    assert set(state.memory().first_seen) == {"sha256:b"}


def test_a_corrupt_file_is_reported_moved_aside_and_rebuilt(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database " * 500)

    with caplog.at_level(logging.WARNING, logger="sparkjoy.state"):
        state = State.open(path, "e")

    assert state.persistent
    assert state.memory().first_seen == {}
    assert "unreadable" in caplog.text and "fresh state" in caplog.text
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("state.db.corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"this is not a database")
    state.ensure_seen(["sha256:a"], NOW)
    state.close()
    assert set(State.open(path, "e").memory().first_seen) == {"sha256:a"}


def test_a_database_with_damaged_pages_is_rebuilt(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state.db"
    state = State.open(path, "e")
    state.ensure_seen([f"sha256:{i:064x}" for i in range(2000)], NOW)
    state.close()
    data = bytearray(path.read_bytes())
    for offset in range(4096, len(data), 4096):  # keep the header, scramble every page after the first
        data[offset + 100:offset + 400] = os.urandom(300)
    path.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="sparkjoy.state"):
        rebuilt = State.open(path, "e")

    assert "unreadable" in caplog.text
    assert rebuilt.memory().first_seen == {}


def test_a_database_of_another_schema_is_rebuilt_not_used(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE images (name TEXT)")

    with caplog.at_level(logging.WARNING, logger="sparkjoy.state"):
        state = State.open(path, "e")

    assert "unreadable" in caplog.text
    state.ensure_seen(["sha256:a"], NOW)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_an_unwritable_location_falls_back_to_memory_with_a_warning(tmp_path: Path, caplog) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)

    with caplog.at_level(logging.WARNING, logger="sparkjoy.state"):
        state = State.open(locked / "sub" / "state.db", "e")

    assert not state.persistent
    assert "in memory" in caplog.text


def test_an_unopenable_path_falls_back_to_memory_with_a_warning(tmp_path: Path, caplog) -> None:
    directory_in_the_way = tmp_path / "state.db"
    directory_in_the_way.mkdir()

    with caplog.at_level(logging.WARNING, logger="sparkjoy.state"):
        state = State.open(directory_in_the_way, "e")

    assert not state.persistent
    assert "in memory" in caplog.text
    assert directory_in_the_way.is_dir()


def test_the_default_location_follows_xdg_state_home_or_var_lib_for_root() -> None:
    assert default_path({"XDG_STATE_HOME": "/x/state", "HOME": "/home/u"}) == Path("/x/state/sparkjoy/state.db")
    if os.geteuid() == 0:
        assert default_path({"HOME": "/root"}) == Path("/var/lib/sparkjoy/state.db")
    else:
        assert default_path({"HOME": "/home/u"}) == Path("/home/u/.local/state/sparkjoy/state.db")


def test_a_database_broken_while_the_daemon_runs_is_rebuilt_and_the_call_still_succeeds(tmp_path: Path, caplog) -> None:
    path = tmp_path / "state.db"
    state = State.open(path, "e")
    state.ensure_seen(["sha256:a"], NOW)
    with sqlite3.connect(path) as other:  # another program breaks the schema under us
        other.execute("DROP TABLE images")

    with caplog.at_level(logging.WARNING, logger="sparkjoy.state"):
        state.record_uses({"sha256:b": NOW}, NOW)

    assert "became unreadable" in caplog.text
    assert state.memory().last_used == {"sha256:b": NOW}
    assert state.persistent


def test_image_histories_are_kept_per_engine_and_only_for_images_the_engine_still_has(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    steps = [{"Size": 5, "CreatedBy": "RUN"}, {"Size": 0, "CreatedBy": ""}]
    state = State.open(path, "unix:///e1")
    state.save_histories({"sha256:a": steps, "sha256:b": [{"Size": 1, "CreatedBy": "COPY"}]})
    State.open(path, "unix:///e2").save_histories({"sha256:a": [{"Size": 9, "CreatedBy": "ADD"}]})
    state.close()

    reopened = State.open(path, "unix:///e1")
    assert reopened.histories() == {"sha256:a": steps, "sha256:b": [{"Size": 1, "CreatedBy": "COPY"}]}
    # The engine no longer has b: its history goes, a's stays, another engine's is untouched.
    reopened.save_histories({"sha256:a": steps})
    assert reopened.histories() == {"sha256:a": steps}
    assert State.open(path, "unix:///e2").histories() == {"sha256:a": [{"Size": 9, "CreatedBy": "ADD"}]}


def test_an_unreadable_history_row_is_left_out_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    state = State.open(path, "unix:///e1")
    state.save_histories({"sha256:a": [{"Size": 5, "CreatedBy": "RUN"}]})
    state._db.execute("INSERT INTO histories VALUES ('unix:///e1', 'sha256:b', 'not json')")
    state._db.execute("INSERT INTO histories VALUES ('unix:///e1', 'sha256:c', '{\"a\": 1}')")
    assert state.histories() == {"sha256:a": [{"Size": 5, "CreatedBy": "RUN"}]}


def test_a_cache_user_opening_an_unusable_location_gets_no_warning(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.DEBUG, logger="sparkjoy.state"):
        state = State.open(blocker / "state.db", "unix:///e1", quiet=True)
    assert not state.persistent
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert state.histories() == {}


def test_image_inspects_are_kept_with_their_event_mark_per_engine(tmp_path: Path) -> None:
    from sparkjoy.engine.base import EventMark

    path = tmp_path / "state.db"
    state = State.open(path, "unix:///e1")
    assert state.inspects() == ({}, None)
    mark = EventMark(1_796_000_000_123_456_000, "1796000000000000001 image tag sha256:a")
    state.save_inspects({"sha256:a": {"Id": "sha256:a", "RepoTags": ["app:1"]}, "sha256:b": {"Id": "sha256:b"}}, mark)
    State.open(path, "unix:///e2").save_inspects({"sha256:c": {"Id": "sha256:c"}}, EventMark(5))
    state.close()

    reopened = State.open(path, "unix:///e1")
    assert reopened.inspects() == ({"sha256:a": {"Id": "sha256:a", "RepoTags": ["app:1"]},
                                    "sha256:b": {"Id": "sha256:b"}}, mark)
    # Saved again: exactly the images given, with the new mark.
    reopened.save_inspects({"sha256:b": {"Id": "sha256:b"}}, EventMark(7))
    assert reopened.inspects() == ({"sha256:b": {"Id": "sha256:b"}}, EventMark(7))
    # No mark (the engine's clock was not known): nothing may be trusted, so nothing is kept.
    reopened.save_inspects({"sha256:b": {"Id": "sha256:b"}}, None)
    assert reopened.inspects() == ({}, None)
    assert State.open(path, "unix:///e2").inspects() == ({"sha256:c": {"Id": "sha256:c"}}, EventMark(5))


def test_an_unreadable_inspect_row_is_left_out_not_an_error(tmp_path: Path) -> None:
    from sparkjoy.engine.base import EventMark

    state = State.open(tmp_path / "state.db", "unix:///e1")
    state.save_inspects({"sha256:a": {"Id": "sha256:a"}}, EventMark(3))
    state._db.execute("INSERT INTO inspects VALUES ('unix:///e1', 'sha256:b', 'not json')")
    state._db.execute("INSERT INTO inspects VALUES ('unix:///e1', 'sha256:c', '[1]')")
    assert state.inspects() == ({"sha256:a": {"Id": "sha256:a"}}, EventMark(3))


def test_an_event_mark_reads_from_its_anchor_and_from_the_start_when_the_anchor_is_unreadable() -> None:
    from sparkjoy.engine.base import EventMark

    assert EventMark(50).start_nanos == 50
    assert EventMark(50, "40 image tag sha256:a").start_nanos == 40
    assert EventMark(50, "60 image tag sha256:a").start_nanos == 50
    assert EventMark(50, "garbage").start_nanos == 0


def test_saving_inspects_writes_only_what_changed_since_they_were_read(tmp_path: Path) -> None:
    from sparkjoy.engine.base import EventMark

    path = tmp_path / "state.db"
    state = State.open(path, "unix:///e1")
    state.save_inspects({"sha256:a": {"Id": "sha256:a"}, "sha256:b": {"Id": "sha256:b"}}, EventMark(1))
    inspects, _ = state.inspects()
    # A row changed behind the reader's back is not rewritten when the answer handed out comes back unchanged...
    state._db.execute("UPDATE inspects SET inspect = '{\"Id\": \"sha256:a\", \"marker\": 1}' WHERE image_id = 'sha256:a'")
    fresh_b = {"Id": "sha256:b", "RepoTags": ["b:2"]}  # ...while one read anew is
    state.save_inspects({"sha256:a": inspects["sha256:a"], "sha256:b": fresh_b, "sha256:c": {"Id": "sha256:c"}},
                        EventMark(2))
    found, mark = State.open(path, "unix:///e1").inspects()
    assert found == {"sha256:a": {"Id": "sha256:a", "marker": 1}, "sha256:b": fresh_b, "sha256:c": {"Id": "sha256:c"}}
    assert mark == EventMark(2)


def test_cache_owners_are_added_to_per_record_and_forgotten_with_their_record(tmp_path: Path) -> None:
    from sparkjoy.planner import CacheOwner

    path = tmp_path / "state.db"
    state = State.open(path, "unix:///e1")
    p1 = CacheOwner(("p1:1",), {"project": "p1"})
    state.record_cache_owners({"r1": (p1,), "r2": (CacheOwner((), {}),), "gone": (p1,)}, ["r1", "r2", "r3"])
    assert state.memory().cache_owners == {"r1": (p1,), "r2": (CacheOwner((), {}),)}
    p1b = CacheOwner(("p1:2",), {"project": "p1"}, NOW)
    p1_again = CacheOwner(("p1:1",), {"project": "p1"}, NOW)  # deleted again (rebuilt, then pruned)
    state.record_cache_owners({"r1": (p1_again, p1b)}, ["r1", "r3"])  # r2 is gone from the engine now
    assert State.open(path, "unix:///e1").memory().cache_owners == {"r1": (p1_again, p1b)}
    assert State.open(path, "unix:///e2").memory().cache_owners == {}


def test_an_unreadable_cache_owners_row_counts_as_no_owners(tmp_path: Path) -> None:
    state = State.open(tmp_path / "state.db", "unix:///e1")
    state._db.execute("INSERT INTO cache_owners VALUES ('unix:///e1', 'r1', 'not json')")
    state._db.execute("INSERT INTO cache_owners VALUES ('unix:///e1', 'r2', '[{\"tags\": [\"a:1\"], \"labels\": {}}, 3]')")
    state._db.execute("INSERT INTO cache_owners VALUES ('unix:///e1', 'r3', '[{\"tags\": [\"a:1\"], \"labels\": {\"k\": 1}}]')")
    assert state.memory().cache_owners == {}


def test_every_method_that_reads_or_writes_the_database_is_guarded() -> None:
    # A database failure costs one call with a warning, never the daemon (``_recovering``):
    # each public method touching the file carries the guard; the others only delegate to one.
    import inspect

    not_touching = {"close", "remember_left_behind", "open"}
    unguarded = [name for name, method in inspect.getmembers(State, inspect.isfunction)
                 if not name.startswith("_") and name not in not_touching and not hasattr(method, "__wrapped__")]
    assert unguarded == []
