"""format_duration reads an age of days straight off the timedelta; it must say what the
whole-seconds formula says, at the edges of that shortcut too."""

from __future__ import annotations

from datetime import timedelta

import pytest

from sparkjoy.units import format_duration


def _by_whole_seconds(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    days, rest = divmod(abs(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{sign}{days}d{hours}h" if hours else f"{sign}{days}d"
    if hours:
        return f"{sign}{hours}h{minutes}m" if minutes else f"{sign}{hours}h"
    if minutes:
        return f"{sign}{minutes}m{secs}s" if secs else f"{sign}{minutes}m"
    return f"{sign}{secs}s"


@pytest.mark.parametrize("days", [-10_001, -10_000, -2, -1, 0, 1, 2, 7, 30, 9_999, 10_000, 10_001, 36_500])
@pytest.mark.parametrize("seconds", [0, 1, 59, 3_599, 3_600, 3_601, 86_399])
@pytest.mark.parametrize("microseconds", [0, 1, 500_000, 999_999])
def test_an_age_of_days_reads_as_the_whole_seconds_formula_says(days: int, seconds: int, microseconds: int) -> None:
    delta = timedelta(days=days, seconds=seconds, microseconds=microseconds)
    assert format_duration(delta) == _by_whole_seconds(delta)
