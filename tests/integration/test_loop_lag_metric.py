"""The loop's lag as a Prometheus gauge: a loop held by other code shows in
``persistq_event_loop_lag_max_seconds`` for a minute, so that a scrape sees the spike."""

from __future__ import annotations

import time

import anyio
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import persistq_async as pq
from persistq_async.contrib.prometheus import PersistqCollector

pytestmark = pytest.mark.timeout(60)


def gauge(registry: CollectorRegistry) -> float:
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        if family.name == "persistq_event_loop_lag_max_seconds":
            (sample,) = family.samples
            assert sample.labels == {}
            return float(sample.value)
    raise AssertionError("no persistq_event_loop_lag_max_seconds in the exposition")


async def test_the_loop_lag_gauge_follows_the_watchdog(queue: pq.Queue) -> None:
    async def handler(job: pq.Job) -> None:
        return None

    registry = CollectorRegistry()
    async with pq.Supervisor(block_threshold=0.3) as sup:
        await sup.add(queue, handler)
        collector = PersistqCollector([queue], supervisor=sup)
        registry.register(collector)
        await anyio.sleep(0.6)  # a few on-time watchdog ticks (every 0.25 s)
        assert gauge(registry) < 0.3
        time.sleep(0.6)  # noqa: ASYNC251 - the loop held by code that is no handler
        await anyio.sleep(1.0)  # the watchdog's late tick, then on-time ones
        assert gauge(registry) >= 0.3  # the spike is still shown, a tick or four later
        assert gauge(registry) == sup.loop_lag_max
