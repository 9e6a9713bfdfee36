"""Worker processes of a cycle measurement (``postgres.py``, ``scaling.py``).

Every system's worker (``pg_worker_child.py``, ``pg_peer_child.py``) speaks one protocol: it
connects and prints ``ready``; on ``go`` it starts working; on ``stop`` it stops and prints one
JSON line with the jobs it processed and the CPU seconds it used from ``go`` to ``stop``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream
from common import Deadline, Sample
from pg_systems import Client
from pgserver import BackendCpu

#: How often the parent counts finished jobs while the workers drain.
POLL = 0.02
#: Bounds on the worker processes' start-up and shut-down.
SPAWN_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


async def _read_line(stream: BufferedByteReceiveStream, who: str) -> str:
    try:
        return (await stream.receive_until(b"\n", 1 << 16)).decode().strip()
    except (anyio.IncompleteRead, anyio.EndOfStream):
        raise RuntimeError(f"{who} exited early (its stderr is above)") from None


async def run_workers(
    cmd: list[str],
    workers: int,
    client: Client,
    cpu: BackendCpu | None,
    total: int,
    cap: float,
    prepare: Callable[[], Awaitable[None]] | None = None,
) -> Sample:
    """Start ``workers`` processes running ``cmd``, run ``prepare()`` (the pre-fill) while they
    start up, wait until all are ready, tell them to go and time until ``client.finished()``
    reaches ``total`` (or ``cap`` seconds pass)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs: list[Process] = []
    try:
        began = time.perf_counter()
        for _ in range(workers):
            procs.append(
                await anyio.open_process(
                    cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, env=env
                )
            )
        outs = [BufferedByteReceiveStream(p.stdout) for p in procs if p.stdout is not None]
        if prepare is not None:
            await prepare()
        with anyio.fail_after(SPAWN_TIMEOUT):
            for i, out in enumerate(outs):
                line = await _read_line(out, f"worker {i}")
                if line != "ready":
                    raise RuntimeError(f"worker {i} said {line!r}, not 'ready'")
        spawn_s = time.perf_counter() - began

        if cpu is not None:
            await cpu.start()
        start = time.perf_counter()
        for p in procs:
            assert p.stdin is not None
            await p.stdin.send(b"go\n")
        deadline = Deadline(cap)
        while True:
            finished = await client.finished()
            if finished >= total or deadline.passed():
                break
            for i, p in enumerate(procs):
                if p.returncode is not None:
                    raise RuntimeError(f"worker {i} exited early (its stderr is above)")
            await anyio.sleep(POLL)
        seconds = time.perf_counter() - start
        server_cpu = None if cpu is None else await cpu.seconds()

        for p in procs:
            assert p.stdin is not None
            await p.stdin.send(b"stop\n")
        reports = []
        with anyio.fail_after(STOP_TIMEOUT):
            for i, out in enumerate(outs):
                reports.append(json.loads(await _read_line(out, f"worker {i}")))
            for p in procs:
                await p.wait()
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
            with anyio.CancelScope(shield=True):
                await p.aclose()
    processed = [r["processed"] for r in reports]
    extra = {
        "workers": float(workers),
        "spawn_s": spawn_s,
        "failed": float(sum(r["failed"] for r in reports)),
        "min_per_worker": float(min(processed)),
        "max_per_worker": float(max(processed)),
        # CPU milliseconds all workers used from "go" to "stop", per job finished.
        "worker_cpu_ms_per_job": sum(r["cpu_s"] for r in reports) * 1e3 / max(1, finished),
    }
    if server_cpu is not None:
        extra["server_cpu_ms_per_job"] = server_cpu * 1e3 / max(1, finished)
    return Sample(finished, seconds, extra)
