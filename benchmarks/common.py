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
    "Limit",
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
    #: Jobs the Supervisor-pool cycle drains (time from first claim to ``join()`` returning).
    pool_jobs: int = 20_000
    pool_concurrency: int = 64
    #: Safety cap on one pool drain (it normally finishes all ``pool_jobs`` well before).
    pool_cap: float = 60.0
    #: Put-to-handler-start latency samples: same process, and from a child process.
    latency_samples: int = 200
    remote_samples: int = 100
    #: Jobs waiting in the two backlog scenarios; the large one is ``--backlog N``.
    backlog_small: int = 10_000
    backlog_large: int = 1_000_000
    #: Jobs drained (the first ones) from each backlog, and the time cap on that drain.
    backlog_drain: int = 20_000
    backlog_cap: float = 20.0
    #: put_many batch used to pre-fill the backlogs.
    backlog_batch: int = 10_000

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
            pool_jobs=2_000,
            pool_cap=10.0,
            latency_samples=50,
            remote_samples=30,
            backlog_small=10_000,
            backlog_large=100_000,
            backlog_drain=3_000,
            backlog_cap=4.0,
        )


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed measurement: ``ops`` jobs in ``seconds`` of wall-clock time.

    ``extra`` holds other figures of the same measurement (latency percentiles in ms, peak RSS
    in MB, pre-fill time, ...), keyed by name; the report shows their medians over repeats.
    """

    ops: int
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)

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


@dataclass(frozen=True, slots=True)
class Limit:
    """An absolute target on one of a scenario's ``extra`` figures: ``value <= bound``."""

    metric: str
    bound: float
    label: str


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
    limits: tuple[Limit, ...] = ()
    #: "rate": the headline figure is jobs/s; "latency": it is the p50/p99 in ``extra``.
    metric: str = "rate"
    #: ``extra`` figures shown in the table beside the headline, as (key, format) pairs.
    show: tuple[tuple[str, str], ...] = ()
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
