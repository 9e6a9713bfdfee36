"""Durations as people write them: ``30s``, ``15m``, ``7d``, ``1h30m``, ``250ms``, or plain seconds
(``30``, ``2.5``): on the command line, in ``PERSISTQ_*`` variables and in configuration files.
The same format is printed (:func:`format_duration`), so what the command shows can be typed
back."""

from __future__ import annotations

import math
import re

__all__ = ["UNITS", "format_duration", "parse_duration"]

#: Seconds per unit.
UNITS: dict[str, float] = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_PART = re.compile(rf"({_NUMBER})(ms|s|m|h|d|w)")
_PARTS = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h|d|w))+")
_PLAIN = re.compile(_NUMBER)


def parse_duration(text: str) -> float:
    """Seconds from ``30s``, ``15m``, ``2h``, ``7d``, ``1w``, ``250ms``, ``1h30m`` or ``45``.

    :raises ValueError: anything else (``7x``, ``-5s``, ``''``), with a message saying what is
        accepted.
    """
    raw = text.strip().lower()
    if _PLAIN.fullmatch(raw):
        seconds = float(raw)
    elif _PARTS.fullmatch(raw):
        seconds = sum(float(n) * UNITS[unit] for n, unit in _PART.findall(raw))
    else:
        raise ValueError(
            f"invalid duration {text!r}: expected seconds or a number with a unit "
            "(ms, s, m, h, d, w), such as 30s, 15m, 7d or 1h30m"
        )
    if not math.isfinite(seconds):
        raise ValueError(f"invalid duration {text!r}: too large")
    return seconds


def format_duration(seconds: float) -> str:
    """The short form :func:`parse_duration` reads: ``250ms``, ``3.2s``, ``12m30s``, ``2h5m``,
    ``7d3h``. Below a minute it keeps a tenth of a second; above, whole units, two at most."""
    if seconds < 0:
        return "-" + format_duration(-seconds)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        text = f"{seconds:.1f}".rstrip("0").rstrip(".")
        return f"{text}s"
    whole = round(seconds)
    for big, small in (("d", "h"), ("h", "m"), ("m", "s")):
        if whole >= UNITS[big]:
            first, rest = divmod(whole, int(UNITS[big]))
            second = rest // int(UNITS[small])
            return f"{first}{big}{second}{small}" if second else f"{first}{big}"
    return f"{whole}s"  # not reached: whole >= 60 here
