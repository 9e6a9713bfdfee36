"""PostgreSQL only: the hot writes as native statements (puts, claims, acks) keep every
guarantee of the usual path, and a pool without pre-ping replaces connections the server closed.
"""

from __future__ import annotations

import contextlib

import anyio
import pytest
from sqlalchemy import text

import persistq_async as pq
from persistq_async.testing import read_connection

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


async def _server_pids(q: pq.Queue) -> None:
    """Terminate every other connection to the queue's database (what a restart does)."""
    async with read_connection(q) as conn:
        await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
        await conn.commit()


async def test_grouped_puts_get_the_ids_of_their_own_rows(
    session_pg_url: str, queue_name: str
) -> None:
    async with pq.Queue(session_pg_url, name=queue_name) as q:
        ids = await q.put_many([{"n": n} for n in range(1000)])
        assert ids == sorted(ids)
        assert len(set(ids)) == 1000
        # 100 concurrent single puts: the writer groups them into multi-row statements.
        got: dict[int, int] = {}

        async def put(n: int) -> None:
            got[n] = await q.put({"n": n})

        async with anyio.create_task_group() as tg:
            for n in range(1000, 1100):
                tg.start_soon(put, n)
        for n, job_id in [*zip(range(1000), ids, strict=True), *got.items()]:
            info = await q.job(job_id)
            assert info.payload == {"n": n}


async def test_native_claim_defers_to_flow_control_and_rescue(
    session_pg_url: str, queue_name: str
) -> None:
    async with pq.Queue(session_pg_url, name=queue_name, lease_seconds=0.5) as q:
        await q.put_many([{"n": n} for n in range(5)])
        await q.pause()
        with pytest.raises(TimeoutError):  # paused: the claim went the usual way
            await q.get(timeout=0.3)
        await q.resume()
        first = await q.get(timeout=5)
        assert first is not None
        assert first.payload == {"n": 0}
        await anyio.sleep(0.7)  # its lease expires: the next claim rescues it first
        again = [await q.get(timeout=5) for _ in range(5)]
        assert sorted(j.payload["n"] for j in again if j is not None) == [0, 1, 2, 3, 4]
        with pytest.raises(pq.LeaseLost):
            await first.ack()  # the native ack applied nothing; the usual path says why
        for job in again:
            assert job is not None
            await job.ack()
        stats = await q.stats()
        assert (stats.done, stats.queued, stats.running) == (5, 0, 0)


async def test_connections_closed_by_the_server_are_replaced_without_an_error(
    session_pg_url: str, queue_name: str
) -> None:
    async with pq.Queue(session_pg_url, name=queue_name) as q:
        await q.put({"n": 0})
        job = await q.get(timeout=5)
        assert job is not None
        await _server_pids(q)
        await anyio.sleep(0.2)  # the client sees the server's goodbye on the idle sockets
        # No pre-ping: the checkout notices the closed connection and takes a new one.
        await job.ack()
        assert await q.put({"n": 1}) > job.id
        again = await q.get(timeout=5)
        assert again is not None
        assert again.payload == {"n": 1}
        await again.ack()


async def test_the_drivers_own_connection_errors_are_transient(session_pg_url: str) -> None:
    import asyncpg

    from persistq_async.backends import normalize_url
    from persistq_async.backends.postgres import PostgresBackend
    from persistq_async.config import Options
    from persistq_async.store.dberror import wrap_db_error

    url = normalize_url(session_pg_url)
    backend = PostgresBackend(url, Options())
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    victim, killer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        # Two operations at once on one connection: what an interrupted statement leaves.
        async with anyio.create_task_group() as tg:
            tg.start_soon(victim.fetch, "SELECT pg_sleep(0.3)")
            await anyio.sleep(0.05)
            with pytest.raises(asyncpg.InterfaceError) as busy:
                await victim.fetch("SELECT 1")
        pid = await victim.fetchval("SELECT pg_backend_pid()")
        await killer.execute("SELECT pg_terminate_backend($1)", pid)
        await anyio.sleep(0.2)
        with pytest.raises(asyncpg.InterfaceError) as closed:
            await victim.fetch("SELECT 1")
        with pytest.raises(asyncpg.PostgresError) as permanent:
            await killer.fetch("SELECT no_such_column FROM pg_class")
    finally:
        victim.terminate()
        await killer.close()
    for error in (busy.value, closed.value):
        assert backend.is_transient(wrap_db_error(error, "writing", "pg")), error
        assert not backend.never_committed(wrap_db_error(error, "writing", "pg"))
    assert not backend.is_transient(wrap_db_error(permanent.value, "writing", "pg"))


async def test_a_put_cancelled_by_asyncio_mid_statement_leaves_the_writer_usable(
    session_pg_url: str, queue_name: str
) -> None:
    import asyncio

    async with pq.Queue(session_pg_url, name=queue_name) as q:
        for delay in (0, 0, 0.0005, 0.001, 0.002) * 4:
            # Task.cancel pierces anyio's shield: the write may be cut off mid-statement.
            task = asyncio.ensure_future(q.put({"n": 0}))
            await asyncio.sleep(delay)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, pq.DatabaseError):
                await task
        # The connection a cut-off statement may have left busy is replaced: the next writes
        # go through, and the queue holds whole jobs only.
        ids = [await q.put({"n": 1}) for _ in range(3)]
        assert len(set(ids)) == 3
        stats = await q.stats()
        assert stats.queued >= 3
        assert stats.queued <= 3 + 20
        job = await q.get(timeout=5)
        assert job.payload in ({"n": 0}, {"n": 1})
        await job.ack()
