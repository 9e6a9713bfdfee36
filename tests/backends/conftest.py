"""Fixtures of the backend conformance suite.

Every test here runs once per backend through ``backend_url`` (SQLite file, PostgreSQL).

On PostgreSQL the suite gets a database of its own, created for the session and dropped after it:
the lease rescue and the retention cleaner act on every queue of a database, and several tests
here move an injected clock far ahead, which would expire leases of (or clean the finished jobs
of) other suites sharing ``persistq_test`` at the same time. Queue names stay unique per test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import persistq_async as pq
from tests.conftest import private_pg_database

#: Where the injected clock starts: a fixed epoch time, so timestamps are predictable.
CLOCK_START = 1_700_000_000.0


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = CLOCK_START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="session")
def suite_pg_url() -> Iterator[str]:
    """A PostgreSQL database for this suite alone (see the module docstring)."""
    with private_pg_database("persistq_backends") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for each backend: an SQLite file, or this suite's PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return str(request.getfixturevalue("suite_pg_url"))


@pytest.fixture
def is_sqlite(backend_url: str) -> bool:
    """Whether this run is on SQLite."""
    return not backend_url.startswith("postgresql")


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


@pytest.fixture
async def queue(backend_url: str, queue_name: str) -> AsyncIterator[pq.Queue]:
    """An open queue on each backend, with short polls so tests stay fast."""
    async with pq.Queue(backend_url, name=queue_name, poll_interval=0.05) as q:
        yield q


@pytest.fixture
async def cq(backend_url: str, queue_name: str, clock: FakeClock) -> AsyncIterator[pq.Queue]:
    """An open queue driven by ``clock``, with 10 s leases and a 10 s backoff base."""
    q = pq.Queue(
        backend_url,
        name=queue_name,
        clock=clock,
        poll_interval=0.05,
        lease_seconds=10,
        backoff_base=10,
        backoff_max=1000,
    )
    async with q as opened:
        yield opened
