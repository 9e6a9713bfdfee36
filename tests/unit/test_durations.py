"""Durations as the command line reads and prints them."""

from __future__ import annotations

import argparse

import pytest

from persistq_async._cli.durations import duration, format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("15m", 900.0),
        ("7d", 604800.0),
        ("2h", 7200.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        ("45", 45.0),
        ("2.5", 2.5),
        (" 10S ", 10.0),
        ("0", 0.0),
    ],
)
def test_parse_duration_reads_seconds_and_units(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["7x", "-5s", "", "s", "1.s", "5 m", "1h-30m", "nan", "inf", "1e3"]
)
def test_parse_duration_refuses_anything_else_saying_what_it_takes(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*such as 30s, 15m, 7d"):
        parse_duration(text)


def test_the_argparse_type_turns_a_bad_duration_into_a_usage_error() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--older-than", type=duration)
    assert parser.parse_args(["--older-than", "7d"]).older_than == 604800.0
    with pytest.raises(argparse.ArgumentError, match="invalid duration '7x'"):
        parser.parse_args(["--older-than", "7x"])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "250ms"),
        (3.21, "3.2s"),
        (30, "30s"),
        (90, "1m30s"),
        (900, "15m"),
        (3600, "1h"),
        (5400, "1h30m"),
        (7 * 86400, "7d"),
        (7 * 86400 + 3 * 3600 + 5, "7d3h"),
    ],
)
def test_format_duration_prints_what_parse_reads(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds, abs=max(0.05, seconds * 0.01))
