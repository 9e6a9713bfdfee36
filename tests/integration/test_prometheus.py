"""Prometheus: the worker's real /metrics endpoint scraped over HTTP and parsed with
prometheus_client's own parser, and the collector in a registry of the application's own."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import persistq_async as pq
from persistq_async.contrib.prometheus import PersistqCollector
from tests.conftest import open_queue
from tests.integration.test_worker_cli import HANDLER_MODULE, Worker

pytestmark = pytest.mark.timeout(90)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def test_the_worker_serves_metrics_and_probes(
    backend_url: str, queue_name: str, tmp_path: Path
) -> None:
    (tmp_path / "jobs_mod.py").write_text(HANDLER_MODULE)
    async with open_queue(backend_url, queue_name) as q:
        ok_ids = await q.put_many([{"to": f"u{i}"} for i in range(5)])
        await q.put({"fail": True}, max_attempts=1)
        await q.put({"later": True}, delay=3600)
        command = [sys.executable, "-m", "persistq_async", "worker", "jobs_mod:handler"]
        command += ["--url", backend_url, "--queue", queue_name, "--concurrency", "3"]
        command += ["--metrics", "127.0.0.1:0", "--health", "127.0.0.1:0"]
        process = await anyio.open_process(
            command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        worker = Worker(process)
        async with process:
            try:
                # the same address twice: one server for both
                line = await worker.expect("serving /livez, /metrics, /readyz on")
                port = int(re.search(r":(\d+)$", line).group(1))  # type: ignore[union-attr]
                await worker.expect("worker started")
                await _until_settled(q, len(ok_ids))
                base = f"http://127.0.0.1:{port}"
                lq = (("queue", queue_name),)
                # the database says done before the worker's ack call returns and counts it
                with anyio.fail_after(10):
                    while True:
                        status, content_type, text = await anyio.to_thread.run_sync(
                            get, base + "/metrics"
                        )
                        assert status == 200
                        found = samples(text)
                        if found.get(("persistq_job_duration_seconds_count", lq)) == 6:
                            break
                        await anyio.sleep(0.05)
                assert content_type.startswith("text/plain; version=")
                assert found[("persistq_jobs_total", (("outcome", "acked"), *lq))] == 5
                assert found[("persistq_jobs_total", (("outcome", "dead"), *lq))] == 1
                assert found[("persistq_job_duration_seconds_count", lq)] == 6
                assert found[("persistq_job_wait_seconds_count", lq)] == 6
                assert found[("persistq_job_duration_seconds_bucket", (("le", "+Inf"), *lq))] == 6
                assert (
                    found[("persistq_queue_jobs", (("queue", queue_name), ("state", "done")))] == 5
                )
                assert (
                    found[("persistq_queue_jobs", (("queue", queue_name), ("state", "dead")))] == 1
                )
                scheduled = (("queue", queue_name), ("state", "scheduled"))
                assert found[("persistq_queue_jobs", scheduled)] == 1
                assert found[("persistq_queue_lag_seconds", lq)] == 0
                assert found[("persistq_workers", lq)] == 1
                pool = (("pool", queue_name), ("queue", queue_name))
                assert found[("persistq_pool_concurrency", pool)] == 3
                assert found[("persistq_pool_active", pool)] == 0
                # the probes, from the same server
                assert (await anyio.to_thread.run_sync(get, base + "/livez"))[0] == 200
                status, content_type, body = await anyio.to_thread.run_sync(get, base + "/readyz")
                assert (status, content_type) == (200, "application/json")
                assert '"status": "ok"' in body
                assert (await anyio.to_thread.run_sync(get, base + "/nothing"))[0] == 404
                process.send_signal(signal.SIGTERM)
                assert await worker.finish(within=20) == 0, worker.output
            finally:
                if process.returncode is None:
                    process.kill()
    assert "Traceback" not in worker.output


async def _until_settled(q: pq.Queue, done: int) -> None:
    with anyio.fail_after(30):
        while True:
            stats = await q.stats()
            if stats.done == done and stats.dead == 1:
                return
            await anyio.sleep(0.05)


async def test_the_collector_in_an_applications_own_registry(
    backend_url: str, queue_name: str
) -> None:
    registry = CollectorRegistry()
    async with open_queue(backend_url, queue_name) as q, pq.Supervisor(grace=1) as sup:
        collector = PersistqCollector([q], supervisor=sup, namespace="myapp")
        registry.register(collector)
        with collector:
            await q.put_many([{"n": i} for i in range(4)])

            async def handler(job: pq.Job) -> None:
                if job.payload["n"] == 3:
                    raise pq.Retry(delay=3600)

            await sup.add(q, handler, concurrency=2, name="w")
            async with anyio.create_task_group() as tg:
                await tg.start(collector.run, 0.05)
                with anyio.fail_after(20):
                    while (await q.stats()).done < 3:  # noqa: ASYNC110 - the database says
                        await anyio.sleep(0.05)
                await anyio.sleep(0.2)  # a refresh after the last ack
                tg.cancel_scope.cancel()
            found = samples(generate_latest(registry).decode())
        # unsubscribed: later events are not counted
        await q.put({"n": 9})
        again = samples(generate_latest(registry).decode())
    lq = (("queue", queue_name),)
    assert found[("myapp_jobs_put_total", lq)] == 4
    assert again[("myapp_jobs_put_total", lq)] == 4
    assert found[("myapp_jobs_total", (("outcome", "acked"), *lq))] == 3
    assert found[("myapp_jobs_total", (("outcome", "nacked"), *lq))] == 1
    assert found[("myapp_queue_jobs", (("queue", queue_name), ("state", "done")))] == 3
    assert found[("myapp_queue_jobs", (("queue", queue_name), ("state", "scheduled")))] == 1
    assert found[("myapp_workers", lq)] == 1
    assert found[("myapp_pool_concurrency", (("pool", "w"), ("queue", queue_name)))] == 2


def test_event_histograms_match_prometheus_clients_own() -> None:
    """The collector counts on the event loop's thread without prometheus_client's locks;
    what it exposes must be what the client's own Histogram and Counter would (bucket
    boundaries inclusive, negative times as zero)."""
    from prometheus_client import Counter, Histogram

    from persistq_async.contrib.prometheus import DURATION_BUCKETS
    from persistq_async.metrics import EventKind, JobEvent, PoolEvent

    times = [0.0, 0.001, 0.0011, 0.0025, 0.7, 1.0, 59.9, 300.0, 301.0, -0.5, 12.0]
    collector = PersistqCollector()
    mine = CollectorRegistry()
    mine.register(collector)
    reference = CollectorRegistry()
    ref_duration = Histogram(
        "persistq_job_duration_seconds",
        "d",
        ["queue"],
        buckets=DURATION_BUCKETS,
        registry=reference,
    )
    ref_wait = Histogram(
        "persistq_job_wait_seconds", "w", ["queue"], buckets=DURATION_BUCKETS, registry=reference
    )
    ref_jobs = Counter("persistq_jobs", "j", ["queue", "outcome"], registry=reference)
    ref_restarts = Counter("persistq_pool_restarts", "r", ["pool", "queue"], registry=reference)
    for n, seconds in enumerate(times):
        queue = "a" if n % 3 else "b"
        collector(JobEvent(kind=EventKind.JOB_CLAIMED, queue=queue, job_id=n, wait_seconds=seconds))
        ref_wait.labels(queue).observe(max(0.0, seconds))
        kind = EventKind.JOB_ACKED if n % 2 else EventKind.JOB_NACKED
        collector(JobEvent(kind=kind, queue=queue, job_id=n, run_seconds=seconds))
        ref_duration.labels(queue).observe(max(0.0, seconds))
        ref_jobs.labels(queue, "acked" if n % 2 else "nacked").inc()
    # A timeout counts as an outcome, but its run time comes with the nack that follows it.
    collector(JobEvent(kind=EventKind.JOB_TIMEOUT, queue="a", job_id=99, run_seconds=5.0))
    ref_jobs.labels("a", "timeout").inc()
    collector(PoolEvent(kind=EventKind.POOL_RESTARTED, pool="p", queue="a", concurrency=1))
    ref_restarts.labels("p", "a").inc()

    def event_samples(
        registry: CollectorRegistry,
    ) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        wanted = ("persistq_job_", "persistq_jobs_total", "persistq_pool_restarts_total")
        return {
            key: value
            for key, value in samples(generate_latest(registry).decode()).items()
            if key[0].startswith(wanted) and not key[0].endswith("_created")
        }

    expected = event_samples(reference)
    assert len(expected) > 40
    assert event_samples(mine) == pytest.approx(expected)
