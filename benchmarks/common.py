"""Shared vocabulary of the benchmark suite: sizes, samples, scenarios, payloads, timing."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Comparison",
    "Deadline",
    "Sample",
    "Scenario",
    "Sizes",
    "Skipped",
    "payload",
    "payload_bytes",
    "workdir",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sizes:
    """How much work each measurement does.

    ``time_cap`` bounds every timed loop: a measurement stops after its N operations or after
    ``time_cap`` seconds, whichever comes first, and reports operations per second over what
    it did. Slow systems (a few hundred committed cycles/s) would otherwise make a full run take
    many minutes, while fast ones still do all N operations and are not cut short.
    """

    seq_puts: int
    producers: int
    puts_per_producer: int
    put_many_rows: int
    put_many_batch: int
    cycles: int
    consumers: int
    time_cap: float

    @classmethod
    def full(cls) -> Sizes:
        """Defaults: a full run takes about two to three minutes on 2 cores."""
        return cls(
            seq_puts=2_000,
            producers=100,
            puts_per_producer=50,
            put_many_rows=20_000,
            put_many_batch=1_000,
            cycles=5_000,
            consumers=64,
            time_cap=2.0,
        )

    @classmethod
    def quick(cls) -> Sizes:
        """A smoke run: well under 30 seconds, figures indicative only."""
        return cls(
            seq_puts=300,
            producers=100,
            puts_per_producer=5,
            put_many_rows=3_000,
            put_many_batch=1_000,
            cycles=500,
            consumers=64,
            time_cap=0.4,
        )


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed measurement: ``ops`` jobs in ``seconds`` of wall-clock time."""

    ops: int
    seconds: float

    @property
    def rate(self) -> float:
        """Jobs per second."""
        return self.ops / self.seconds if self.seconds > 0 else 0.0


class Skipped(Exception):
    """A scenario cannot run here (an optional peer is not installed); the message says why."""


@dataclass(frozen=True, slots=True)
class Comparison:
    """Print this scenario's figure as a ratio to ``baseline`` (a scenario key)."""

    baseline: str
    label: str
    #: The ratio issue #4 asks for, when there is one.
    target: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """A named measurement of one system.

    ``run`` does the work in a fresh temporary directory and returns the timed sample;
    setup (opening, creating tables, preloading jobs) stays outside the timed part.
    """

    key: str
    system: str
    label: str
    durability: str | None
    run: Callable[[Path, Sizes], Sample]
    compare: tuple[Comparison, ...] = ()
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class Deadline:
    """The end of a timed loop; cheap to poll (one monotonic clock read)."""

    __slots__ = ("end",)

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def passed(self) -> bool:
        """Whether the time cap is reached."""
        return time.perf_counter() >= self.end


def payload(i: int) -> dict[str, Any]:
    """The small JSON job every system handles, so the figures compare the same work."""
    return {"n": i, "to": "user@example.org"}


def payload_bytes(i: int) -> bytes:
    """:func:`payload` encoded as the raw baselines store it (compact JSON, UTF-8)."""
    return json.dumps(payload(i), separators=(",", ":")).encode()


@contextmanager
def workdir(prefix: str) -> Iterator[Path]:
    """A fresh temporary directory, removed afterwards (the database and its WAL live in it)."""
    path = Path(tempfile.mkdtemp(prefix=f"pqbench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
