"""Flow-control limits across worker processes, on SQLite and PostgreSQL.

- A rate limit of 50/s shared by four worker processes for 20 s: in every one-second window the
  claims stay within the limit plus the documented burst (5), and the backlog is served at 90%
  of the limit or more.
- ``max_running=7`` over five processes whose pools have 20 slots each: the running count,
  sampled from the database throughout, never exceeds 7, and throughput stays near what 7 slots
  allow.

Claims are read back from the audit trail (every delivery's attempt row has its claim time),
after the workers left: acked, or handed back at shutdown.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import anyio
import pytest

import persistq_async as pq
from tests.conftest import open_queue

from ._support import WorkerProcess, wait_for_output

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]

CHILD = Path(__file__).with_name("_flow_worker.py")
#: Seconds a worker may take to start (imports on a loaded machine).
START_TIMEOUT = 90.0


@contextmanager
def workers(
    tmp_path: Path, url: str, queue: str, count: int, concurrency: int, seconds: float
) -> Iterator[list[WorkerProcess]]:
    with ExitStack() as stack:
        started = []
        for i in range(count):
            worker = WorkerProcess(
                [sys.executable, str(CHILD), url, queue, str(concurrency), str(seconds)],
                cwd=tmp_path,
                env=dict(os.environ),
                out_path=tmp_path / f"worker-{i}.out",
            )
            stack.callback(worker.close)
            started.append(worker)
        for worker in started:
            wait_for_output(worker, "ready", START_TIMEOUT)
        yield started


async def stop(started: list[WorkerProcess]) -> None:
    for worker in started:
        worker.proc.send_signal(signal.SIGTERM)
    for worker in started:
        status = await anyio.to_thread.run_sync(functools.partial(worker.proc.wait, timeout=60))
        assert status == 0, worker.output()


async def claim_times(q: pq.Queue) -> list[float]:
    """The claim time of every delivery of the queue's jobs (all ended)."""
    times = []
    for info in await q.list_jobs(limit=10_000):
        assert info.state is not pq.JobState.RUNNING, info
        times += [a.started_at.timestamp() for a in info.history]
    return sorted(times)


def most_in_any_window(times: list[float], width: float) -> int:
    """The most claims in any half-open window of ``width`` seconds."""
    most, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - width:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_rate_limit_holds_across_four_processes(
    backend_url: str, queue_name: str, tmp_path: Path
) -> None:
    limit, burst, duration = 50, 5, 20.0
    async with open_queue(backend_url, queue_name) as q:
        await q.set_rate_limit(f"{limit}/s")  # the documented default burst: a tenth
        assert (await q.stats()).rate_limit == "50/s"
        await q.put_many(list(range(int(limit * duration * 1.5))))
        with workers(tmp_path, backend_url, queue_name, 4, 20, 0.01) as started:
            begin = time.time()
            await anyio.sleep(duration)
            end = time.time()
            await stop(started)
        times = await claim_times(q)
    per_second: dict[int, int] = {}
    for t in times:
        per_second[int(t)] = per_second.get(int(t), 0) + 1
    in_run = [t for t in times if begin <= t < end]
    rate = len(in_run) / (end - begin)
    print(
        f"\n{backend_url.split(':')[0]}: {rate:.1f} claims/s over {end - begin:.1f}s; "
        f"most in a calendar second {max(per_second.values())}, "
        f"in any 1 s window {most_in_any_window(times, 1.0)}"
    )
    assert max(per_second.values()) <= limit + burst, per_second
    assert most_in_any_window(times, 1.0) <= limit + burst
    assert rate >= 0.9 * limit, rate


async def test_max_running_holds_across_five_processes(
    backend_url: str, queue_name: str, tmp_path: Path
) -> None:
    cap, handler_seconds, duration = 7, 0.2, 10.0
    samples: list[int] = []
    async with open_queue(backend_url, queue_name) as q:
        await q.set_max_running(cap)
        await q.put_many(list(range(int(duration * cap / handler_seconds * 2))))
        with workers(tmp_path, backend_url, queue_name, 5, 20, handler_seconds) as started:
            done_before = (await q.stats()).done
            begin = time.monotonic()
            while time.monotonic() - begin < duration:
                samples.append((await q.stats()).running)
                await anyio.sleep(0.02)
            done = (await q.stats()).done - done_before
            elapsed = time.monotonic() - begin
            await stop(started)
    throughput = done / elapsed
    ideal = cap / handler_seconds
    print(
        f"\n{backend_url.split(':')[0]}: {len(samples)} samples, peak {max(samples)}, "
        f"mean {sum(samples) / len(samples):.2f} running; {throughput:.1f} jobs/s of {ideal:.0f}"
    )
    assert max(samples) <= cap
    assert max(samples) == cap
    # The slots are kept busy: a freed slot is taken again at once. (Throughput also pays the
    # claim and ack round trips per job, which a shared 2-core machine running five workers
    # stretches; hence the looser bound on it.)
    assert sum(samples) / len(samples) >= 0.8 * cap
    assert throughput >= 0.6 * ideal, throughput
