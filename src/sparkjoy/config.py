"""Settings from a TOML file, the environment and flags, checked once into typed values.

Precedence: flags > environment (``SPARKJOY_*``) > config file > defaults. The config file is
``--config FILE``, else ``$SPARKJOY_CONFIG``, else the first that exists of
``$XDG_CONFIG_HOME/sparkjoy/config.toml`` (``~/.config/sparkjoy/config.toml``) and
``/etc/sparkjoy/config.toml``.

Every key is declared once in ``SCHEMA`` with its parser, description and example; the
README's table and ``sparkjoy config --keys`` come from it. Every problem is reported
with where it came from (file and key, variable, or flag), all at once, not just the first.
"""

from __future__ import annotations

import difflib
import os
import re
from enum import Enum
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .engine.connect import ADDRESS_FORMS, address_problem
from .errors import ConfigError
from .policy import LabelSelector, Policy, VolumeMode, exclude_problem
from .units import format_duration_exact, parse_duration, parse_size


def _duration(value: Any) -> timedelta:
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '6h', got {value!r}")
    if isinstance(value, (int, float)):
        raise ValueError(f"a bare number is ambiguous: write it with a unit, such as '{value}s' or '{value}m'")
    return parse_duration(value)


def _whole(minimum: int = 0) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected a whole number, got {value!r}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        if value > 10**9:
            raise ValueError(f"{value} is absurdly large")
        return value

    return parse


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        # Environment variables carry lists comma-separated.
        value = [part for part in (p.strip() for p in value.split(",")) if part]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"expected a list of non-empty strings, got {value!r}")
    return tuple(v.strip() for v in value)


def _exclusions(value: Any) -> tuple[str, ...]:
    patterns = _strings(value)
    for pattern in patterns:
        problem = exclude_problem(pattern)
        if problem:
            raise ValueError(problem)
    return patterns


def _labels(value: Any) -> tuple[LabelSelector, ...]:
    return tuple(LabelSelector.parse(text) for text in _strings(value))


def _volumes(value: Any) -> VolumeMode:
    if value is True:
        return VolumeMode.ANONYMOUS
    if value is False:
        return VolumeMode.NONE
    try:
        return VolumeMode(str(value).strip().lower())
    except ValueError:
        raise ValueError(f"expected one of none, anonymous, all, got {value!r}") from None


def _host(value: Any) -> str:
    problem = address_problem(value)
    if problem:
        raise ValueError(f"not an engine address ({problem}). Use {ADDRESS_FORMS}")
    return value


def _timeout(value: Any) -> int:
    seconds = _duration(value).total_seconds()
    if seconds < 1:
        raise ValueError(f"must be at least 1s, got {value!r}")
    return int(seconds)


def _size(value: Any) -> int:
    return parse_size(value)


@dataclass(frozen=True)
class Key:
    name: str
    parse: Callable[[Any], Any]
    default: Any
    description: str
    example: str
    section: str = ""  # "" for top-level keys
    # How a checked value is written back into a config file (a str, int, bool or list of
    # them); None: the usual way for its type (see ``_written``).
    show: Callable[[Any], Any] | None = None
    unset: str = ""  # what applies when a key whose default is None is not set

    @property
    def env(self) -> str:
        prefix = f"SPARKJOY_{self.section.upper()}_" if self.section else "SPARKJOY_"
        return prefix + self.name.upper()


SCHEMA: tuple[Key, ...] = (
    Key("max_age", _duration, timedelta(hours=6),
        "An object is old when its last tag or last use (images), finish (containers), last use "
        "(build cache) or creation (volumes) is longer ago than this. Negative: everything is old.",
        'max_age = "6h"'),
    Key("keep_recent", _whole(0), 2,
        "Among old tagged images, keep this many of the newest per repository.",
        "keep_recent = 2"),
    Key("labels", _labels, (),
        "Scope: only objects carrying every one of these labels (KEY or KEY=VALUE).",
        'labels = ["project=p1"]'),
    Key("repos", _strings, (),
        "Scope: only images whose repository matches one of these globs.",
        'repos = ["myapp/*"]'),
    Key("exclude", _exclusions, (),
        "Protect images with any repo:tag matching one of these globs.",
        'exclude = ["redis:*", "*:keep"]'),
    Key("containers", _boolean, True, "Prune stopped containers older than max_age.", "containers = true"),
    Key("images", _boolean, True, "Prune images.", "images = true"),
    Key("build_cache", _boolean, True, "Prune build-cache records unused for longer than max_age.",
        "build_cache = true"),
    Key("volumes", _volumes, VolumeMode.NONE,
        "Prune unused volumes older than max_age: none, anonymous, or all (named ones too).",
        'volumes = "none"'),
    Key("host", _host, None,
        "Engine address; default: DOCKER_HOST, the current docker context, then the local socket.",
        'host = "unix:///var/run/docker.sock"', section="engine",
        unset="DOCKER_HOST, docker context, or unix:///var/run/docker.sock"),
    Key("timeout", _timeout, 600, "How long one engine call may take before it is abandoned.",
        'timeout = "10m"', section="engine", show=lambda seconds: format_duration_exact(timedelta(seconds=seconds))),
)

POLICY_KEYS = ("max_age", "keep_recent", "labels", "repos", "exclude", "containers", "images", "build_cache", "volumes")
EXTRA_SCHEMA: list[Key] = []  # sections added by other commands (the daemon registers its keys here)


def all_keys() -> tuple[Key, ...]:
    # The [daemon] section's keys live with the daemon; every command knows them, as one file
    # or environment serves the daemon and the commands run beside it.
    from .daemon import settings as _daemon_keys  # noqa: F401 (registers them; a cheap import)

    return SCHEMA + tuple(EXTRA_SCHEMA)


@dataclass(frozen=True)
class Settings:
    """Checked settings: the policy plus everything else, and where the file came from."""

    policy: Policy
    values: Mapping[str, Any] = field(default_factory=dict)  # "section.name" or "name" -> value
    config_file: Path | None = None

    def get(self, dotted: str) -> Any:
        return self.values[dotted]

    @property
    def host(self) -> str | None:
        return self.values.get("engine.host")

    @property
    def timeout(self) -> int:
        return self.values.get("engine.timeout", 600)


def default_config_paths(environ: Mapping[str, str]) -> list[Path]:
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".config")
    return [Path(xdg) / "sparkjoy" / "config.toml", Path("/etc/sparkjoy/config.toml")]


def _dotted(key: Key) -> str:
    return f"{key.section}.{key.name}" if key.section else key.name


def load(
    flags: Mapping[str, Any] | None = None,
    config_path: str | None = None,
    environ: Mapping[str, str] | None = None,
    flag_names: Mapping[str, str] | None = None,
    checks: Sequence[Callable[[Mapping[str, Any], Mapping[str, str]], list[str]]] = (),
) -> Settings:
    """Given flags (dotted key -> raw value, only those the user gave), a --config path and the
    environment, return checked Settings or raise ConfigError listing every problem.

    ``flag_names`` (dotted key -> the option as the user types it, such as ``--label`` for
    ``labels``) names a flag in problems; without it a flag is named after its key. ``checks``
    find settings that contradict each other: each is given the values by dotted key (a key
    whose value is wrong is missing) and where each set one came from (dotted key -> "flag
    --interval", a file's path...), and returns its problems, reported with every other."""
    environ = os.environ if environ is None else environ
    flags = flags or {}
    keys = {(_dotted(k)): k for k in all_keys()}
    problems: list[str] = []
    raw: dict[str, tuple[Any, str]] = {}

    path = _choose_file(config_path, environ, problems)
    from_file: dict[str, tuple[Any, str]] = {}
    if path is not None:
        _read_file(path, keys, from_file, problems)
    problems.extend(_unknown_variables(environ, keys))
    from_env = {
        dotted: (environ[key.env], f"environment variable {key.env}")
        for dotted, key in keys.items()
        if key.env in environ and environ[key.env] != ""
    }
    raw.update(from_file)
    raw.update(from_env)
    for dotted, value in flags.items():
        if value is None:
            continue
        if dotted not in keys:
            raise ValueError(f"unknown setting {dotted!r}")  # a programming error, not user input
        name = (flag_names or {}).get(dotted) or "--" + keys[dotted].name.replace("_", "-")
        raw[dotted] = (value, f"flag {name}")

    values: dict[str, Any] = {}
    for dotted, key in keys.items():
        if dotted not in raw:
            values[dotted] = key.default
            continue
        value, source = raw[dotted]
        try:
            values[dotted] = key.parse(value)
        except (ValueError, TypeError) as error:
            problems.append(f"{source}: {dotted} = {_show(value)}: {error}")
    # A value overridden by a flag or variable must still be valid: a broken config file or
    # variable should not go unnoticed until the day the overriding flag is dropped.
    for layer in (from_file, from_env):
        for dotted, (value, source) in layer.items():
            if raw[dotted][1] == source:
                continue  # the winner, checked above
            try:
                keys[dotted].parse(value)
            except (ValueError, TypeError) as error:
                problems.append(f"{source}: {dotted} = {_show(value)}: {error}")
    sources = {dotted: source for dotted, (_, source) in raw.items()}
    for check in checks:
        problems.extend(check(values, sources))
    if problems:
        raise ConfigError(problems)
    try:
        policy = Policy(**{name: values[name] for name in POLICY_KEYS})
    except ConfigError as error:
        raise ConfigError([f"policy: {p}" for p in error.problems]) from error
    return Settings(policy=policy, values=values, config_file=path)


def toml_lines(values: Mapping[str, Any]) -> list[str]:
    """Given checked values by dotted key (``Settings.values``), return them as TOML lines that
    ``load`` reads back to the same values: ``max_age = "6h"``, ``engine.timeout = "10m"``
    (dotted keys, which TOML reads as the ``[engine]`` table). A key with no value is a comment
    saying what applies instead: ``# engine.host: not set (DOCKER_HOST, ...)``."""
    lines = []
    for key in all_keys():
        dotted = _dotted(key)
        value = values.get(dotted, key.default)
        if value is None:
            lines.append(f"# {dotted}: not set" + (f" ({key.unset})" if key.unset else ""))
        else:
            lines.append(f"{dotted} = {_toml(key.show(value) if key.show else _written(value))}")
    return lines


def _written(value: Any) -> Any:
    """A checked value as it is written in a config file."""
    if isinstance(value, timedelta):
        return format_duration_exact(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, LabelSelector):
        return str(value)  # KEY or KEY=VALUE
    if isinstance(value, (tuple, list)):
        return [_written(v) for v in value]
    if isinstance(value, (bool, int, str)):
        return value
    raise TypeError(f"no way to write {value!r} in a config file: give its Key a show function")


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"not a TOML value: {value!r}")


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(text: str) -> str:
    """A TOML basic string. Control and other invisible characters are escaped, so the output
    is one line per key and cannot rewrite the terminal; a lone surrogate (undecodable bytes of
    an environment variable), which TOML cannot hold, becomes U+FFFD."""
    out = []
    for ch in text:
        if ch in _TOML_ESCAPES:
            out.append(_TOML_ESCAPES[ch])
        elif "\ud800" <= ch <= "\udfff":
            out.append("\ufffd")
        elif not ch.isprintable():
            out.append(f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def load_value(dotted: str, flag: Any = None, config_path: str | None = None,
               environ: Mapping[str, str] | None = None) -> Any:
    """Given one key, its flag's value (None: not given), a --config path and the environment,
    return that key's checked value, or raise ConfigError for it alone.

    For a command that needs one setting (``sparkjoy build`` needs the daemon's address): the
    other keys and variables, and mistakes in them, are the other commands' business, and must
    not stop a build from being announced to the daemon."""
    environ = os.environ if environ is None else environ
    keys = {_dotted(k): k for k in all_keys()}
    key = keys[dotted]
    problems: list[str] = []
    path = _choose_file(config_path, environ, problems)  # a file named must be there, as for load()
    if flag is not None:
        raw: tuple[Any, str] | None = (flag, "flag --" + key.name.replace("_", "-"))
    elif environ.get(key.env):
        raw = (environ[key.env], f"environment variable {key.env}")
    else:
        raw = None
        if path is not None:
            from_file: dict[str, tuple[Any, str]] = {}
            _read_file(path, keys, from_file, problems, report_unknown=False)
            raw = from_file.get(dotted)
    if problems:
        raise ConfigError(problems)
    if raw is None:
        return key.default
    try:
        return key.parse(raw[0])
    except (ValueError, TypeError) as error:
        raise ConfigError([f"{raw[1]}: {dotted} = {_show(raw[0])}: {error}"]) from None


def _choose_file(config_path: str | None, environ: Mapping[str, str], problems: list[str]) -> Path | None:
    explicit = config_path or environ.get("SPARKJOY_CONFIG")
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            source = "--config" if config_path else "SPARKJOY_CONFIG"
            problems.append(f"{source}: config file {explicit} does not exist or is not a file")
            return None
        return path
    for candidate in default_config_paths(environ):
        if candidate.is_file():
            return candidate
    return None


def _read_file(path: Path, keys: Mapping[str, Key], raw: dict[str, tuple[Any, str]], problems: list[str],
               report_unknown: bool = True) -> None:
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        problems.append(f"{path}: not a text file (is it the right file?)")
        return
    except tomllib.TOMLDecodeError as error:
        problems.append(f"{path}: not valid TOML: {error}")
        return
    except RecursionError:
        # tomllib parses nested arrays and inline tables recursively.
        problems.append(f"{path}: not valid TOML: arrays or tables nested too deeply")
        return
    except OSError as error:
        problems.append(f"{path}: cannot read: {error.strerror or error}")
        return
    sections = {k.section for k in keys.values() if k.section}
    for name, value in data.items():
        if isinstance(value, dict) and name in sections:
            for sub, subvalue in value.items():
                dotted = f"{name}.{sub}"
                if dotted in keys:
                    raw[dotted] = (subvalue, f"{path}")
                elif report_unknown:
                    problems.append(f"{path}: unknown key [{name}] {sub}{_suggest(dotted, keys)}")
        elif name in keys and not keys[name].section:
            raw[name] = (value, f"{path}")
        elif report_unknown:
            problems.append(f"{path}: unknown key {name}{_suggest(name, keys)}")


# SPARKJOY_* variables that are not settings: the config file's path, and the benchmark
# scripts' cache (bench/README.md), which the sparkjoy they run inherits.
NOT_SETTINGS = ("SPARKJOY_CONFIG", "SPARKJOY_BENCH_CACHE")
# What a container gets for another one it reaches by the name sparkjoy or sparkjoy-something:
# Kubernetes' service links (NAME_SERVICE_HOST, always, and NAME_SERVICE_PORT, NAME_PORT,
# NAME_PORT_9867_TCP_ADDR, ...) and docker's legacy links (NAME_NAME=/..., always, and
# NAME_PORT..., NAME_ENV_...). Only beside the variable every such set has.
_LINK_SUFFIX = re.compile(r"SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?"
                          r"|NAME|ENV_.*")
# Names users guess for a setting that has another one.
_GUESSES = {"DAEMON_PORT": "SPARKJOY_DAEMON_LISTEN", "DAEMON_HOST": "SPARKJOY_DAEMON_LISTEN",
            "DAEMON_ADDRESS": "SPARKJOY_DAEMON_LISTEN", "PORT": "SPARKJOY_DAEMON_LISTEN",
            "STATE": "SPARKJOY_DAEMON_STATE_DB", "DB": "SPARKJOY_DAEMON_STATE_DB"}


def _link_variable(name: str, environ: Mapping[str, str]) -> bool:
    linked = [n.removesuffix("_SERVICE_HOST") for n in environ if n.endswith("_SERVICE_HOST")]
    linked += [n.removesuffix("_NAME") for n, value in environ.items() if n.endswith("_NAME") and value.startswith("/")]
    return any(name.startswith(prefix + "_") and _LINK_SUFFIX.fullmatch(name[len(prefix) + 1:])
               for prefix in linked)


def _unknown_variables(environ: Mapping[str, str], keys: Mapping[str, Key]) -> list[str]:
    """Given the environment, return a problem for each SPARKJOY_* variable (in any case) that
    is set and is no setting: a misspelt one (SPARKJOY_KEEP_RECNET=10) would otherwise leave the
    default in force without a word, and a prune delete what the user meant to keep."""
    known = {key.env for key in keys.values()}
    by_key_name = {key.name.upper(): key.env for key in keys.values()}
    problems = []
    for name in sorted(environ):
        if (not name.upper().startswith("SPARKJOY_") or name in known or name in NOT_SETTINGS
                or environ[name] == "" or _link_variable(name, environ)):
            continue
        close = _closest_variable(name.upper(), [*known, "SPARKJOY_CONFIG"], by_key_name)
        if close == name.upper():
            fix = f"did you mean {close}? variable names are case-sensitive"
        elif close:
            fix = f"did you mean {close}?"
        else:
            fix = "sparkjoy config --keys lists the settings and their variables"
        problems.append(f"environment variable {name}: not a sparkjoy setting ({fix}); rename or unset it")
    return problems


def _closest_variable(name: str, variables: list[str], by_key_name: Mapping[str, str]) -> str | None:
    """The variable the user probably meant: the same in upper case, one for a key of that
    name in another section (SPARKJOY_HOST -> SPARKJOY_ENGINE_HOST), one users guess
    (SPARKJOY_DAEMON_PORT -> SPARKJOY_DAEMON_LISTEN), else the closest spelling, compared
    without the prefix every name shares (which would make all of them look alike)."""
    if name in variables:
        return name
    rest = name.removeprefix("SPARKJOY_")
    if rest in by_key_name:
        return by_key_name[rest]
    if rest in _GUESSES:
        return _GUESSES[rest]
    names = {variable.removeprefix("SPARKJOY_"): variable for variable in variables}
    longer = [variable for short, variable in names.items() if short.startswith(rest + "_")]
    if len(longer) == 1:  # SPARKJOY_KEEP -> SPARKJOY_KEEP_RECENT
        return longer[0]
    close = difflib.get_close_matches(rest, list(names), n=1)
    return names[close[0]] if close else None


def _suggest(name: str, keys: Mapping[str, Key]) -> str:
    close = difflib.get_close_matches(name, list(keys), n=1)
    return f" (did you mean {close[0]}?)" if close else f" (known keys: {', '.join(sorted(keys))})"
