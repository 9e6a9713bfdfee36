"""Alert rules driven across their thresholds with a fake clock, both ways, on a real database;
the evaluator lease; the sinks (a callable, a webhook served on 127.0.0.1).

Each test gets a database of its own: the lease and the rules' states belong to a database.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import persistq_async as pq
from persistq_async.alerts import AlertEvaluator, Alerting
from persistq_async.store.alerts import AlertStore
from tests.conftest import open_queue, private_pg_database

from ._support import records

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0
QUEUE = "emails"


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "alerts.db")
    else:
        with private_pg_database("persistq_alerts") as pg:
            yield pg


@pytest.fixture
async def q(url: str, clock: FakeClock) -> AsyncIterator[pq.Queue]:
    async with open_queue(url, QUEUE, clock=clock, lease_seconds=600) as opened:
        yield opened


class Collect:
    """An async callable sink that keeps what it receives."""

    def __init__(self) -> None:
        self.alerts: list[pq.Alert] = []

    async def __call__(self, alert: pq.Alert) -> None:
        self.alerts.append(alert)

    def take(self) -> list[tuple[str, str]]:
        out = [(a.rule, a.status) for a in self.alerts]
        self.alerts.clear()
        return out


def evaluator(
    q: pq.Queue, *rules: pq.AlertRule, sinks: tuple[Any, ...] = (), owner: str = "test", **kw: Any
) -> AlertEvaluator:
    return AlertEvaluator(
        Alerting(rules=rules, sinks=sinks, interval=5), lambda: [q], owner=owner, **kw
    )


async def test_queue_lag_fires_after_for_and_resolves(
    q: pq.Queue, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    seen = Collect()
    ev = evaluator(
        q, pq.QueueLagRule(name="lag", queue=QUEUE, above=60, for_seconds=10), sinks=(seen,)
    )
    await q.put({"n": 1})
    await ev.tick()
    clock.advance(59)
    await ev.tick()
    assert seen.take() == []
    clock.advance(2)  # 61 s: above, pending
    await ev.tick()
    clock.advance(9)  # held for 9 s: still pending
    await ev.tick()
    assert seen.take() == []
    clock.advance(1)  # held for 10 s: fires
    await ev.tick()
    (alert,) = seen.alerts
    assert (alert.rule, alert.status, alert.queue, alert.value) == ("lag", "firing", QUEUE, 71.0)
    assert alert.active_since.timestamp() == T0 + 61
    seen.take()
    for _ in range(3):  # still holding: nothing more
        clock.advance(5)
        await ev.tick()
    assert seen.take() == []
    job = await q.get_nowait()
    assert job is not None
    await job.ack()
    await ev.tick()
    assert seen.take() == [("lag", "resolved")]
    await ev.tick()
    assert seen.take() == []

    (firing,) = records(caplog, "alert_firing")
    assert firing.levelno == logging.WARNING
    assert (firing.rule, firing.kind, firing.queue) == ("lag", "queue_lag", QUEUE)  # type: ignore[attr-defined]
    assert firing.getMessage().startswith("alert lag firing: queue 'emails': queue_lag is 71s")
    (resolved,) = records(caplog, "alert_resolved")
    assert resolved.levelno == logging.WARNING


async def test_a_lag_that_dips_during_for_never_fires(q: pq.Queue, clock: FakeClock) -> None:
    seen = Collect()
    ev = evaluator(
        q, pq.QueueLagRule(name="lag", queue=QUEUE, above=10, for_seconds=20), sinks=(seen,)
    )
    await q.put({"n": 1})
    for _ in range(3):
        clock.advance(15)  # lag 15: pending
        await ev.tick()
        job = await q.get_nowait()  # the job is taken and put back: its lag starts again
        assert job is not None
        await job.nack(delay=0)
        await ev.tick()
    assert seen.take() == []


async def test_dead_jobs_within_a_window(q: pq.Queue, clock: FakeClock) -> None:
    seen = Collect()
    ev = evaluator(q, pq.DeadJobsRule(name="dead", queue=QUEUE, above=1, window=60), sinks=(seen,))
    await q.put_many([{"n": 1}, {"n": 2}], max_attempts=1)
    first = await q.get_nowait()
    assert first is not None
    await first.nack(error="boom")  # its last attempt: dead
    await ev.tick()
    assert seen.take() == []  # one dead job: not above 1
    clock.advance(30)
    second = await q.get_nowait()
    assert second is not None
    await second.fail(error="bad")
    await ev.tick()
    assert seen.take() == [("dead", "firing")]
    clock.advance(31)  # the first death is out of the window
    await ev.tick()
    assert seen.take() == [("dead", "resolved")]


async def test_failure_rate_over_a_window(q: pq.Queue, clock: FakeClock) -> None:
    seen = Collect()
    rule = pq.FailureRateRule(name="fails", queue=QUEUE, above=0.5, window=60, min_deliveries=2)
    ev = evaluator(q, rule, sinks=(seen,))
    await q.put_many([{"n": n} for n in range(3)], max_attempts=5)
    job = await q.get_nowait()
    assert job is not None
    await job.nack(delay=1000, error="x")  # failed delivery 1 of 1: too few to count
    await ev.tick()
    assert seen.take() == []
    job = await q.get_nowait()
    assert job is not None
    await job.ack()  # 1 failed of 2: 0.5 is not above 0.5
    await ev.tick()
    assert seen.take() == []
    job = await q.get_nowait()
    assert job is not None
    await job.fail(error="y")  # 2 of 3
    await ev.tick()
    (alert,) = seen.alerts
    assert alert.status == "firing"
    assert alert.value == pytest.approx(2 / 3)
    seen.take()
    clock.advance(61)  # nothing ended within the window: unknown, so not holding
    await ev.tick()
    assert seen.take() == [("fails", "resolved")]


async def test_pool_restarts_from_any_process(q: pq.Queue, clock: FakeClock) -> None:
    seen = Collect()
    ev = evaluator(
        q,
        pq.PoolRestartsRule(name="restarts", above=1, window=60),
        pq.PoolRestartsRule(name="other-pool", pool="other", window=60),
        sinks=(seen,),
    )
    store = AlertStore(q.store)
    await store.record_restarts([(QUEUE, "mailers", clock(), "DatabaseError: gone")])
    await ev.tick()
    assert seen.take() == []
    clock.advance(10)
    await store.record_restarts([(QUEUE, "mailers", clock(), "DatabaseError: gone")])
    await ev.tick()
    assert seen.take() == [("restarts", "firing")]
    clock.advance(51)  # the first restart leaves the window
    await ev.tick()
    assert seen.take() == [("restarts", "resolved")]


async def test_no_worker_for_a_queue(q: pq.Queue, clock: FakeClock) -> None:
    # The count of live workers comes from the evaluator's live_workers source; here one the
    # test sets, to drive the rule both ways.
    live = {"n": 1}

    async def live_workers(queue: pq.Queue, name: str) -> int:
        assert name == QUEUE
        return live["n"]

    seen = Collect()
    ev = evaluator(
        q,
        pq.NoWorkerRule(name="nobody", queue=QUEUE, for_seconds=30),
        sinks=(seen,),
        live_workers=live_workers,
    )
    await ev.tick()
    live["n"] = 0
    clock.advance(5)
    await ev.tick()
    clock.advance(29)
    await ev.tick()
    assert seen.take() == []
    clock.advance(1)
    await ev.tick()
    assert seen.take() == [("nobody", "firing")]
    live["n"] = 2
    clock.advance(5)
    await ev.tick()
    assert seen.take() == [("nobody", "resolved")]


async def test_wal_size(url: str, clock: FakeClock, q: pq.Queue) -> None:
    seen = Collect()
    wal = q.store.backend.wal_bytes()
    if wal is None:  # PostgreSQL: there is no WAL file to see, so the rule never holds
        ev = evaluator(q, pq.WalSizeRule(name="wal", above=0), sinks=(seen,))
        await q.put_many([{"pad": "x" * 1000}] * 200)
        await ev.tick()
        assert seen.take() == []
        return
    rule = pq.WalSizeRule(name="wal", above=wal + 150_000)
    ev = evaluator(q, rule, sinks=(seen,))
    await ev.tick()
    assert seen.take() == []
    await q.put_many([{"pad": "x" * 1000}] * 300)
    await ev.tick()
    (alert,) = seen.alerts
    assert alert.status == "firing"
    assert alert.value is not None
    assert alert.value > rule.above
    seen.take()
    await q.aclose()  # the last connection checkpoints and removes the WAL
    async with open_queue(url, QUEUE, clock=clock) as reopened:
        assert (reopened.store.backend.wal_bytes() or 0) < rule.above
        again = evaluator(reopened, rule, sinks=(seen,))  # the same owner, a new process
        await again.tick()
    assert seen.take() == [("wal", "resolved")]


# ---------------------------------------------------------------------- one evaluator


async def test_one_evaluator_per_database_and_takeover(
    url: str, q: pq.Queue, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    rule = pq.QueueLagRule(name="lag", queue=QUEUE, above=5)
    first_seen, second_seen = Collect(), Collect()
    async with open_queue(url, QUEUE, clock=clock) as other:
        first = evaluator(q, rule, sinks=(first_seen,), owner="first")
        second = evaluator(other, rule, sinks=(second_seen,), owner="second")
        await q.put({"n": 1})
        clock.advance(10)
        await first.tick()
        await second.tick()
        assert first.leading
        assert not second.leading
        for _ in range(5):
            clock.advance(1)
            await second.tick()
            await first.tick()
        assert first_seen.take() == [("lag", "firing")]
        assert second_seen.take() == []

        # The first stops ticking (hung or dead); once its lease (3 intervals) ran out, the
        # second takes over and goes on from the saved state: no second firing.
        clock.advance(15.1)
        await second.tick()
        assert second.leading
        await first.tick()
        assert not first.leading
        job = await other.get_nowait()
        assert job is not None
        await job.ack()
        await second.tick()
        await first.tick()
        assert second_seen.take() == [("lag", "resolved")]
        assert first_seen.take() == []

        # A clean shutdown gives the lease up: the other takes over at its next tick.
        await second.release()
        await first.tick()
        assert first.leading

    assert [r.owner for r in records(caplog, "alert_lease_taken")] == [  # type: ignore[attr-defined]
        "first",
        "second",
        "first",
    ]
    assert [r.owner for r in records(caplog, "alert_lease_lost")] == ["first"]  # type: ignore[attr-defined]
    assert len(records(caplog, "alert_firing")) == 1
    assert len(records(caplog, "alert_resolved")) == 1


async def test_a_pending_rule_keeps_its_for_across_a_takeover(
    url: str, q: pq.Queue, clock: FakeClock
) -> None:
    rule = pq.QueueLagRule(name="lag", queue=QUEUE, above=5, for_seconds=30)
    seen = Collect()
    async with open_queue(url, QUEUE, clock=clock) as other:
        first = evaluator(q, rule, owner="first")
        second = evaluator(other, rule, sinks=(seen,), owner="second")
        await q.put({"n": 1})
        clock.advance(6)
        await first.tick()  # pending since T0 + 6
        clock.advance(16)
        await second.tick()  # the first's lease ran out: the second goes on from pending
        assert second.leading
        clock.advance(13)
        await second.tick()  # 29 s since pending began
        assert seen.take() == []
        clock.advance(1)
        await second.tick()
        (alert,) = seen.alerts
        assert alert.active_since.timestamp() == T0 + 6


# ---------------------------------------------------------------------- sinks


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers the first ``fail`` requests with
    ``status`` (503 by default), and the others with 204."""

    def __init__(self, fail: int = 0, status: int = 503) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.requests = 0
        self.fail = fail
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                receiver.requests += 1
                if receiver.requests <= receiver.fail:
                    self.send_response(status)
                else:
                    receiver.bodies.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


async def test_webhook_receives_json_and_retries(q: pq.Queue, clock: FakeClock) -> None:
    with Receiver(fail=2) as receiver:
        hook = pq.WebhookSink(url=receiver.url, retries=3, backoff=0.01, timeout=5)
        ev = evaluator(q, pq.QueueLagRule(name="lag", queue=QUEUE, above=1), sinks=(hook,))
        await q.put({"n": 1})
        clock.advance(2)
        await ev.tick()
    assert receiver.requests == 3  # two 503s, then accepted
    (body,) = receiver.bodies
    assert body["rule"] == "lag"
    assert body["status"] == "firing"
    assert body["queue"] == QUEUE
    assert body["value"] == 2.0
    assert body["threshold"] == 1.0
    assert body["at"].endswith("+00:00")


async def test_failing_sinks_are_logged_and_stop_nothing(
    q: pq.Queue, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="persistq_async")
    with Receiver() as closed:
        dead_url = closed.url  # nothing listens there once the receiver has stopped

    async def broken(alert: pq.Alert) -> None:
        raise RuntimeError("pager is down")

    seen = Collect()
    hook = pq.WebhookSink(url=dead_url, retries=1, backoff=0.01, timeout=2)
    ev = evaluator(q, pq.QueueLagRule(name="lag", queue=QUEUE, above=1), sinks=(hook, broken, seen))
    await q.put({"n": 1})
    clock.advance(2)
    await ev.tick()  # does not raise
    assert seen.take() == [("lag", "firing")]
    failures = records(caplog, "alert_sink_failed")
    assert len(failures) == 2
    messages = " ".join(r.getMessage() for r in failures)
    assert "pager is down" in messages
    assert "failed 2 times" in messages
    assert len(records(caplog, "alert_firing")) == 1  # the log sink still said it
    job = await q.get_nowait()
    assert job is not None
    await job.ack()
    await ev.tick()
    assert seen.take() == [("lag", "resolved")]


async def test_a_webhook_4xx_is_not_retried(
    q: pq.Queue, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    with Receiver(fail=10, status=400) as receiver:
        hook = pq.WebhookSink(url=receiver.url, retries=3, backoff=0.01)
        ev = evaluator(q, pq.QueueLagRule(name="lag", queue=QUEUE, above=1), sinks=(hook,))
        await q.put({"n": 1})
        clock.advance(2)
        await ev.tick()
    assert receiver.requests == 1
    (failure,) = records(caplog, "alert_sink_failed")
    assert "HTTP 400" in failure.getMessage()


async def test_a_rule_that_cannot_be_measured_stops_no_other(
    q: pq.Queue, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="persistq_async")

    async def broken_registry(queue: pq.Queue, name: str) -> int:
        raise RuntimeError("registry unreadable")

    seen = Collect()
    ev = evaluator(
        q,
        pq.NoWorkerRule(name="nobody", queue=QUEUE, for_seconds=0),
        pq.QueueLagRule(name="lag", queue=QUEUE, above=1),
        sinks=(seen,),
        live_workers=broken_registry,
    )
    await q.put({"n": 1})
    clock.advance(2)
    await ev.tick()
    assert seen.take() == [("lag", "firing")]
    (failure,) = records(caplog, "service_failed")
    assert "alert rule nobody: measuring failed: RuntimeError: registry unreadable" in (
        failure.getMessage()
    )


async def test_a_tick_cancelled_at_any_await_announces_each_transition_once(
    q: pq.Queue, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    # Cancel the evaluation after k scheduler iterations, for every k until one completes, then
    # let one run whole: the firing (then the resolution) is logged and sent exactly once, and
    # the lease and states are left consistent for the next tick.
    caplog.set_level(logging.WARNING, logger="persistq_async")
    seen = Collect()
    ev = evaluator(q, pq.QueueLagRule(name="lag", queue=QUEUE, above=1), sinks=(seen,))

    async def sweep() -> None:
        for k in range(500):
            done = anyio.Event()

            async def run(done: anyio.Event = done) -> None:
                await ev.tick()
                done.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(run)
                for _ in range(k):
                    await anyio.lowlevel.checkpoint()
                tg.cancel_scope.cancel()
            if done.is_set():
                return
        raise AssertionError("no tick completed within 500 iterations")

    await q.put({"n": 1})
    clock.advance(2)
    await sweep()
    await ev.tick()
    assert seen.take() == [("lag", "firing")]
    assert len(records(caplog, "alert_firing")) == 1
    job = await q.get_nowait()
    assert job is not None
    await job.ack()
    await sweep()
    await ev.tick()
    assert seen.take() == [("lag", "resolved")]
    assert len(records(caplog, "alert_resolved")) == 1
    assert len(records(caplog, "alert_firing")) == 1
