"""Shared fixtures: a queue on a fresh SQLite file, and the PostgreSQL URL from the environment.

PostgreSQL tests read ``PERSISTQ_TEST_PG_URL`` (``.ci/run`` starts a throwaway server and sets it).
Without it they are skipped locally, with a hint; with ``PERSISTQ_REQUIRE_PG=1`` (CI) a missing
server fails the run instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy.engine import make_url

import persistq_async as pq

PG_URL = os.environ.get("PERSISTQ_TEST_PG_URL")
REQUIRE_PG = os.environ.get("PERSISTQ_REQUIRE_PG") == "1"
PG_HINT = (
    "no PostgreSQL: start one with `source .ci/start-postgres.sh start` "
    "(sets PERSISTQ_TEST_PG_URL), then run pytest again"
)


async def pg_admin(url: str, sql: str) -> None:
    """Run ``sql`` on the server of ``url``, connected to its ``postgres`` database."""
    import asyncpg  # only when PostgreSQL tests run

    target = make_url(url).set(drivername="postgresql", database="postgres")
    conn = await asyncpg.connect(target.render_as_string(hide_password=False))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextmanager
def private_pg_database(prefix: str) -> Iterator[str]:
    """A PostgreSQL database of its own on the test server, dropped afterwards.

    Lease rescue and retention cleaning act on every queue of a database, so suites that move
    an injected clock far ahead get a database of their own.
    """
    assert PG_URL is not None, PG_HINT
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    asyncio.run(pg_admin(PG_URL, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(pg_admin(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip (locally) or fail (CI) PostgreSQL tests when no server was given."""
    if PG_URL:
        return
    for item in items:
        if "postgres" in item.keywords:
            if REQUIRE_PG:
                raise pytest.UsageError(
                    "PERSISTQ_REQUIRE_PG=1 but PERSISTQ_TEST_PG_URL is not set: " + PG_HINT
                )
            item.add_marker(pytest.mark.skip(reason=PG_HINT))


#: Seconds the run waits at its end for threads that are still finishing.
THREAD_GRACE = 10.0


def pytest_unconfigure(config: pytest.Config) -> None:
    """End the run with an error, not a hang, when a test left a non-daemon thread running.

    The interpreter waits for such threads before it exits (aiosqlite's connection threads are
    non-daemon), so a queue a test failed to close would otherwise hold the run open forever.
    """
    deadline = time.monotonic() + THREAD_GRACE
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    leftover = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()
    ]
    if not leftover:
        return
    frames = sys._current_frames()
    out = sys.__stderr__ or sys.stderr
    print(
        f"\nERROR: {len(leftover)} non-daemon thread(s) still running {THREAD_GRACE:.0f} s "
        "after the last test (a queue or engine left open?); exiting instead of hanging:",
        file=out,
    )
    for thread in leftover:
        print(f"--- {thread.name} (native id {thread.native_id})", file=out)
        frame = frames.get(thread.ident or -1)
        if frame is not None:
            print("".join(traceback.format_stack(frame)), file=out)
    out.flush()
    os._exit(3)


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the developer's PERSISTQ_* variables and files out of the tests."""
    for key in list(os.environ):
        if (
            key.startswith("PERSISTQ_")
            and not key.startswith("PERSISTQ_TEST_")
            and key != "PERSISTQ_REQUIRE_PG"
        ):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file path (not created yet)."""
    return tmp_path / "jobs.db"


@pytest.fixture
def pg_url() -> str:
    """The test server's URL; the tests using it must be marked ``postgres``."""
    assert PG_URL is not None, PG_HINT
    return PG_URL


@pytest.fixture(scope="session")
def session_pg_url() -> Iterator[str]:
    """A PostgreSQL database for this test run alone, dropped after it.

    Lease rescue and retention cleaning act on every queue of a database, and many tests move
    an injected clock far ahead, which would expire leases of (or clean the finished jobs of)
    another run sharing ``persistq_test`` at the same time. Queue names stay unique per test.
    """
    with private_pg_database("persistq_run") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database URL for each backend: an SQLite file, or this run's PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.db")
    return str(request.getfixturevalue("session_pg_url"))


@pytest.fixture
def is_sqlite(backend_url: str) -> bool:
    """Whether this run is on SQLite."""
    return not backend_url.startswith("postgresql")


#: Where an injected clock starts: a fixed epoch time in the past, so timestamps are predictable
#: and no real-clock consumer's lease is touched by the rescues it drives.
CLOCK_START = 1_700_000_000.0


class FakeClock:
    """Epoch seconds that move only when a test says so (``Queue(clock=...)``)."""

    def __init__(self, now: float = CLOCK_START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A clock the test moves by hand."""
    return FakeClock()


@pytest.fixture
def queue_name() -> str:
    """A queue name unique to the test, so tests sharing the PostgreSQL database do not meet."""
    return f"q-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def queue(backend_url: str, queue_name: str) -> AsyncIterator[pq.Queue]:
    """An open queue on each backend, with short leases and polls so tests stay fast."""
    async with open_queue(backend_url, queue_name) as q:
        yield q


async def pool_counted(counted: Callable[[], bool]) -> None:
    """Wait (up to 10 s) until ``counted()`` holds; the caller then asserts the counters.

    A pool counts a delivery just after its outcome commits; ``join()`` in another task, woken
    by that same commit, can return a moment before the count moves. Nothing signals the
    count, so this polls.
    """
    with anyio.move_on_after(10):
        while not counted():  # noqa: ASYNC110
            await anyio.sleep(0.005)


def open_queue(url: str, name: str, **options: Any) -> pq.Queue:
    """A queue with test-friendly defaults; options override them."""
    options.setdefault("poll_interval", 0.05)
    return pq.Queue(url, name=name, **options)


#: Databases written by the first release (schema 1): ``schema_v1.db``, and
#: ``schema_v1_postgresql.sql`` (``pg_dump --inserts``), each with five jobs in queue
#: ``legacy``: one done, one dead (nacked, then failed), two queued, and one (``n`` = 3) delayed
#: until 2100, so that it stays scheduled whenever the tests run.
FIXTURES = Path(__file__).parent / "fixtures"


async def _load_pg_dump(url: str, sql: str) -> None:
    import asyncpg  # only when PostgreSQL tests run

    target = make_url(url).set(drivername="postgresql")
    conn = await asyncpg.connect(target.render_as_string(hide_password=False))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def v1_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at schema 1, as the first release left it (see :data:`FIXTURES`)."""
    if request.param == "sqlite":
        path = tmp_path / "legacy.db"
        shutil.copy(FIXTURES / "schema_v1.db", path)
        yield str(path)
        return
    with private_pg_database("persistq_v1") as url:
        asyncio.run(_load_pg_dump(url, (FIXTURES / "schema_v1_postgresql.sql").read_text()))
        yield url
