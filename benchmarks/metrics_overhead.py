"""The full cycle through a Supervisor pool with Prometheus and OpenTelemetry on, beside the
same cycle with them off, in the same run.

Each round pre-fills a fresh SQLite file with ``--jobs`` jobs (put_many), then times a pool of
64 slots with a no-op handler from ``Supervisor.add`` to ``q.join()``. "On" means a
:class:`~persistq_async.contrib.prometheus.PersistqCollector` subscribed to the events (its
counters and histograms are updated for every put, claim and ack) and registered in a
registry that is rendered once per round, plus an OpenTelemetry SDK tracer provider with a
batch span processor (into an in-memory exporter) behind :func:`persistq_async.contrib.otel.
instrument`, so every put and every handler run makes a span, with its trace context written
into and read back from the job's headers. The rounds alternate off/on; the medians are compared,
both of jobs per wall-clock second and of jobs per CPU-second of this process (the second is
less disturbed by other processes on a shared machine; the SQLite writer thread is included).

``--only prometheus`` or ``--only otel`` turns on one of the two; ``--sample-ratio 0.1`` gives the
tracer provider a parent-based ratio sampler (what a busy production service would configure):
unsampled jobs still carry trace context, but their spans are not recorded.

    python benchmarks/metrics_overhead.py [--jobs 5000] [--rounds 3] [--only otel]
        [--sample-ratio 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry, generate_latest

import persistq_async as pq
from persistq_async.contrib import otel
from persistq_async.contrib.prometheus import PersistqCollector

QUEUE = "bench"
SLOTS = 64


async def _noop(job: pq.Job) -> None:
    return None


async def cycle(
    path: Path, jobs: int, instrumented: bool, only: str | None, ratio: float | None
) -> tuple[float, float, int]:
    """Jobs per wall-clock second and per CPU-second through the pool, and the spans
    exported (0 when off)."""
    registry = CollectorRegistry()
    spans = InMemorySpanExporter()
    sampler = None if ratio is None else ParentBased(TraceIdRatioBased(ratio))
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(BatchSpanProcessor(spans))
    async with pq.Queue(path, name=QUEUE) as q:
        collector = PersistqCollector([q])
        tracer = None
        if instrumented and only in (None, "prometheus"):
            registry.register(collector)
            collector.subscribe()
        if instrumented and only in (None, "otel"):
            tracer = otel.instrument(tracer_provider=provider)
        try:
            for first in range(0, jobs, 1000):
                await q.put_many([{"n": i} for i in range(first, min(first + 1000, jobs))])
            async with pq.Supervisor(grace=5) as sup:
                started, cpu = time.perf_counter(), time.process_time()
                await sup.add(q, _noop, concurrency=SLOTS)
                await q.join()
                elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            if instrumented:
                await collector.refresh()
                generate_latest(registry)
        finally:
            collector.unsubscribe()
            if tracer is not None:
                otel.uninstrument(tracer)
    provider.shutdown()  # flushes the batch processor
    return jobs / elapsed, jobs / cpu, len(spans.get_finished_spans())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["prometheus", "otel"], default=None)
    parser.add_argument("--sample-ratio", type=float, default=None)
    args = parser.parse_args()
    results: dict[bool, list[float]] = {False: [], True: []}
    per_cpu: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="persistq-overhead-") as tmp:
        for round_ in range(args.rounds):
            for instrumented in (False, True):
                path = Path(tmp) / f"r{round_}-{int(instrumented)}.db"
                rate, cpu_rate, spans = anyio.run(
                    cycle, path, args.jobs, instrumented, args.only, args.sample_ratio
                )
                results[instrumented].append(rate)
                per_cpu[instrumented].append(cpu_rate)
                label = "on " if instrumented else "off"
                print(
                    f"round {round_ + 1} {label}: {rate:,.0f} jobs/s, "
                    f"{cpu_rate:,.0f} jobs/CPU-s, {spans:,} spans"
                )
    off = statistics.median(results[False])
    on = statistics.median(results[True])
    print(f"median off {off:,.0f} jobs/s, on {on:,.0f} jobs/s: on/off = {on / off:.2f}x")
    off_cpu, on_cpu = statistics.median(per_cpu[False]), statistics.median(per_cpu[True])
    print(
        f"median off {off_cpu:,.0f} jobs/CPU-s, on {on_cpu:,.0f} jobs/CPU-s: "
        f"on/off = {on_cpu / off_cpu:.2f}x"
    )


if __name__ == "__main__":
    main()
