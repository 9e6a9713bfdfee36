"""Argument checks shared by the public entry points; each error names the argument."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from .errors import ArgumentError, ArgumentTypeError

__all__ = [
    "check_aware",
    "check_float",
    "check_int",
    "check_name",
    "check_optional_str",
    "check_seconds",
]

MAX_NAME_LENGTH = 200


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """An int (not a bool) at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArgumentTypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise ArgumentError(f"{name}: must be >= {minimum}, got {value}")
    return value


def check_float(
    name: str, value: Any, *, minimum: float | None = None, positive: bool = False
) -> float:
    """A finite real number (int or float, not bool), optionally bounded below."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ArgumentTypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ArgumentError(f"{name}: must be a finite number, got {value!r}")
    if positive and number <= 0:
        raise ArgumentError(f"{name}: must be > 0, got {value!r}")
    if minimum is not None and number < minimum:
        raise ArgumentError(f"{name}: must be >= {minimum}, got {value!r}")
    return number


def check_seconds(name: str, value: Any, *, positive: bool = False) -> float:
    """Seconds as a number or a ``timedelta``; never negative."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    return check_float(name, value, minimum=0.0, positive=positive)


def check_aware(name: str, value: Any) -> datetime:
    """A timezone-aware datetime."""
    if not isinstance(value, datetime):
        raise ArgumentTypeError(f"{name}: expected a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ArgumentError(f"{name}: must be timezone-aware (naive datetimes are ambiguous)")
    return value


def check_name(name: str, value: Any) -> str:
    """A non-empty name of at most ``MAX_NAME_LENGTH`` characters."""
    if not isinstance(value, str):
        raise ArgumentTypeError(f"{name}: expected a str, got {type(value).__name__}")
    if not value or not value.strip():
        raise ArgumentError(f"{name}: must not be empty")
    if len(value) > MAX_NAME_LENGTH:
        raise ArgumentError(f"{name}: at most {MAX_NAME_LENGTH} characters, got {len(value)}")
    if "\x00" in value:
        raise ArgumentError(f"{name}: must not contain NUL characters")
    return value


def check_optional_str(name: str, value: Any) -> str | None:
    """None or a non-empty str."""
    if value is None:
        return None
    return check_name(name, value)
