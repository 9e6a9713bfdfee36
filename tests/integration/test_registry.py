"""The worker registry: supervisors record themselves, are listed by every process, leave on a
clean shutdown, are shown as gone when they crash, and a crash loop cannot grow the table."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest
from sqlalchemy import func, select

import persistq_async as pq
from persistq_async.registry import PRUNE_AFTER
from persistq_async.schema import workers
from persistq_async.store.metrics import MAX_WORKER_ROWS, WorkerRecord
from tests.conftest import open_queue


async def _row_count(q: pq.Queue) -> int:
    async def run(conn: object) -> int:
        result = await conn.execute(select(func.count()).select_from(workers))  # type: ignore[attr-defined]
        return int(result.scalar_one())

    return await q.store.read(run, "counting workers")  # type: ignore[arg-type]


async def _wait_for(q: pq.Queue, predicate: object, within: float = 15.0) -> list[pq.WorkerInfo]:
    with anyio.fail_after(within):
        while True:
            found = await q.workers()
            if predicate(found):  # type: ignore[operator]
                return found
            await anyio.sleep(0.05)


async def test_a_supervisor_is_listed_with_its_pools_and_leaves_cleanly(
    backend_url: str, queue_name: str
) -> None:
    async with open_queue(backend_url, queue_name) as q:
        await q.put_many([{"n": i} for i in range(5)])

        async def handler(job: pq.Job) -> None:
            if job.payload["n"] == 0:
                raise pq.Reject("no")

        before = time.time()
        async with pq.Supervisor(grace=1, registry_interval=0.1) as sup:
            await sup.add(q, handler, concurrency=3, name="mailers")
            mine = await _wait_for(
                q,
                lambda ws: any(
                    w.id == sup.id and w.pools and w.pools[0].processed == 5 for w in ws
                ),
            )
            info = next(w for w in mine if w.id == sup.id)
            assert info.alive
            assert (info.host, info.pid) == (socket.gethostname(), os.getpid())
            assert before - 1 <= info.started_at.timestamp() <= info.last_seen.timestamp()
            assert info.started_at.tzinfo is not None
            assert info.pools == (
                pq.PoolInfo(
                    name="mailers", queue=queue_name, concurrency=3, active=0, processed=5, failed=1
                ),
            )
            assert info.queues == {queue_name}
            await sup.resize("mailers", 7)
            await _wait_for(
                q, lambda ws: any(w.id == sup.id and w.pools[0].concurrency == 7 for w in ws)
            )
        assert sup.id not in [w.id for w in await q.workers()]


def _start_worker(where: Path, url: str, queue: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "persistq_async", "--log-level", "WARNING", "worker"]
    return subprocess.Popen(
        [*command, "reg_handlers:handler", "--url", url, "--queue", queue], cwd=where
    )


async def test_a_killed_worker_is_shown_gone_then_pruned(
    backend_url: str, queue_name: str, tmp_path: Path
) -> None:
    (tmp_path / "reg_handlers.py").write_text(
        textwrap.dedent(
            """
            async def handler(job):
                return None
            """
        )
    )
    worker = _start_worker(tmp_path, backend_url, queue_name)
    try:
        async with open_queue(backend_url, queue_name) as q:
            found = await _wait_for(q, lambda ws: any(w.pid == worker.pid for w in ws), 30)
            row = next(w for w in found if w.pid == worker.pid)
            assert row.alive
            assert [p.queue for p in row.pools] == [queue_name]
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
            await anyio.sleep(0.6)
            # its heartbeat is older than the timeout asked for: gone, but still listed
            stale = [w for w in await q.workers(timeout=0.5) if w.id == row.id]
            assert [w.alive for w in stale] == [False]
            health = await q.health(worker_timeout=0.5)
            assert health.live_workers == 0
            assert health.status == "degraded"
        # a worker registering much later prunes the row
        later = time.time() + PRUNE_AFTER + 60

        async def nothing(job: pq.Job) -> None:
            return None

        async with (
            open_queue(backend_url, queue_name, clock=lambda: later) as q,
            pq.Supervisor(grace=0) as sup,
        ):
            await sup.add(q, nothing)
            ids = [w.id for w in await q.workers()]
            assert row.id not in ids
            assert sup.id in ids
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_a_crash_loop_of_ten_thousand_workers_leaves_a_bounded_table(
    backend_url: str, queue_name: str
) -> None:
    """10,000 supervisors that each registered and died without a word."""
    async with open_queue(backend_url, queue_name) as q:
        store = q.store
        now = time.time()

        async def register(i: int) -> None:
            record = WorkerRecord(
                id=f"{queue_name}-crashed-{i}",
                host="crashloop",
                pid=100_000 + i,
                started_at=now,
                last_seen=now + i * 0.001,
                pools=[],
            )
            await store.register_worker(record, now - PRUNE_AFTER)

        for start in range(0, 10_000, 250):
            async with anyio.create_task_group() as tg:
                for i in range(start, start + 250):
                    tg.start_soon(register, i)
        assert await _row_count(q) <= MAX_WORKER_ROWS
        listed = await q.workers()
        assert len(listed) <= MAX_WORKER_ROWS
        # the newest are the ones kept
        assert f"{queue_name}-crashed-9999" in {w.id for w in listed}
        assert f"{queue_name}-crashed-0" not in {w.id for w in listed}


async def test_bad_timeouts_are_refused(queue: pq.Queue) -> None:
    with pytest.raises(pq.ArgumentError, match="timeout"):
        await queue.workers(timeout=0)
    with pytest.raises(pq.ArgumentError, match="registry_interval"):
        pq.Supervisor(registry_interval=-1)


async def test_a_cancelled_supervisor_still_leaves_the_registry(
    backend_url: str, queue_name: str
) -> None:
    async with open_queue(backend_url, queue_name) as q:
        started = anyio.Event()
        ids: list[str] = []

        async def nothing(job: pq.Job) -> None:
            return None

        async def run() -> None:
            async with pq.Supervisor(grace=0.5) as sup:
                await sup.add(q, nothing)
                ids.append(sup.id)
                started.set()
                await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            await started.wait()
            assert ids[0] in [w.id for w in await q.workers()]
            tg.cancel_scope.cancel()  # the supervisor's block is left by cancellation
        assert ids[0] not in [w.id for w in await q.workers()]
