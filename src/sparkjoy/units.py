"""Durations and byte sizes: parsing what people type and printing docker's way (decimal units)."""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
}
_MAX_DURATION = timedelta(days=100 * 365)


def parse_duration(text: str) -> timedelta:
    """Given ``"6h"``, ``"1h30m"``, ``"90s"``, ``"-1s"`` or ``"0"``, return a timedelta.

    A leading minus is allowed (the policy reads a negative max age as "everything is old").
    Raises ValueError with a message that says what is accepted.
    """
    if not isinstance(text, str):
        raise ValueError(f"expected a duration such as '6h' or '30m', got {text!r}")
    raw = text.strip().lower()
    negative = raw.startswith("-")
    body = raw[1:] if negative else raw
    if body == "0":
        return timedelta(0)
    if not body or _DURATION_PART.sub("", body) != "":
        raise ValueError(
            f"invalid duration {text!r}: use a number with a unit, such as 90s, 30m, 6h, 7d or 1h30m"
        )
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in _DURATION_PART.findall(body))
    if seconds > _MAX_DURATION.total_seconds():
        raise ValueError(f"duration {text!r} is longer than 100 years")
    value = timedelta(seconds=seconds)
    return -value if negative else value


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)$")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
    "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
    "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30,
    "t": 10**12, "tb": 10**12, "ti": 2**40, "tib": 2**40,
    "p": 10**15, "pb": 10**15, "pi": 2**50, "pib": 2**50,
}


# The engine counts bytes in a signed 64-bit integer.
_MAX_SIZE = 2**63 - 1


def parse_size(text: str | int) -> int:
    """Given ``"10GB"``, ``"512MiB"``, ``"1.5g"`` or ``1000``, return bytes."""
    if isinstance(text, bool):
        raise ValueError(f"expected a size such as '10GB', got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size {text} is negative")
        if text > _MAX_SIZE:
            raise ValueError(f"size {text} is larger than the engine can count (8EiB)")
        return text
    if not isinstance(text, str):
        raise ValueError(f"expected a size such as '10GB', got {text!r}")
    match = _SIZE.match(text.strip().lower())
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: use a number with a unit, such as 500MB, 10GB or 2GiB")
    # Decimal, not float: "1.001kB" is 1001 bytes (a float gives 1000.99... -> 1000), and a
    # number too long for a float cannot overflow.
    size = int(Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)])
    if size > _MAX_SIZE:
        raise ValueError(f"size {text!r} is larger than the engine can count (8EiB)")
    return size


def format_bytes(count: int) -> str:
    """Docker's human size: decimal units, 4 significant digits. ``1234567`` -> ``"1.235MB"``."""
    if count < 0:
        return "-" + format_bytes(-count)
    units = ["B", "kB", "MB", "GB", "TB", "PB"]
    value = float(count)
    unit = 0
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    if unit == 0:
        return f"{count}B"
    return f"{value:.4g}{units[unit]}"


def format_duration(delta: timedelta) -> str:
    """Given a timedelta, return a short human form: ``"3h12m"``, ``"45s"``, ``"2d4h"``."""
    days = delta.days
    if 0 < days < 10_000:
        # The common case (an age of days), read straight off the timedelta: the float of
        # total_seconds() is exact this far, so the result is the same.
        hours = delta.seconds // 3600
        return f"{days}d{hours}h" if hours else f"{days}d"
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours}h" if hours else f"{sign}{days}d"
    if hours:
        return f"{sign}{hours}h{minutes}m" if minutes else f"{sign}{hours}h"
    if minutes:
        return f"{sign}{minutes}m{secs}s" if secs else f"{sign}{minutes}m"
    return f"{sign}{secs}s"


def format_duration_exact(delta: timedelta) -> str:
    """Given a timedelta, return the short form ``parse_duration`` reads back to the same value.

    ``format_duration``'s form when that loses nothing (``"6h"``, ``"10m"``, ``"1h30m"``);
    otherwise every non-zero unit: ``"1d30m"``, ``"1h30m15s"``, ``"1s500ms"``, ``"0.001ms"``.
    """
    micro = (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds  # exact, unlike a float
    if micro == 0:
        return "0s"
    sign = "-" if micro < 0 else ""
    micro = abs(micro)
    parts = []
    for unit, size in (("d", 86400_000_000), ("h", 3600_000_000), ("m", 60_000_000), ("s", 1_000_000)):
        count, micro = divmod(micro, size)
        if count:
            parts.append(f"{count}{unit}")
    if micro:
        milli, rest = divmod(micro, 1000)
        parts.append(f"{milli}.{rest:03d}".rstrip("0").rstrip(".") + "ms" if rest else f"{milli}ms")
    return sign + "".join(parts)
