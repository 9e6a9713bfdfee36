"""OpenTelemetry: a PRODUCER span around put, a CONSUMER span around each handler run, joined
through the trace context in the job's headers, in one process and across two."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import persistq_async as pq
from persistq_async import metrics
from persistq_async.contrib import otel
from tests.conftest import open_queue
from tests.integration._support import records

pytestmark = pytest.mark.timeout(90)


_PROVIDERS: dict[int, TracerProvider] = {}


def exporter_provider(spans: InMemorySpanExporter) -> TracerProvider:
    """The tracer provider that exports into ``spans``."""
    return _PROVIDERS[id(spans)]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    _PROVIDERS[id(spans)] = provider
    tracer = otel.instrument(tracer_provider=provider)
    try:
        yield spans
    finally:
        otel.uninstrument(tracer)
        provider.shutdown()
        del _PROVIDERS[id(spans)]
    assert not metrics.hub.traced


def _named(spans: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in spans.get_finished_spans() if s.name == name]


async def _run(q: pq.Queue, handler: Any) -> None:
    async with pq.Supervisor(grace=1) as sup:
        await sup.add(q, handler, concurrency=2, name="workers")
        await q.join(timeout=20)


async def test_the_consumer_span_continues_the_producers_trace(
    backend_url: str, queue_name: str, exporter: InMemorySpanExporter
) -> None:
    async with open_queue(backend_url, queue_name, max_attempts=1) as q:
        ok = await q.put({"n": 1}, headers={"tenant": "acme"})
        bad = await q.put({"n": 2})
        batch = await q.put_many([{"n": 3}, {"n": 4}])
        info = await q.job(ok)
        assert info is not None
        assert dict(info.headers)["tenant"] == "acme"
        assert "traceparent" in info.headers

        async def handler(job: pq.Job) -> None:
            if job.payload["n"] == 2:
                raise ValueError("bad payload")

        await _run(q, handler)
    sends = _named(exporter, f"send {queue_name}")
    assert len(sends) == 3
    assert all(s.kind is SpanKind.PRODUCER for s in sends)
    one = next(s for s in sends if s.attributes.get("messaging.message.id") == str(ok))
    assert dict(one.attributes) == {
        "messaging.system": "persistq",
        "messaging.destination.name": queue_name,
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.message.id": str(ok),
    }
    many = next(s for s in sends if s.attributes.get("messaging.batch.message_count") == 2)
    processes = _named(exporter, f"process {queue_name}")
    assert len(processes) == 4
    by_id = {s.attributes["messaging.message.id"]: s for s in processes}
    for job_id, producer in [(ok, one), (batch[0], many), (batch[1], many)]:
        consumer = by_id[str(job_id)]
        assert consumer.kind is SpanKind.CONSUMER
        assert consumer.parent is not None
        assert consumer.parent.span_id == producer.context.span_id
        assert consumer.context.trace_id == producer.context.trace_id
        assert consumer.parent.is_remote  # it came through the headers
    consumer = by_id[str(ok)]
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.system"] == "persistq"
    assert consumer.attributes["messaging.destination.name"] == queue_name
    assert consumer.attributes["messaging.consumer.group.name"] == "workers"
    assert "error.type" not in consumer.attributes
    failed = by_id[str(bad)]
    assert failed.attributes["error.type"] == "ValueError"
    assert not failed.status.is_ok


async def test_spans_started_by_a_handler_are_children_of_its_consumer_span(
    backend_url: str, queue_name: str, exporter: InMemorySpanExporter
) -> None:
    from opentelemetry import trace

    async with open_queue(backend_url, queue_name, max_attempts=1) as q:
        await q.put_many([{"n": 1}, {"n": 2}])
        seen: list[str] = []

        async def handler(job: pq.Job) -> None:
            # The consumer span is current while the handler runs, in the handler's own task.
            current = trace.get_current_span()
            seen.append(current.get_span_context().span_id)
            tracer = trace.get_tracer("app", tracer_provider=exporter_provider(exporter))
            with tracer.start_as_current_span("app work"):
                await anyio.lowlevel.checkpoint()
            await anyio.lowlevel.checkpoint()
            assert trace.get_current_span() is current

        await _run(q, handler)
        # Outside any handler, nothing the pool attached is left current.
        assert not trace.get_current_span().get_span_context().is_valid
    processes = {s.context.span_id: s for s in _named(exporter, f"process {queue_name}")}
    works = _named(exporter, "app work")
    assert len(processes) == 2
    assert len(works) == 2
    assert sorted(seen) == sorted(processes)
    for work in works:
        assert work.parent is not None
        consumer = processes[work.parent.span_id]
        assert work.context.trace_id == consumer.context.trace_id


async def test_the_trace_crosses_processes(
    backend_url: str, queue_name: str, tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    script = tmp_path / "producer.py"
    script.write_text(
        textwrap.dedent(
            """
            import json, sys
            import anyio
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import SimpleSpanProcessor
            from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                InMemorySpanExporter,
            )
            import persistq_async as pq
            from persistq_async.contrib import otel

            spans = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(spans))
            otel.instrument(tracer_provider=provider)

            async def main():
                async with pq.Queue(sys.argv[1], name=sys.argv[2]) as q:
                    job_id = await q.put({"from": "another process"})
                (span,) = spans.get_finished_spans()
                print(json.dumps({
                    "job": job_id,
                    "trace": span.context.trace_id,
                    "span": span.context.span_id,
                    "kind": span.kind.name,
                }))

            anyio.run(main)
            """
        )
    )
    done = await anyio.run_process(
        [sys.executable, str(script), backend_url, queue_name], check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    produced = json.loads(done.stdout)
    assert produced["kind"] == "PRODUCER"

    async def handler(job: pq.Job) -> None:
        return None

    async with open_queue(backend_url, queue_name) as q:
        await _run(q, handler)
    (consumer,) = _named(exporter, f"process {queue_name}")
    assert consumer.attributes["messaging.message.id"] == str(produced["job"])
    assert consumer.context.trace_id == produced["trace"]
    assert consumer.parent is not None
    assert consumer.parent.span_id == produced["span"]
    assert consumer.parent.is_remote


class _BrokenTracer:
    def put_span(self, queue: str, headers: Any, count: int) -> AbstractContextManager[Any]:
        raise RuntimeError("tracer bug")

    def process_span(self, job: pq.Job, pool: str) -> AbstractContextManager[Any]:
        raise RuntimeError("tracer bug")


async def test_a_broken_tracer_disturbs_neither_put_nor_handler(
    queue: pq.Queue, caplog: pytest.LogCaptureFixture
) -> None:
    broken = _BrokenTracer()
    metrics.add_tracer(broken)
    try:
        job_id = await queue.put({"n": 1})
        ran: list[int] = []

        async def handler(job: pq.Job) -> str:
            ran.append(job.id)
            return "ok"

        await _run(queue, handler)
    finally:
        metrics.remove_tracer(broken)
    assert ran == [job_id]
    info = await queue.job(job_id)
    assert info is not None
    assert info.result == "ok"
    assert len(records(caplog, "observer_failed")) == 2
