"""The daemon's settings: its config keys (section ``[daemon]``) and their checked form.

The keys are registered in ``config.EXTRA_SCHEMA`` when this module is imported, so
``sparkjoy config --keys``, the environment (``SPARKJOY_DAEMON_*``) and the config file
all know them. ``DaemonSettings.from_settings`` turns them into typed values and rejects
settings that contradict each other, naming both keys.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping

from .. import config
from ..errors import ConfigError
from ..units import format_bytes, parse_size
from .listen import DEFAULT_LISTEN, parse_listen

DEFAULT_INTERVAL = timedelta(hours=1)


@dataclass(frozen=True)
class Watermark:
    """A disk-usage mark: a percentage of the data root's filesystem, or bytes of Docker usage."""

    percent: float | None = None
    bytes: int | None = None

    @property
    def is_percent(self) -> bool:
        return self.percent is not None

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else format_bytes(self.bytes or 0)

    def threshold(self, total_bytes: int | None) -> int:
        """Given the filesystem's size (for percentages), return the mark in bytes."""
        if self.percent is not None:
            if total_bytes is None:
                raise ValueError("a percentage mark needs the filesystem's size")
            return int(total_bytes * self.percent / 100)
        return self.bytes or 0


def parse_watermark(value: Any) -> Watermark:
    """Given ``"85%"`` or a size such as ``"20GB"``, return a Watermark. A bare number is
    refused: ``85`` meant as 85% would be a mark of 85 bytes, and the daemon would evict
    everything it may at once."""
    bare = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(\.[0-9]+)?\s*", value):
        bare = float(value)
    if bare is not None and bare <= 0:
        raise ValueError(f"a mark must be above zero, with its unit, such as '85%' or '20GB', got {value!r}")
    if bare is not None:
        number = value.strip() if isinstance(value, str) else str(value)
        guesses = [f"'{bare * 100:g}%'"] if 0 < bare < 1 else []  # a fraction: 0.85 -> 85%
        guesses += [f"'{number}%'"] if 0 < bare < 100 else []
        guesses += [f"'{number}GB'"] + ([f"'{number}B'"] if float(bare).is_integer() else [])
        raise ValueError(f"a bare number is no mark: a percentage of the filesystem or a size needs its "
                         f"unit (did you mean {' or '.join(guesses)}?)")
    if isinstance(value, str) and value.strip().endswith("%"):
        number = value.strip()[:-1].strip()
        try:
            percent = float(number)
        except ValueError:
            raise ValueError(f"invalid percentage {value!r}: use a number such as 85%") from None
        if not 0 < percent < 100:
            raise ValueError(f"a percentage mark must be between 0% and 100% (exclusive), got {value!r}")
        return Watermark(percent=percent)
    size = parse_size(value)
    if size <= 0:
        raise ValueError(f"a size mark must be positive, got {value!r}")
    return Watermark(bytes=size)


def show_watermark(mark: Watermark) -> str:
    """A mark as written in a config file, exactly: ``"85%"``, ``"20GB"``, ``"1234567B"``."""
    if mark.percent is not None:
        short = f"{mark.percent:g}"
        return (short if float(short) == mark.percent else repr(mark.percent)) + "%"
    size = format_bytes(mark.bytes or 0)  # 4 significant digits: exact for round sizes only
    return size if parse_size(size) == mark.bytes else f"{mark.bytes}B"


def _optional_duration(value: Any) -> timedelta:
    duration = config._duration(value)
    if duration <= timedelta(0):
        raise ValueError(f"must be positive, got {value!r}")
    return duration


def _non_negative_duration(value: Any) -> timedelta:
    duration = config._duration(value)
    if duration < timedelta(0):
        raise ValueError(f"must not be negative, got {value!r}")
    return duration


def _path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a file path, got {value!r}")
    try:
        return str(Path(value.strip()).expanduser())
    except RuntimeError:  # "~nosuchuser/x": no home directory to expand to
        raise ValueError(f"cannot expand {value!r}: no such user's home directory") from None


def _listen(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected HOST:PORT such as {DEFAULT_LISTEN}, got {value!r}")
    text = value.strip()
    if text.lower() in ("off", "none"):
        return ""
    try:
        parse_listen(text)
    except ConfigError as error:
        raise ValueError(str(error).split(": ", 1)[-1]) from None
    return text


def _log_format(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("text", "json"):
        raise ValueError(f"expected text or json, got {value!r}")
    return text


KEYS = (
    config.Key("scope_from_builds", config._boolean, False,
               "Prune only images of repositories that dev tools named as theirs in build notifications "
               "(the \"repos\" of POST /build/start, Client.build(repos=...)), plus the repos setting; "
               "nothing until one does.", "scope_from_builds = true", section="daemon"),
    config.Key("disable", config._boolean, False,
               "Run without ever pruning (the daemon still records last use).", "disable = false",
               section="daemon"),
    config.Key("interval", _optional_duration, None,
               "Prune this often, counted from the last prune, across restarts (default 1h). Not together "
               "with num_builds.", 'interval = "1h"',
               section="daemon", unset="1h, unless num_builds is set"),
    config.Key("num_builds", config._whole(0), 0,
               "Prune after every N builds the engine reports (images of the scope built or tagged) "
               "instead of on an interval; 0 means off.", "num_builds = 10", section="daemon"),
    config.Key("high_watermark", parse_watermark, None,
               "Disk pressure: when usage passes this mark (a percentage of the filesystem holding "
               "Docker's data root, or a size of Docker usage), evict least recently used images and build "
               "cache until under low_watermark. With its unit: a bare number is refused. Off by default.",
               'high_watermark = "85%"',
               section="daemon", show=show_watermark, unset="no eviction under disk pressure"),
    config.Key("low_watermark", parse_watermark, None,
               "Where eviction stops (same kind of mark as high_watermark; default: 5 points or 10% below it).",
               'low_watermark = "80%"', section="daemon", show=show_watermark,
               unset="5 points below a percentage high_watermark, 10% below a size"),
    config.Key("data_root", _path, None,
               "Where the engine's data root can be seen from here, for percentage marks (default: the "
               "engine's DockerRootDir). Set it when the daemon runs in a container with it mounted elsewhere.",
               'data_root = "/host/var/lib/docker"', section="daemon", unset="the engine's DockerRootDir"),
    config.Key("state_db", _path, None,
               "The state database (last use per image, last prune). Default: "
               "$XDG_STATE_HOME/sparkjoy/state.db, or /var/lib/sparkjoy/state.db as root.",
               'state_db = "/var/lib/sparkjoy/state.db"', section="daemon",
               unset="$XDG_STATE_HOME/sparkjoy/state.db, or /var/lib/sparkjoy/state.db as root"),
    config.Key("build_wait_limit", _optional_duration, timedelta(minutes=30),
               "The longest a due prune waits for builds in progress; after that it prunes anyway "
               "(objects a running build uses are never removed).", 'build_wait_limit = "30m"',
               section="daemon"),
    config.Key("quiet_period", _non_negative_duration, timedelta(minutes=2),
               "The first prune after start, once due, waits for a build to finish, or this long after "
               "start when none comes.",
               'quiet_period = "2m"', section="daemon"),
    config.Key("listen", _listen, DEFAULT_LISTEN,
               "Address of /healthz, /readyz, /metrics and the build notifications (POST /build/start, "
               "/build/finish, /prune); \"off\" disables them.", 'listen = "127.0.0.1:9867"',
               section="daemon", show=lambda listen: listen or "off"),
    config.Key("log_format", _log_format, "text", "Log as plain text or JSON lines.", 'log_format = "json"',
               section="daemon"),
    config.Key("audit", config._boolean, False,
               "After each prune, check that every image (with all its tags), build-cache record and volume "
               "the plan kept is still there; "
               "a finding is logged as an error and the run counts as failed (like `prune --audit`).",
               "audit = true", section="daemon"),
)


def register() -> None:
    """Add the daemon's keys to the config schema (once)."""
    known = {(k.section, k.name) for k in config.EXTRA_SCHEMA}
    for key in KEYS:
        if (key.section, key.name) not in known:
            config.EXTRA_SCHEMA.append(key)


register()


def contradictions(values: Mapping[str, Any], sources: Mapping[str, str] | None = None) -> list[str]:
    """Given settings by dotted key (a key missing: unknown, its value was wrong) and where
    each set one came from, return a problem for each pair of [daemon] settings that
    contradict each other, naming both and their sources.

    ``config.load`` runs it for `sparkjoy run` and `sparkjoy config` (``checks``), so they
    come with every other problem at once."""
    def known(name: str) -> bool:
        return f"daemon.{name}" in values

    def get(name: str) -> Any:
        return values[f"daemon.{name}"]

    def shown(name: str) -> str:  # "daemon.interval (5m, flag --interval)"
        where = (sources or {}).get(f"daemon.{name}")
        return f"daemon.{name} ({_show(get(name))}{', ' + where if where else ''})"

    problems = []
    if known("interval") and known("num_builds") and get("interval") is not None and get("num_builds"):
        problems.append(
            f"{shown('interval')} and {shown('num_builds')} contradict each other: prune on an interval or "
            "every N builds, not both; remove one (or set num_builds to 0)"
        )
    if not (known("high_watermark") and known("low_watermark")):
        return problems
    high, low = get("high_watermark"), get("low_watermark")
    if low is not None and high is None:
        problems.append(f"{shown('low_watermark')} is set but daemon.high_watermark is not: set both, or neither")
    if high is not None and low is not None:
        if high.is_percent != low.is_percent:
            problems.append(
                f"{shown('high_watermark')} and {shown('low_watermark')} mix a percentage with a "
                "size: use the same kind for both"
            )
        elif (high.percent or high.bytes or 0) < (low.percent or low.bytes or 0):
            problems.append(
                f"{shown('low_watermark')} is above {shown('high_watermark')}: the low mark must "
                "not be above the high one"
            )
    return problems


@dataclass(frozen=True)
class DaemonSettings:
    """Checked daemon settings. Build with ``from_settings``; invariants hold once it exists."""

    disable: bool = False
    scope_from_builds: bool = False
    interval: timedelta = DEFAULT_INTERVAL
    num_builds: int = 0
    high_watermark: Watermark | None = None
    low_watermark: Watermark | None = None
    data_root: str | None = None
    state_db: str | None = None  # None: state.default_path()
    build_wait_limit: timedelta = timedelta(minutes=30)
    quiet_period: timedelta = timedelta(minutes=2)
    listen: str = DEFAULT_LISTEN
    log_format: str = "text"
    audit: bool = False

    @classmethod
    def from_settings(cls, settings: config.Settings) -> "DaemonSettings":
        """Given loaded settings, return the daemon's, or raise ConfigError naming every contradiction."""
        values = {key.name: settings.values.get(f"daemon.{key.name}", key.default) for key in KEYS}
        problems = contradictions(settings.values)
        if problems:
            raise ConfigError(problems)
        high, low = values["high_watermark"], values["low_watermark"]
        if high is not None and low is None:
            low = (Watermark(percent=max(high.percent - 5, high.percent / 2)) if high.is_percent
                   else Watermark(bytes=int(high.bytes * 0.9)))
        return cls(
            disable=values["disable"],
            scope_from_builds=values["scope_from_builds"],
            interval=values["interval"] or DEFAULT_INTERVAL,
            num_builds=values["num_builds"],
            high_watermark=high,
            low_watermark=low,
            data_root=values["data_root"],
            state_db=values["state_db"],
            build_wait_limit=values["build_wait_limit"],
            quiet_period=values["quiet_period"],
            listen=values["listen"],
            log_format=values["log_format"],
            audit=values["audit"],
        )

    def state_path(self) -> Path:
        from ..state import default_path

        return Path(self.state_db) if self.state_db else default_path()


def engine_key(host: str) -> str:
    """Given an engine address, return a short stable name for files about it (lock, control socket)."""
    return hashlib.sha256(host.encode()).hexdigest()[:12]


def lock_path(state_db: Path, host: str) -> Path:
    """Given the state database and the engine's address, return the lock file that keeps one daemon per engine."""
    return state_db.parent / f"sparkjoy-{engine_key(host)}.lock"


def _show(value: Any) -> str:
    if isinstance(value, timedelta):
        from ..units import format_duration

        return format_duration(value)
    return str(value)
