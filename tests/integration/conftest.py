"""Fixtures of the pool, supervisor and service tests.

On PostgreSQL these tests get a database of their own for the session (dropped after it): the
rescuer and the cleaner act on every queue of a database, and the service tests move an injected
clock far ahead, which would expire the leases (or delete the finished jobs) of other suites
sharing ``persistq_test``.

``queue`` is opened and closed in one task of its own: pytest-asyncio runs an async fixture's
setup and teardown in two different tasks, and a queue's task group must be left in the task
that entered it.
"""

from __future__ import annotations

import asyncio
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


async def hosted(q: pq.Queue) -> AsyncIterator[pq.Queue]:
    """Open ``q`` in a task of its own and close it there when the fixture ends."""
    opened: asyncio.Future[pq.Queue] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()

    async def owner() -> None:
        try:
            async with q:
                opened.set_result(q)
                await stop.wait()
        except BaseException as exc:
            if not opened.done():
                opened.set_exception(exc)
            raise

    task = asyncio.ensure_future(owner())
    try:
        yield await opened
    finally:
        stop.set()
        await task


@pytest.fixture
async def queue(backend_url: str, queue_name: str) -> AsyncIterator[pq.Queue]:
    """An open queue on each backend, with short polls so tests stay fast."""
    async for q in hosted(open_queue(backend_url, queue_name)):
        yield q
