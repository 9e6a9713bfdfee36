"""The systems ``postgres.py`` compares on one PostgreSQL server: persistq_async, PgQueuer,
procrastinate and raw asyncpg (one row per transaction).

Each system gets a fresh database per measurement. Here, for each one: how its schema is
installed, a client that puts one job, puts a batch and counts finished jobs, and the command
of a worker process (``pg_worker_child.py`` for persistq_async, ``pg_peer_child.py`` for the
others). Every system handles the same small JSON job (``common.payload``) with a no-op handler.

Connections: persistq_async uses its own engine (its defaults); PgQueuer's and raw asyncpg's
clients get an asyncpg pool of :data:`CLIENT_POOL` connections (PgQueuer takes whatever
connection or pool the application hands it), procrastinate's psycopg pool is capped at the same
size. The peers' code is written from their documentation; nothing of theirs is copied.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from common import payload, payload_bytes
from pgserver import driver_dsn, sqlalchemy_url

import persistq_async as pq

HERE = Path(__file__).resolve().parent
#: Pool slots of each worker process, and the size of the peers' client pools.
WORKER_CONCURRENCY = 16
CLIENT_POOL = 16
#: The queue / entrypoint / task name every system uses.
NAME = "bench"

# ---------------------------------------------------------------------------- raw asyncpg

RAW_SCHEMA = """
CREATE TABLE bench_jobs (
    id bigserial PRIMARY KEY,
    payload jsonb NOT NULL,
    status text NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL DEFAULT now(),
    leased_at timestamptz
);
CREATE INDEX bench_jobs_queued ON bench_jobs (id) WHERE status = 'queued';
"""
RAW_INSERT = "INSERT INTO bench_jobs (payload) VALUES ($1::jsonb)"
#: One statement, one transaction: lease the oldest queued job.
RAW_CLAIM = """
UPDATE bench_jobs SET status = 'running', leased_at = now()
WHERE id = (
    SELECT id FROM bench_jobs WHERE status = 'queued'
    ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
)
RETURNING id, payload
"""
RAW_DONE = "UPDATE bench_jobs SET status = 'done' WHERE id = $1"


def payload_text(i: int) -> str:
    """:func:`common.payload` as the JSON text raw asyncpg sends."""
    return json.dumps(payload(i), separators=(",", ":"))


class Client(Protocol):
    """What a measurement does with a system."""

    async def put(self, i: int) -> None:
        """Put job ``i`` (committed when this returns)."""

    async def put_batch(self, ids: range) -> None:
        """Put the jobs ``ids`` in one call of the system's batch API."""

    async def finished(self) -> int:
        """How many jobs have finished (committed as done or failed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class System:
    """One system under test, as ``postgres.py`` and ``scaling.py`` drive it."""

    key: str
    label: str
    #: Whether the put scenarios run (a second configuration of the same worker shares them).
    puts: bool
    #: Create the schema in a fresh database: (SQLAlchemy URL of that database) -> None.
    install: Callable[[str], Awaitable[None]]
    #: A client on that database: (SQLAlchemy URL) -> async context manager.
    client: Callable[[str], AbstractAsyncContextManager[Client]]
    #: The worker process's command line for that database.
    worker_cmd: Callable[[str], list[str]]
    #: How the system was configured, for the report.
    notes: str = ""


# ---------------------------------------------------------------------------- persistq_async


async def _persistq_install(url: str) -> None:
    async with pq.Queue(url, name=NAME):
        pass


class _PersistqClient:
    def __init__(self, q: pq.Queue) -> None:
        self.q = q

    async def put(self, i: int) -> None:
        await self.q.put(payload(i))

    async def put_batch(self, ids: range) -> None:
        await self.q.put_many([payload(i) for i in ids])

    async def finished(self) -> int:
        s = await self.q.stats()
        return s.done + s.dead + s.cancelled


@asynccontextmanager
async def _persistq_client(url: str) -> AsyncIterator[Client]:
    async with pq.Queue(url, name=NAME) as q:
        yield _PersistqClient(q)


def _persistq_worker(url: str) -> list[str]:
    child = str(HERE / "pg_worker_child.py")
    return [sys.executable, child, url, NAME, str(WORKER_CONCURRENCY), "full"]


# ---------------------------------------------------------------------------- PgQueuer


async def _pgqueuer_install(url: str) -> None:
    from pgqueuer import Queries

    conn = await asyncpg.connect(driver_dsn(url))
    try:
        await Queries.from_asyncpg_connection(conn).install()
    finally:
        await conn.close()


class _PgqueuerClient:
    def __init__(self, pool: asyncpg.Pool) -> None:
        from pgqueuer import Queries

        self.pool = pool
        self.queries = Queries.from_asyncpg_pool(pool)
        self.put_count = 0

    async def put(self, i: int) -> None:
        await self.queries.enqueue(NAME, payload_bytes(i), 0)
        self.put_count += 1

    async def put_batch(self, ids: range) -> None:
        n = len(ids)
        await self.queries.enqueue([NAME] * n, [payload_bytes(i) for i in ids], [0] * n)
        self.put_count += n

    async def finished(self) -> int:
        # PgQueuer deletes a job from its queue table in the transaction that logs it done.
        left = await self.pool.fetchval("SELECT count(*) FROM pgqueuer")
        return int(self.put_count - left)


@asynccontextmanager
async def _pgqueuer_client(url: str) -> AsyncIterator[Client]:
    async with asyncpg.create_pool(driver_dsn(url), min_size=1, max_size=CLIENT_POOL) as pool:
        yield _PgqueuerClient(pool)


def _peer_worker(system: str) -> Callable[[str], list[str]]:
    def cmd(url: str) -> list[str]:
        child = str(HERE / "pg_peer_child.py")
        return [sys.executable, child, system, driver_dsn(url), str(WORKER_CONCURRENCY)]

    return cmd


# ---------------------------------------------------------------------------- procrastinate


def procrastinate_app(dsn: str, on_run: Callable[[], None] | None = None) -> Any:
    """A procrastinate App on ``dsn`` with the no-op task ``bench`` (queue ``bench``);
    ``on_run`` is called by each run of the task (the worker counts with it)."""
    import procrastinate

    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=dsn, max_size=CLIENT_POOL)
    )

    @app.task(name=NAME, queue=NAME)
    async def bench(**kwargs: Any) -> None:
        """The no-op handler."""
        if on_run is not None:
            on_run()

    return app


async def _procrastinate_install(url: str) -> None:
    app = procrastinate_app(driver_dsn(url))
    async with app.open_async():
        await app.schema_manager.apply_schema_async()


class _ProcrastinateClient:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.task = app.tasks[NAME]

    async def put(self, i: int) -> None:
        await self.task.defer_async(**payload(i))

    async def put_batch(self, ids: range) -> None:
        await self.task.batch_defer_async(*[payload(i) for i in ids])

    async def finished(self) -> int:
        row = await self.app.connector.execute_query_one_async(
            "SELECT count(*) AS n FROM procrastinate_jobs WHERE status IN ('succeeded', 'failed')"
        )
        return int(row["n"])


@asynccontextmanager
async def _procrastinate_client(url: str) -> AsyncIterator[Client]:
    app = procrastinate_app(driver_dsn(url))
    async with app.open_async():
        yield _ProcrastinateClient(app)


# ---------------------------------------------------------------------------- raw asyncpg


async def _raw_install(url: str) -> None:
    conn = await asyncpg.connect(driver_dsn(url))
    try:
        await conn.execute(RAW_SCHEMA)
    finally:
        await conn.close()


class _RawClient:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    async def put(self, i: int) -> None:
        await self.pool.execute(RAW_INSERT, payload_text(i))

    async def put_batch(self, ids: range) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(RAW_INSERT, [(payload_text(i),) for i in ids])

    async def finished(self) -> int:
        return int(
            await self.pool.fetchval("SELECT count(*) FROM bench_jobs WHERE status = 'done'")
        )


@asynccontextmanager
async def _raw_client(url: str) -> AsyncIterator[Client]:
    async with asyncpg.create_pool(driver_dsn(url), min_size=1, max_size=CLIENT_POOL) as pool:
        yield _RawClient(pool)


# ---------------------------------------------------------------------------- the list

PERSISTQ = System(
    key="persistq",
    label="persistq_async",
    puts=True,
    install=_persistq_install,
    client=_persistq_client,
    worker_cmd=_persistq_worker,
    notes="its defaults; Supervisor pool of 16 slots per worker process",
)

SYSTEMS: tuple[System, ...] = (
    PERSISTQ,
    System(
        key="pgqueuer",
        label="PgQueuer (defaults)",
        puts=True,
        install=_pgqueuer_install,
        client=_pgqueuer_client,
        worker_cmd=_peer_worker("pgqueuer"),
        notes="QueueManager on one asyncpg connection, run() with its defaults (batch_size 10, "
        "no global cap)",
    ),
    System(
        key="pgqueuer-batch16",
        label="PgQueuer (batch 16)",
        puts=False,
        install=_pgqueuer_install,
        client=_pgqueuer_client,
        worker_cmd=_peer_worker("pgqueuer-batch16"),
        notes="run(batch_size=16, max_concurrent_tasks=32): a batch the size of the 16-slot pool "
        "(PgQueuer requires a cap of at least twice the batch)",
    ),
    System(
        key="procrastinate",
        label="procrastinate",
        puts=True,
        install=_procrastinate_install,
        client=_procrastinate_client,
        worker_cmd=_peer_worker("procrastinate"),
        notes="PsycopgConnector (psycopg pool, max 16), run_worker_async(concurrency=16)",
    ),
    System(
        key="asyncpg",
        label="raw asyncpg, 1 row/txn",
        puts=True,
        install=_raw_install,
        client=_raw_client,
        worker_cmd=_peer_worker("asyncpg"),
        notes="INSERT per job; 16 tasks per worker, each claiming one row (UPDATE ... SKIP "
        "LOCKED) and marking it done, one transaction each; batch = executemany in one "
        "transaction",
    ),
)

#: Systems whose better cycle figure is "PgQueuer" in the targets.
PGQUEUER_KEYS = ("pgqueuer", "pgqueuer-batch16")


def database_url(server_url: str, database: str) -> str:
    """The SQLAlchemy URL of ``database`` on the run's server."""
    return sqlalchemy_url(server_url, database)
