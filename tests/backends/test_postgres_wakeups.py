"""PostgreSQL only: LISTEN/NOTIFY wakes consumers in other processes, and polling backs it up."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time

import anyio
import pytest
from sqlalchemy import text

import persistq_async as pq
from persistq_async.backends import postgres
from persistq_async.testing import read_connection

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]

PUT_SCRIPT = textwrap.dedent(
    """
    import sys, anyio, persistq_async as pq

    async def main() -> None:
        async with pq.Queue(sys.argv[1], name=sys.argv[2]) as q:
            await q.put({"from": "child"})

    anyio.run(main)
    """
)


def _put_from_another_process(url: str, name: str) -> None:
    subprocess.run(
        [sys.executable, "-c", PUT_SCRIPT, url, name], check=True, timeout=30, capture_output=True
    )


async def test_notify_wakes_a_waiting_get_in_another_process(pg_url: str, queue_name: str) -> None:
    # poll_interval far above the bound: only a notification can wake the get in time.
    async with pq.Queue(pg_url, name=queue_name, poll_interval=30.0) as q:
        async with anyio.create_task_group() as tg:
            got: list[tuple[pq.Job, float]] = []

            async def consume() -> None:
                job = await q.get(timeout=20)
                got.append((job, time.monotonic()))

            tg.start_soon(consume)
            started = time.monotonic()
            await anyio.to_thread.run_sync(_put_from_another_process, pg_url, queue_name)
            put_returned = time.monotonic()
        job, woke = got[0]
        assert job.payload == {"from": "child"}
        await job.ack()
        # The child's start-up dominates its run time; the wake-up after its commit is what counts.
        assert woke - put_returned < 1.0, (woke - put_returned, put_returned - started)


async def test_a_lost_listener_falls_back_to_polling_and_reconnects(
    pg_url: str, queue_name: str
) -> None:
    async with pq.Queue(pg_url, name=queue_name, poll_interval=0.05) as q:
        backend = q.store.backend
        assert isinstance(backend, postgres.PostgresBackend)
        listener = backend._listener
        assert listener is not None
        # Kill the listening connection from the server side, as a server restart would.
        async with (
            pq.Queue(pg_url, name=queue_name) as admin,
            read_connection(admin) as conn,
        ):
            await conn.execute(
                text("SELECT pg_terminate_backend(:pid)"),
                {"pid": listener.get_server_pid()},
            )
            await conn.commit()
        with anyio.fail_after(10):
            # asyncpg reports the disconnect through the backend's own callback: poll for it.
            while backend._listener is listener:  # noqa: ASYNC110
                await anyio.sleep(0.05)
        # Without a listener, a put by another process is still seen (polling), and the
        # listener comes back.
        await anyio.to_thread.run_sync(_put_from_another_process, pg_url, queue_name)
        job = await q.get(timeout=postgres.SLOW_POLL + 5)
        await job.ack()
        with anyio.fail_after(10):
            while backend._listener is None:
                await q.get_nowait()
                await q.store.change_token()
                await anyio.sleep(0.1)
        assert backend._listener is not listener


async def test_closing_a_queue_does_not_report_its_listener_lost(
    pg_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="persistq_async"):
        async with pq.Queue(pg_url, name=queue_name) as q:
            await q.put({"n": 1})
    assert not [r for r in caplog.records if getattr(r, "action", None) == "listener_failed"]
