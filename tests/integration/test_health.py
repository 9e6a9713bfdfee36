"""Queue.health(): ok, degraded and failing; and the probe server's HTTP answers."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from sqlalchemy import update

import persistq_async as pq
from persistq_async._http import Response, bind, serve
from persistq_async.schema import SCHEMA_VERSION, meta
from tests.conftest import open_queue, private_pg_database


async def idle(job: pq.Job) -> None:
    return None


def _check(report: pq.HealthReport, name: str) -> pq.HealthCheck:
    (found,) = [c for c in report.checks if c.name == name]
    return found


async def test_a_served_queue_is_ok(backend_url: str, queue_name: str, is_sqlite: bool) -> None:
    async with open_queue(backend_url, queue_name) as q, pq.Supervisor(grace=0) as sup:
        await sup.add(q, idle)
        report = await q.health()
        assert report.status == "ok", report
        assert report.ok
        assert report.database_reachable
        assert report.round_trip_seconds is not None
        assert report.round_trip_seconds >= 0
        assert report.schema_version == SCHEMA_VERSION
        assert (report.lag_seconds, report.live_workers) == (0.0, 1)
        names = [c.name for c in report.checks]
        assert names == ["database", "schema", "lag", "workers", *(["wal"] if is_sqlite else [])]
        assert (report.wal_bytes is not None) == is_sqlite
        assert report.as_dict()["status"] == "ok"
        json.dumps(report.as_dict())


@pytest.fixture
def is_sqlite(backend_url: str) -> bool:
    return not backend_url.startswith("postgresql")


async def test_lag_no_worker_and_a_large_wal_degrade(
    backend_url: str, queue_name: str, is_sqlite: bool
) -> None:
    now = [1_700_000_000.0]
    async with open_queue(backend_url, queue_name, clock=lambda: now[0]) as q:
        await q.put({"n": 1})
        now[0] += 120
        report = await q.health(require_workers=False)
        assert report.status == "degraded"
        assert report.ok  # degraded still works
        assert report.lag_seconds == 120.0
        assert _check(report, "lag").status == "degraded"
        assert (await q.health(max_lag=300, require_workers=False)).status == "ok"
        report = await q.health(max_lag=300)
        assert _check(report, "workers").status == "degraded"
        assert report.live_workers == 0
        if is_sqlite:
            report = await q.health(max_lag=300, require_workers=False, max_wal_bytes=1)
            assert _check(report, "wal").status == "degraded"
            assert report.status == "degraded"


async def test_a_foreign_schema_version_is_failing(backend_url: str, queue_name: str) -> None:
    async with open_queue(backend_url, queue_name) as q:
        await q.store.write(
            lambda conn: conn.execute(
                update(meta).where(meta.c.key == "schema_version").values(value="99")
            )
        )
        try:
            report = await q.health(require_workers=False)
            assert report.status == "failing"
            assert not report.ok
            assert (
                _check(report, "schema").detail
                == f"version 99, this library expects {SCHEMA_VERSION}"
            )
        finally:
            await q.store.write(
                lambda conn: conn.execute(
                    update(meta)
                    .where(meta.c.key == "schema_version")
                    .values(value=str(SCHEMA_VERSION))
                )
            )


@pytest.mark.postgres
def test_a_database_that_is_gone_is_failing_without_raising() -> None:
    from tests.conftest import pg_admin

    async def scenario(url: str) -> None:
        async with open_queue(url, "gone") as q:
            assert (await q.health(require_workers=False)).ok
            name = url.rsplit("/", 1)[1]
            await pg_admin(url, f'DROP DATABASE "{name}" WITH (FORCE)')
            report = await q.health(require_workers=False)
            assert report.status == "failing"
            assert not report.database_reachable
            assert [c.name for c in report.checks] == ["database"]
            assert report.round_trip_seconds is None

    with private_pg_database("persistq_health") as url:
        anyio.run(scenario, url)


# ---------------------------------------------------------------------- the probe server


async def _exchange(port: int, request: bytes) -> bytes:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        await stream.send_eof()  # an incomplete head is then answered at once, not at timeout
        chunks = []
        with anyio.fail_after(10):
            while True:
                try:
                    chunks.append(await stream.receive())
                except anyio.EndOfStream:
                    break
    return b"".join(chunks)


async def test_the_probe_server_answers_plainly_to_bad_requests() -> None:
    async def fine() -> Response:
        return Response(status=200, content_type="text/plain", body=b"fine\n")

    async def broken() -> Response:
        raise RuntimeError("route bug")

    listener = await bind("--health", "127.0.0.1", 0)
    async with anyio.create_task_group() as tg:
        port = await tg.start(functools.partial(serve, listener, {"/a": fine, "/b": broken}))
        answer = await _exchange(port, b"GET /a?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
        assert answer.endswith(b"\r\n\r\nfine\n")
        assert b"Content-Length: 5\r\n" in answer
        head = await _exchange(port, b"HEAD /a HTTP/1.1\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK")
        assert head.endswith(b"\r\n\r\n")
        assert (await _exchange(port, b"POST /a HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        assert (await _exchange(port, b"GET /zzz HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await _exchange(port, b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400")
        huge = b"GET /a HTTP/1.1\r\nX: " + b"x" * 20_000 + b"\r\n\r\n"
        assert (await _exchange(port, huge)).startswith(b"HTTP/1.1 400")
        assert (await _exchange(port, b"GET /a HTTP/1.1\r\n")).startswith(b"HTTP/1.1 400")
        failed = await _exchange(port, b"GET /b HTTP/1.1\r\n\r\n")
        assert failed.startswith(b"HTTP/1.1 500")
        assert b"Traceback" not in failed
        tg.cancel_scope.cancel()


def test_bad_probe_addresses_are_one_line_errors(tmp_path: Path) -> None:
    (tmp_path / "h.py").write_text("async def handler(job):\n    return None\n")
    for option, value, message in [
        ("--health", "nonsense", "--health: expected HOST:PORT"),
        ("--metrics", "127.0.0.1:99999", "--metrics: expected HOST:PORT"),
        ("--health", "256.1.1.1:80", "--health: cannot listen on 256.1.1.1:80"),
    ]:
        done = subprocess.run(
            [sys.executable, "-m", "persistq_async", "worker", "h:handler", option, value],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"persistq: error: {message}"), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


async def test_readyz_says_503_while_the_queue_is_failing(
    backend_url: str, queue_name: str
) -> None:
    import argparse

    from persistq_async.cli import _monitor_routes

    args = argparse.Namespace(health=("127.0.0.1", 0), metrics=None)
    async with open_queue(backend_url, queue_name) as q, pq.Supervisor(grace=0) as sup:
        await sup.add(q, idle)
        ((address, routes),) = _monitor_routes(args, q, sup).items()
        listener = await bind("--health", *address)
        async with anyio.create_task_group() as tg:
            port = await tg.start(functools.partial(serve, listener, routes))
            ready = await _exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")
            assert ready.startswith(b"HTTP/1.1 200 OK")
            await q.store.write(
                lambda conn: conn.execute(
                    update(meta).where(meta.c.key == "schema_version").values(value="99")
                )
            )
            try:
                failing = await _exchange(port, b"GET /readyz HTTP/1.1\r\n\r\n")
                live = await _exchange(port, b"GET /livez HTTP/1.1\r\n\r\n")
            finally:
                await q.store.write(
                    lambda conn: conn.execute(
                        update(meta)
                        .where(meta.c.key == "schema_version")
                        .values(value=str(SCHEMA_VERSION))
                    )
                )
            tg.cancel_scope.cancel()
    assert failing.startswith(b"HTTP/1.1 503 Service Unavailable")
    body = json.loads(failing.split(b"\r\n\r\n", 1)[1])
    assert body["status"] == "failing"
    assert body["ok"] is False
    assert live.startswith(b"HTTP/1.1 200 OK")  # the loop still answers
