"""max_payload_bytes and max_result_bytes: checked after serialisation, before any write."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import persistq_async as pq
from tests.conftest import pool_counted

pytestmark = pytest.mark.timeout(60)

LIMIT = 100


def _payload_of(size: int) -> str:
    """A string payload that serialises (as JSON, with its quotes) to exactly ``size`` bytes."""
    return "x" * (size - 2)


async def test_defaults_are_four_mebibytes(backend_url: str, queue_name: str) -> None:
    async with pq.Queue(backend_url, name=queue_name) as q:
        assert q.options.max_payload_bytes == 4 * 1024 * 1024
        assert q.options.max_result_bytes == 4 * 1024 * 1024


async def test_put_at_the_limit_passes_one_byte_over_raises_naming_size_and_limit(
    backend_url: str, queue_name: str
) -> None:
    async with pq.Queue(backend_url, name=queue_name, max_payload_bytes=LIMIT) as q:
        job_id = await q.put(_payload_of(LIMIT))
        with pytest.raises(pq.SerializationError) as info:
            await q.put(_payload_of(LIMIT + 1))
        message = str(info.value)
        assert f"{LIMIT + 1} bytes" in message
        assert f"max_payload_bytes={LIMIT}" in message
        assert [i.id for i in await q.list_jobs()] == [job_id]


async def test_put_many_checks_every_item_before_writing_any(
    backend_url: str, queue_name: str
) -> None:
    async with pq.Queue(backend_url, name=queue_name, max_payload_bytes=LIMIT) as q:
        payloads = [{"n": n} for n in range(5)] + [_payload_of(LIMIT + 50)] + [{"n": 6}]
        with pytest.raises(pq.SerializationError) as info:
            await q.put_many(payloads)
        assert "payloads[5]" in str(info.value)
        assert f"{LIMIT + 50} bytes" in str(info.value)
        assert await q.list_jobs() == []
        assert (await q.stats()).total == 0


async def test_a_result_over_the_limit_fails_the_job_and_is_not_stored(
    backend_url: str, queue_name: str
) -> None:
    async with pq.Queue(
        backend_url, name=queue_name, max_result_bytes=LIMIT, poll_interval=0.05
    ) as q:
        big = await q.put({"size": LIMIT + 1})
        small = await q.put({"size": LIMIT})

        async def handler(job: pq.Job) -> str:
            return _payload_of(int(job.payload["size"]))

        async with pq.Supervisor(grace=5) as sup:
            pool = await sup.add(q, handler, concurrency=2)
            await q.join(timeout=20)
            await pool_counted(lambda: pool.processed >= 2)
            assert (pool.processed, pool.failed) == (2, 1)
        failed = await q.job(big)
        assert failed is not None
        assert failed.state == pq.JobState.DEAD
        assert failed.result is None
        assert failed.attempts == 1  # failed, not retried: the handler would return the same
        assert failed.last_error is not None
        assert f"{LIMIT + 1} bytes" in failed.last_error
        assert f"max_result_bytes={LIMIT}" in failed.last_error
        assert [a.outcome for a in failed.history] == ["failed"]
        done = await q.job(small)
        assert done is not None
        assert done.state == pq.JobState.DONE
        assert done.result == _payload_of(LIMIT)


async def test_ack_over_the_limit_raises_and_leaves_the_job_leased(
    backend_url: str, queue_name: str
) -> None:
    async with pq.Queue(backend_url, name=queue_name, max_result_bytes=LIMIT) as q:
        await q.put({"n": 1})
        job = await q.get(timeout=5)
        with pytest.raises(pq.SerializationError, match=f"max_result_bytes={LIMIT}"):
            await job.ack(_payload_of(LIMIT + 1))
        assert not job.finished
        running = await q.job(job.id)
        assert running is not None
        assert running.state == pq.JobState.RUNNING
        await job.ack("small")
        assert (await q.stats()).done == 1


def test_the_cli_says_the_same_without_a_traceback(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    env = {**os.environ, "PERSISTQ_MAX_PAYLOAD_BYTES": str(LIMIT)}
    command = [sys.executable, "-m", "persistq_async", "put", f'"{"y" * LIMIT}"']
    done = subprocess.run(
        [*command, "--queue", "q", "--url", str(db)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert f"{LIMIT + 2} bytes" in done.stderr
    assert f"max_payload_bytes={LIMIT}" in done.stderr
    assert "Traceback" not in done.stderr
