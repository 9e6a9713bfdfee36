"""Fixtures of the pool, supervisor and service tests.

On PostgreSQL these tests get a database of their own for the session (dropped after it): the
rescuer and the cleaner act on every queue of a database, and the service tests move an injected
clock far ahead, which would expire the leases (or delete the finished jobs) of other suites
sharing ``persistq_test``.

``queue`` is a plain ``async with`` fixture: pytest-asyncio sets it up and tears it down in two
different tasks, which a queue allows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import persistq_async as pq
from tests.conftest import open_queue, private_pg_database


@pytest.fixture(scope="session")
def integration_pg_url() -> Iterator[str]:
    """A PostgreSQL database for these tests alone (see the module docstring)."""
    with private_pg_database("persistq_integration") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for each backend: an SQLite file, or this suite's PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return str(request.getfixturevalue("integration_pg_url"))


@pytest.fixture
async def queue(backend_url: str, queue_name: str) -> AsyncIterator[pq.Queue]:
    """An open queue on each backend, with short polls so tests stay fast."""
    async with open_queue(backend_url, queue_name) as q:
        yield q
