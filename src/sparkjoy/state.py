"""What the daemon remembers between runs, in an embedded SQLite database.

Per engine (rows are keyed by the engine's address, so one file can serve several
daemons): when each image was first seen and last used, the time of the last engine
event read (to replay what was missed on reconnect), and the last prune (time and the
build count at that moment). Two caches for the one-shot commands: each image's history
steps (size and instruction word), and the fields of its inspect that sparkjoy reads, with
the mark in the engine's event log from which their changes are read (``EventMark``).

Every write is one transaction, so a crash leaves the previous state, never half of a
new one. A database that cannot be read (corrupt, not a database, wrong schema) is
reported with a warning, moved aside as ``<name>.corrupt-<time>`` and started afresh:
forgetting last-use times is safe, because an image never seen is treated as first
seen now (see ``ensure_seen``), so a fresh start never turns into a purge. When the
file cannot even be created (read-only directory, permissions), the state lives in
memory for this run, with a warning; the daemon keeps working either way.

Default location: ``$XDG_STATE_HOME/sparkjoy/state.db`` (``~/.local/state/sparkjoy/state.db``),
or ``/var/lib/sparkjoy/state.db`` when running as root.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from .engine.base import EventMark
from .planner import CacheOwner, Memory, Plan, owners_left_behind

log = logging.getLogger("sparkjoy.state")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS images (
    engine TEXT NOT NULL,
    image_id TEXT NOT NULL,
    first_seen REAL NOT NULL,   -- unix seconds
    last_used REAL,             -- unix seconds, NULL when never seen in use
    PRIMARY KEY (engine, image_id)
);
CREATE TABLE IF NOT EXISTS claims (
    engine TEXT NOT NULL,
    repository TEXT NOT NULL,   -- a repository glob a dev tool said is its own
    last_claimed REAL NOT NULL, -- unix seconds
    PRIMARY KEY (engine, repository)
);
CREATE TABLE IF NOT EXISTS histories (
    engine TEXT NOT NULL,
    image_id TEXT NOT NULL,
    steps TEXT NOT NULL,        -- JSON: the image's history steps, [{"Size": int, "CreatedBy": "RUN"}]
    PRIMARY KEY (engine, image_id)
);
CREATE TABLE IF NOT EXISTS inspects (
    engine TEXT NOT NULL,
    image_id TEXT NOT NULL,     -- an image's id (sha256:...), or a stopped container's
    inspect TEXT NOT NULL,      -- JSON: the fields of the inspect that sparkjoy reads
    PRIMARY KEY (engine, image_id)
);
CREATE TABLE IF NOT EXISTS inspect_marks (
    engine TEXT PRIMARY KEY,
    events_since INTEGER NOT NULL, -- engine unix nanoseconds: its events from then on say what changed
    anchor TEXT,                   -- the newest event read then, "timeNano Type Action id"
    engine_identity TEXT NOT NULL DEFAULT ''  -- the engine's ID and data root then
);
CREATE TABLE IF NOT EXISTS cache_owners (
    engine TEXT NOT NULL,
    record_id TEXT NOT NULL,    -- a build-cache record that held layers of images a prune deleted
    owners TEXT NOT NULL,       -- JSON: those images' tags and labels, [{"tags": [...], "labels": {...}}]
    PRIMARY KEY (engine, record_id)
);
CREATE TABLE IF NOT EXISTS engines (
    engine TEXT PRIMARY KEY,
    last_event_nanos INTEGER,   -- the engine's timeNano of the last event read
    last_prune REAL,            -- unix seconds
    builds_seen INTEGER NOT NULL DEFAULT 0,
    builds_at_last_prune INTEGER NOT NULL DEFAULT 0
);
"""


def default_path(environ: Mapping[str, str] | None = None) -> Path:
    """Given the environment, return where the state database lives by default."""
    environ = os.environ if environ is None else environ
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not environ.get("XDG_STATE_HOME"):
        return Path("/var/lib/sparkjoy/state.db")
    base = environ.get("XDG_STATE_HOME") or str(Path(environ.get("HOME") or "~").expanduser() / ".local" / "state")
    return Path(base) / "sparkjoy" / "state.db"


def _seconds(when: datetime) -> float:
    return when.timestamp()


def _time(seconds: float | None) -> datetime | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


_CORRUPTION_CODES = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_ERROR)


def _recovering(default: Any = None) -> Callable:
    """Given a State method, return it guarded: a file found damaged mid-run is moved aside and
    rebuilt (then the call is retried once); any other database failure (locked for longer than
    the timeout, disk full) costs this one call, with a warning, never the daemon."""

    def wrap(method: Callable) -> Callable:
        @functools.wraps(method)
        def guarded(self: "State", *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except sqlite3.DatabaseError as error:
                code = getattr(error, "sqlite_errorcode", None)
                if code is not None and (code & 0xFF) in _CORRUPTION_CODES:
                    self._rebuild(error)
                    try:
                        return method(self, *args, **kwargs)
                    except sqlite3.DatabaseError as again:
                        error = again
                log.warning("state database %s: %s failed: %s", self.path or "(memory)", method.__name__, error)
                return default() if callable(default) else default

        return guarded

    return wrap


@dataclass(frozen=True)
class PruneMark:
    """The last prune: when, and the engine's build count at that moment."""

    when: datetime | None
    builds_seen: int
    builds_at_last_prune: int


class State:
    """The daemon's memory of one engine. Thread-safe (one connection behind a lock)."""

    def __init__(self, path: Path | None, engine: str, connection: sqlite3.Connection, persistent: bool):
        self.path = path
        self.engine = engine
        self.persistent = persistent
        self._db = connection
        self._lock = threading.RLock()
        self._inspects_read: dict[str, dict] = {}  # what ``inspects`` handed out, to save only changes

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike | None, engine: str, quiet: bool = False) -> "State":
        """Given a database path (None: in memory) and the engine's address, open or create the state.

        Never raises for a bad file: a corrupt one is moved aside and rebuilt, an unwritable
        location falls back to memory; both with a warning (the fallback to memory only at
        debug level when ``quiet``: for callers that use the state as a cache).
        """
        if path is None:
            return cls(None, engine, _connect(":memory:"), persistent=False)
        db_path = Path(path)
        try:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            return cls(db_path, engine, _connect(str(db_path)), persistent=True)
        except sqlite3.DatabaseError as error:
            if _is_unopenable(error, db_path):
                return cls._in_memory(db_path, engine, error, quiet)
            moved = _move_aside(db_path)
            log.warning(
                "state database %s is unreadable (%s); moved it to %s and starting with fresh state "
                "(images not seen before count as first seen now, so nothing becomes old because of this)",
                db_path, error, moved or "(could not move it)",
            )
            try:
                return cls(db_path, engine, _connect(str(db_path)), persistent=True)
            except (sqlite3.DatabaseError, OSError) as second:
                return cls._in_memory(db_path, engine, second, quiet)
        except OSError as error:
            return cls._in_memory(db_path, engine, error, quiet)

    @classmethod
    def _in_memory(cls, db_path: Path, engine: str, error: BaseException, quiet: bool = False) -> "State":
        log.log(
            logging.DEBUG if quiet else logging.WARNING,
            "cannot use state database %s (%s); keeping state in memory for this run only. "
            "Fix: make its directory writable or set [daemon] state_db", db_path, error,
        )
        return cls(None, engine, _connect(":memory:"), persistent=False)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rebuild(self, error: sqlite3.DatabaseError) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            if self.path is None:
                log.warning("in-memory state failed (%s); starting afresh", error)
                self._db = _connect(":memory:")
                return
            moved = _move_aside(self.path)
            log.warning(
                "state database %s became unreadable (%s); moved it to %s and starting with fresh state",
                self.path, error, moved or "(could not move it)",
            )
            fresh = State.open(self.path, self.engine)
            self._db, self.persistent = fresh._db, fresh.persistent
            if not fresh.persistent:
                self.path = None

    # -- images -------------------------------------------------------------------------

    @_recovering(Memory)
    def memory(self) -> Memory:
        """Given what is stored, return the planner's view: last use and first sighting per image."""
        with self._lock:
            rows = self._db.execute(
                "SELECT image_id, first_seen, last_used FROM images WHERE engine = ?", (self.engine,)
            ).fetchall()
            owner_rows = self._db.execute(
                "SELECT record_id, owners FROM cache_owners WHERE engine = ?", (self.engine,)).fetchall()
        last_used = {image_id: _time(used) for image_id, _, used in rows if used is not None}
        first_seen = {image_id: _time(seen) for image_id, seen, _ in rows}
        owners = {record_id: found for record_id, text in owner_rows if (found := _owners_from(text))}
        return Memory(last_used=last_used, first_seen=first_seen, cache_owners=owners)

    def remember_left_behind(self, plan: Plan, deleted_images: Iterable[str], when: datetime) -> None:
        """Given a real prune's plan, the images it deleted and when it ended, remember the
        owners of the build cache it left behind (``owners_left_behind``)."""
        self.record_cache_owners(owners_left_behind(plan, deleted_images, when),
                                 [r.id for r in plan.snapshot.build_cache])

    @_recovering(None)
    def record_cache_owners(self, owners: Mapping[str, tuple[CacheOwner, ...]], records: Iterable[str]) -> None:
        """Given build-cache record id -> images of it a prune deleted (``owners_left_behind``) and
        the records the engine has, add them to what is remembered; records gone are forgotten."""
        present = set(records)
        with self._lock, self._db:
            stored = dict(self._db.execute(
                "SELECT record_id, owners FROM cache_owners WHERE engine = ?", (self.engine,)).fetchall())
            self._db.executemany("DELETE FROM cache_owners WHERE engine = ? AND record_id = ?",
                                 [(self.engine, r) for r in stored if r not in present])
            rows = []
            for record_id, new in owners.items():
                if record_id not in present:
                    continue
                merged = {_owner_key(o): o for o in (*_owners_from(stored.get(record_id)), *new)}
                rows.append((self.engine, record_id, json.dumps(
                    [{"tags": list(o.repo_tags), "labels": dict(o.labels),
                      "at": _seconds(o.recorded) if o.recorded else None} for o in merged.values()],
                    separators=(",", ":"))))
            self._db.executemany(
                "INSERT OR REPLACE INTO cache_owners (engine, record_id, owners) VALUES (?, ?, ?)", rows)

    @_recovering(None)
    def record_uses(self, uses: Mapping[str, datetime], now: datetime) -> None:
        """Given image id -> a time it was used, keep the latest use of each (one transaction)."""
        if not uses:
            return
        with self._lock, self._db:
            self._save_uses(uses, now)

    def _save_uses(self, uses: Mapping[str, datetime], now: datetime) -> None:
        """Keep the latest use of each image; the caller holds the lock and the transaction."""
        self._db.executemany(
            "INSERT INTO images (engine, image_id, first_seen, last_used) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (engine, image_id) DO UPDATE SET last_used = "
            "MAX(COALESCE(last_used, excluded.last_used), excluded.last_used)",
            [(self.engine, image_id, _seconds(min(when, now)), _seconds(when)) for image_id, when in uses.items()],
        )

    @_recovering(0)
    def ensure_seen(self, image_ids: Iterable[str], now: datetime) -> int:
        """Record ``now`` as first sighting of each image not seen before; return how many were new."""
        with self._lock, self._db:
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO images (engine, image_id, first_seen) VALUES (?, ?, ?)",
                [(self.engine, image_id, _seconds(now)) for image_id in image_ids],
            )
            return self._db.total_changes - before

    @_recovering(0)
    def forget_except(self, image_ids: Iterable[str]) -> int:
        """Drop rows of images the engine no longer has (given every id it has); return how many."""
        keep = set(image_ids)
        with self._lock, self._db:
            stored = [row[0] for row in self._db.execute(
                "SELECT image_id FROM images WHERE engine = ?", (self.engine,))]
            gone = [(self.engine, image_id) for image_id in stored if image_id not in keep]
            self._db.executemany("DELETE FROM images WHERE engine = ? AND image_id = ?", gone)
        return len(gone)

    # -- image histories (a cache) ------------------------------------------------------

    @_recovering(dict)
    def histories(self) -> dict[str, list]:
        """Given what earlier snapshots read, return image id -> its history steps.

        An image's history never changes for its ID, so a later snapshot need not ask the
        engine again (``DockerEngine(histories=...)``)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT image_id, steps FROM histories WHERE engine = ?", (self.engine,)
            ).fetchall()
        found: dict[str, list] = {}
        for image_id, steps in rows:
            try:
                decoded = json.loads(steps)
            except ValueError:
                continue  # unreadable row: asked of the engine again
            if isinstance(decoded, list):
                found[image_id] = decoded
        return found

    @_recovering(None)
    def save_histories(self, histories: Mapping[str, list]) -> None:
        """Keep exactly these images' history steps (the images the engine has now): rows of
        images gone are dropped, so the cache never outgrows the engine."""
        rows = {image_id: steps for image_id, steps in histories.items() if isinstance(steps, list)}
        with self._lock, self._db:
            stored = {row[0] for row in self._db.execute(
                "SELECT image_id FROM histories WHERE engine = ?", (self.engine,))}
            self._db.executemany("DELETE FROM histories WHERE engine = ? AND image_id = ?",
                                 [(self.engine, i) for i in stored - rows.keys()])
            # Only new images are written (and encoded): the daemon saves after every snapshot.
            self._db.executemany("INSERT OR IGNORE INTO histories (engine, image_id, steps) VALUES (?, ?, ?)",
                                 [(self.engine, i, json.dumps(steps, separators=(",", ":")))
                                  for i, steps in rows.items() if i not in stored])

    # -- image and stopped-container inspects (a cache the engine's events keep true) -----

    @_recovering(lambda: ({}, None))
    def inspects(self) -> tuple[dict[str, dict], EventMark | None]:
        """Given what the last one-shot run read, return image (or stopped container) id -> its inspect (the fields
        sparkjoy reads) and where in the engine's events that run ended, from which the events
        tell which of them changed since (None: nothing usable is stored)."""
        with self._lock:
            mark = self._db.execute(
                "SELECT events_since, anchor, engine_identity FROM inspect_marks WHERE engine = ?",
                (self.engine,)).fetchone()
            if mark is None or not isinstance(mark[0], int):
                return {}, None
            rows = self._db.execute(
                "SELECT image_id, inspect FROM inspects WHERE engine = ?", (self.engine,)).fetchall()
        found: dict[str, dict] = {}
        for image_id, inspect in rows:
            try:
                decoded = json.loads(inspect)
            except ValueError:
                continue  # unreadable row: inspected again
            if isinstance(decoded, dict):
                found[image_id] = decoded
        self._inspects_read = dict(found)
        return found, EventMark(mark[0], mark[1] if isinstance(mark[1], str) else None,
                                mark[2] if isinstance(mark[2], str) else "")

    @_recovering(None)
    def save_inspects(self, inspects: Mapping[str, dict], mark: EventMark | None) -> None:
        """Keep exactly these inspects (the images and stopped containers the engine has now) with where in the
        engine's events a later run must start reading to trust them; with no mark, keep none."""
        read, self._inspects_read = self._inspects_read, {}
        with self._lock, self._db:
            self._db.execute("DELETE FROM inspect_marks WHERE engine = ?", (self.engine,))
            if mark is None:
                self._db.execute("DELETE FROM inspects WHERE engine = ?", (self.engine,))
                return
            kept = {i: v for i, v in inspects.items() if isinstance(v, dict)}
            stored = {row[0] for row in self._db.execute("SELECT image_id FROM inspects WHERE engine = ?",
                                                         (self.engine,))}
            self._db.executemany("DELETE FROM inspects WHERE engine = ? AND image_id = ?",
                                 [(self.engine, i) for i in stored - kept.keys()])
            # Only what this run read anew is written (and encoded): an answer handed out by
            # ``inspects`` and given back unchanged is the very same object.
            self._db.executemany(
                "INSERT OR REPLACE INTO inspects (engine, image_id, inspect) VALUES (?, ?, ?)",
                [(self.engine, i, json.dumps(v, separators=(",", ":"))) for i, v in kept.items()
                 if not (i in stored and read.get(i) is v)])
            self._db.execute(
                "INSERT INTO inspect_marks (engine, events_since, anchor, engine_identity) VALUES (?, ?, ?, ?)",
                (self.engine, int(mark.since_nanos), mark.anchor, mark.engine))

    # -- events and prunes --------------------------------------------------------------

    def _engine_row(self) -> tuple[int | None, float | None, int, int]:
        row = self._db.execute(
            "SELECT last_event_nanos, last_prune, builds_seen, builds_at_last_prune FROM engines WHERE engine = ?",
            (self.engine,),
        ).fetchone()
        return row if row else (None, None, 0, 0)

    def _ensure_engine_row(self) -> None:
        self._db.execute("INSERT OR IGNORE INTO engines (engine) VALUES (?)", (self.engine,))

    @property
    def last_event_nanos(self) -> int | None:
        """The engine's ``timeNano`` of the last event read, to resume the stream after it."""
        return self._last_event_nanos()

    @_recovering(None)
    def _last_event_nanos(self) -> int | None:
        with self._lock:
            return self._engine_row()[0]

    @_recovering(None)
    def record_events(self, uses: Mapping[str, datetime], builds: int, last_event_nanos: int | None,
                      now: datetime) -> None:
        """Given what a batch of events taught, save it all in one transaction."""
        with self._lock, self._db:
            self._ensure_engine_row()
            self._save_uses(uses, now)
            if builds:
                self._db.execute("UPDATE engines SET builds_seen = builds_seen + ? WHERE engine = ?",
                                 (builds, self.engine))
            if last_event_nanos is not None:
                self._db.execute(
                    "UPDATE engines SET last_event_nanos = MAX(COALESCE(last_event_nanos, 0), ?) WHERE engine = ?",
                    (last_event_nanos, self.engine),
                )

    @_recovering(lambda: PruneMark(None, 0, 0))
    def prune_mark(self) -> PruneMark:
        with self._lock:
            _, last_prune, builds_seen, at_prune = self._engine_row()
        return PruneMark(_time(last_prune), builds_seen, at_prune)

    @_recovering(None)
    def record_prune(self, when: datetime) -> None:
        """Remember a prune: its time, and the build count it covered."""
        with self._lock, self._db:
            self._ensure_engine_row()
            self._db.execute(
                "UPDATE engines SET last_prune = ?, builds_at_last_prune = builds_seen WHERE engine = ?",
                (_seconds(when), self.engine),
            )

    # -- claims -------------------------------------------------------------------------

    @_recovering(None)
    def record_claims(self, repositories: Iterable[str], now: datetime) -> None:
        """Remember repository globs a dev tool said are its own (see ``daemon.scope_from_builds``)."""
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO claims (engine, repository, last_claimed) VALUES (?, ?, ?) "
                "ON CONFLICT (engine, repository) DO UPDATE SET last_claimed = excluded.last_claimed",
                [(self.engine, repository, _seconds(now)) for repository in repositories],
            )

    @_recovering(tuple)
    def claims(self) -> tuple[str, ...]:
        """Given what dev tools announced, return every repository glob they claimed, sorted."""
        with self._lock:
            rows = self._db.execute(
                "SELECT repository FROM claims WHERE engine = ? ORDER BY repository", (self.engine,)
            ).fetchall()
        return tuple(row[0] for row in rows)


def _owner_key(owner: CacheOwner) -> tuple:
    return tuple(owner.repo_tags), tuple(sorted(owner.labels.items()))


def _owners_from(text: str | None) -> tuple[CacheOwner, ...]:
    """Given a stored owners row, return its owners; nothing for a row that cannot be read."""
    try:
        decoded = json.loads(text) if text else []
    except ValueError:
        return ()
    owners = []
    for item in decoded if isinstance(decoded, list) else []:
        tags = item.get("tags") if isinstance(item, dict) else None
        labels = item.get("labels") if isinstance(item, dict) else None
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return ()  # half an owner list would make a record look more in scope than it is
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
            return ()
        at = item.get("at")
        try:
            recorded = _time(at) if isinstance(at, (int, float)) and not isinstance(at, bool) else None
        except (OverflowError, OSError, ValueError):
            recorded = None
        owners.append(CacheOwner(tuple(tags), labels, recorded))
    return tuple(owners)


def _connect(target: str) -> sqlite3.Connection:
    # check_same_thread=False: the State serialises access with its own lock.
    connection = sqlite3.connect(target, timeout=10, check_same_thread=False, isolation_level=None)
    try:
        connection.isolation_level = "DEFERRED"  # `with connection:` commits or rolls back
        # quick_check reads every page: a damaged file is found now, not in the middle of a run.
        result = connection.execute("PRAGMA quick_check").fetchone()
        if not result or result[0] != "ok":
            raise sqlite3.DatabaseError(f"integrity check failed: {result[0] if result else 'no answer'}")
        if target != ":memory:":
            connection.execute("PRAGMA journal_mode=WAL")
        with connection:
            for statement in filter(str.strip, _SCHEMA.split(";")):
                connection.execute(statement)
            stored = connection.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
            if stored is None:
                connection.execute("INSERT INTO meta (name, value) VALUES ('schema_version', ?)",
                                   (str(SCHEMA_VERSION),))
            elif stored[0] != str(SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {stored[0]}, expected {SCHEMA_VERSION}")
            # A table from another program with our names but other columns is caught here.
            connection.execute("SELECT engine, image_id, first_seen, last_used FROM images LIMIT 1").fetchall()
            connection.execute("SELECT engine, image_id, steps FROM histories LIMIT 1").fetchall()
            connection.execute("SELECT engine, image_id, inspect FROM inspects LIMIT 1").fetchall()
            connection.execute("SELECT engine, record_id, owners FROM cache_owners LIMIT 1").fetchall()
            connection.execute(
                "SELECT engine, events_since, anchor, engine_identity FROM inspect_marks LIMIT 1").fetchall()
            connection.execute(
                "SELECT engine, last_event_nanos, last_prune, builds_seen, builds_at_last_prune FROM engines LIMIT 1"
            ).fetchall()
    except BaseException:
        connection.close()
        raise
    return connection


def _is_unopenable(error: sqlite3.DatabaseError, path: Path) -> bool:
    """True when the file could not be opened or written at all (permissions), as opposed to bad content."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None and (code & 0xFF) in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_PERM):
        return True
    return path.exists() and not os.access(path, os.R_OK | os.W_OK)


def _move_aside(path: Path) -> Path | None:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    try:
        os.replace(path, target)
    except OSError:
        try:
            path.unlink()
        except OSError:
            return None
        return None
    for suffix in ("-wal", "-shm"):
        try:
            os.replace(f"{path}{suffix}", f"{target}{suffix}")
        except OSError:
            pass
    return target
