"""Rate limits: the ``"100/s"`` notation and the token bucket that enforces it.

Pure arithmetic, no I/O: :mod:`persistq_async.config` validates options with it and the store's
flow control (:mod:`persistq_async.store.flow`) runs the bucket inside the claim transaction.

A limit of ``count`` per ``period`` seconds is a bucket that holds at most ``burst`` tokens and
gains ``count / period`` tokens a second; a claim of ``n`` jobs takes ``n`` whole tokens. Over any
window of ``period`` seconds the bucket can hand out what it held at the start (at most
``burst``) plus what it gained during the window (``count``), so the claims in any such window
never exceed ``count + burst``. The burst defaults to a tenth of the count, at least one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["PERIODS", "RateLimit", "default_burst", "parse_rate_limit"]

#: The period units a limit may name, in seconds.
PERIODS: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0}
_UNITS = {
    "s": "s",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "m": "m",
    "min": "m",
    "minute": "m",
    "minutes": "m",
    "h": "h",
    "hour": "h",
    "hours": "h",
}
_TEXT = re.compile(r"\s*([0-9]+)\s*/\s*([a-z]+)\s*", re.IGNORECASE)
#: Tokens a bucket may miss a whole one by and still count it: epoch seconds near 1.7e9 are
#: exact only to about 2.4e-7, so a refill computed from them may come out a hair short. The
#: token taken early is owed by the bucket (it goes that far below zero), so over any window the
#: whole claims still stay within the count plus the burst.
EPSILON = 1e-3
#: The largest count a limit may name (far beyond what one database claims per second).
MAX_COUNT = 10**9


def default_burst(count: int) -> int:
    """The burst of a limit of ``count`` per period when none is given: a tenth, at least 1."""
    return max(1, count // 10)


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """At most ``count`` claims per ``unit`` (plus ``burst``, see the module docstring)."""

    count: int
    #: ``"s"``, ``"m"`` or ``"h"``.
    unit: str
    #: Tokens the bucket holds when full: claims beyond the steady rate it allows at once.
    burst: int

    def __post_init__(self) -> None:
        if self.unit not in PERIODS:
            raise ValueError(f"unit must be one of s, m, h, got {self.unit!r}")
        if not 1 <= self.count <= MAX_COUNT:
            raise ValueError(f"count must be between 1 and {MAX_COUNT}, got {self.count}")
        if not 1 <= self.burst <= MAX_COUNT:
            raise ValueError(f"burst must be between 1 and {MAX_COUNT}, got {self.burst}")

    @property
    def period(self) -> float:
        """The period in seconds."""
        return PERIODS[self.unit]

    @property
    def per_second(self) -> float:
        """Tokens the bucket gains a second."""
        return self.count / self.period

    def __str__(self) -> str:
        return f"{self.count}/{self.unit}"

    def refill(self, tokens: float, refilled_at: float, now: float) -> float:
        """The bucket's tokens at ``now``, from ``tokens`` at ``refilled_at``.

        A clock that went back (another machine's, on PostgreSQL) adds nothing rather than
        taking tokens away.
        """
        gained = max(0.0, now - refilled_at) * self.per_second
        return min(float(self.burst), tokens + gained)

    def whole(self, tokens: float) -> int:
        """The whole tokens in ``tokens``: the jobs a claim may take."""
        return max(0, math.floor(tokens + EPSILON))

    def next_token_at(self, tokens: float, now: float) -> float:
        """When a bucket holding ``tokens`` at ``now`` will hold a whole token."""
        missing = 1.0 - tokens
        if missing <= EPSILON:
            return now
        return now + missing / self.per_second


def parse_rate_limit(text: str, *, burst: int | None = None) -> RateLimit:
    """``"100/s"``, ``"10/m"``, ``"5000/h"`` (also ``"10/minute"``, ``"1/hour"``...).

    :param burst: the bucket's size; :func:`default_burst` of the count by default.
    :raises ValueError: the text is not such a limit, or a number is out of range.
    """
    if not isinstance(text, str):
        raise TypeError(f"expected a str such as '100/s', got {type(text).__name__}")
    match = _TEXT.fullmatch(text)
    unit = None if match is None else _UNITS.get(match.group(2).lower())
    if match is None or unit is None:
        raise ValueError(
            f"expected a count per s, m or h such as '100/s' or '5000/h', got {text!r}"
        )
    count = int(match.group(1))
    if count < 1:
        raise ValueError(f"the count must be at least 1, got {text!r}")
    if count > MAX_COUNT:
        raise ValueError(f"the count must be at most {MAX_COUNT}, got {text!r}")
    return RateLimit(count=count, unit=unit, burst=default_burst(count) if burst is None else burst)
