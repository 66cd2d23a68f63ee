"""Durations and sizes: what people type, and docker's way of printing sizes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sparkjoy.units import format_bytes, format_duration, format_duration_exact, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("6h", timedelta(hours=6)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("90s", timedelta(seconds=90)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(days=14)),
        (" 6H ", timedelta(hours=6)),
        ("0", timedelta(0)),
        ("-0", timedelta(0)),
        ("-1s", timedelta(seconds=-1)),
        ("-2h30m", -timedelta(hours=2, minutes=30)),
    ],
)
def test_a_duration_is_parsed_from_numbers_with_units(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "-", "6", "h", "6 h", "6y", "six hours", "--1s", "1h-30m", "1e3s", "6h!", "1,5h", "0x10s", "∞s"],
)
def test_a_duration_without_a_known_unit_is_rejected_with_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match="90s, 30m, 6h"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["36501d", "-36501d", "999999999999h", "9" * 400 + "s"])
def test_an_absurdly_long_duration_is_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="100 years"):
        parse_duration(text)


@pytest.mark.parametrize("value", [6, 6.0, None, True, ["6h"]])
def test_a_duration_that_is_not_text_is_rejected(value) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10GB", 10 * 10**9),
        ("10gb", 10 * 10**9),
        ("512MiB", 512 * 2**20),
        ("1.5g", 1_500_000_000),
        ("2 GiB", 2 * 2**30),
        ("1000", 1000),
        ("7b", 7),
        ("1k", 1000),
        ("1ki", 1024),
        ("3TB", 3 * 10**12),
        ("1PiB", 2**50),
        (1000, 1000),
        (0, 0),
        # Decimal fractions must not lose a byte to binary floating point.
        ("1.001kB", 1001),
        ("4.35MB", 4_350_000),
        ("0.1GB", 100_000_000),
    ],
)
def test_a_size_is_parsed_in_decimal_and_binary_units(text, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("value", ["", "GB", "-5MB", "5XB", "five GB", "1e3", "10 G B", -1, True, 1.5, None, ["1GB"]])
def test_a_size_that_makes_no_sense_is_rejected(value) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize("value", ["9" * 400 + "PB", "9" * 400, "10000PB", 2**63])
def test_an_absurdly_large_size_is_rejected_as_a_value_error_not_an_overflow(value) -> None:
    with pytest.raises(ValueError, match="larger than the engine can count"):
        parse_size(value)


def test_the_largest_size_the_engine_can_count_is_accepted() -> None:
    assert parse_size(2**63 - 1) == 2**63 - 1
    assert parse_size("8191PiB") == 8191 * 2**50


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (0, "0B"),
        (999, "999B"),
        (1000, "1kB"),
        (1234, "1.234kB"),
        (1_234_567, "1.235MB"),
        (50_000_000, "50MB"),
        (1_200_000_000, "1.2GB"),
        (999_999, "1000kB"),  # docker's go-units prints the same (%.4g after one division)
        (10**12, "1TB"),
        (-1_234_567, "-1.235MB"),
    ],
)
def test_bytes_are_printed_like_docker_with_decimal_units_and_four_significant_digits(count: int, expected: str) -> None:
    assert format_bytes(count) == expected


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=45), "45s"),
        (timedelta(minutes=5), "5m"),
        (timedelta(minutes=5, seconds=3), "5m3s"),
        (timedelta(hours=3, minutes=12, seconds=59), "3h12m"),
        (timedelta(hours=6), "6h"),
        (timedelta(days=2, hours=4, minutes=30), "2d4h"),
        (timedelta(days=9), "9d"),
        (timedelta(seconds=-90), "-1m30s"),
    ],
)
def test_a_duration_is_printed_short(delta: timedelta, expected: str) -> None:
    assert format_duration(delta) == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 36000 * 86400))
def test_printing_then_parsing_a_whole_second_duration_loses_at_most_the_dropped_unit(seconds: int) -> None:
    delta = timedelta(seconds=seconds)
    parsed = parse_duration(format_duration(delta))
    assert parsed <= delta
    # Only the smallest unit is dropped: under an hour for days, under a minute for hours.
    assert delta - parsed < (timedelta(hours=1) if seconds >= 86400 else timedelta(minutes=1))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**18))
def test_a_printed_size_is_within_half_a_unit_in_the_fourth_digit_of_the_truth(count: int) -> None:
    printed = format_bytes(count)
    parsed = parse_size(printed.replace("kB", "KB"))
    assert abs(parsed - count) <= max(count * 0.0005 + 1, 1)


# -- the exact short form (what `sparkjoy config` prints) ---------------------------------------


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(hours=6), "6h"),
        (timedelta(minutes=10), "10m"),
        (timedelta(minutes=90), "1h30m"),
        (timedelta(days=1, minutes=30), "1d30m"),
        (timedelta(hours=1, minutes=30, seconds=15), "1h30m15s"),
        (timedelta(days=7), "7d"),
        (timedelta(seconds=1.5), "1s500ms"),
        (timedelta(microseconds=1), "0.001ms"),
        (timedelta(microseconds=1500), "1.5ms"),
        (timedelta(0), "0s"),
        (timedelta(seconds=-1), "-1s"),
        (-timedelta(hours=1, minutes=30), "-1h30m"),
    ],
)
def test_format_duration_exact_is_short(delta: timedelta, text: str) -> None:
    assert format_duration_exact(delta) == text
    assert parse_duration(text) == delta


@given(st.timedeltas(min_value=-timedelta(days=36_500), max_value=timedelta(days=36_500)))
def test_format_duration_exact_reads_back_to_the_same_duration(delta: timedelta) -> None:
    assert parse_duration(format_duration_exact(delta)) == delta
