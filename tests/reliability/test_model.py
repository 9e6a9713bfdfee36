"""Model test: a Hypothesis state machine drives a real queue against an in-memory model.

Every example opens a fresh SQLite file and runs up to ``stateful_step_count`` operations on
it (put, put_many, claims, ack/nack/fail/extend/release, stale and repeated outcomes, cancel,
requeue, delete, clock moves, rescue, close and reopen, a second "process" that is dropped
without closing, and flow control: pause and resume, ``max_running`` and a rate limit set and
changed at any time). The model predicts the result of each call (which job a claim leases and
its attempt number; which stale call raises ``LeaseLost`` or ``JobAlreadyFinished``), and
after every step the invariants compare the whole database with the model: ``stats()``, each
job's state, attempts, lease, run_at, last_error and its history (the audit trail).

The clock is injected (``Queue(clock=...)``), so lease expiry is exact: a lease ends at
``claim time + lease_seconds``, and a lease whose end is at or before "now" is rescued by the
next claim or ``store.rescue()``; until then its holder may still ack it (documented: an ack is
refused once the lease expired *and* the job was re-taken or rescued).

``PERSISTQ_MODEL_EXAMPLES`` changes the number of examples (200 by default, as CI runs it).
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import persistq_async as pq
from persistq_async.job import to_datetime
from persistq_async.store import EXPIRED_ERROR
from tests.conftest import FakeClock

T = TypeVar("T")

# The injected clock starts at CLOCK_START; every step moves it by a multiple of 0.5 s, so the
# timestamps are exact in binary floating point and in microseconds.
LEASE = 10.0
DEFAULT_MAX_ATTEMPTS = 3
QUEUE_NAME = "model"
#: At most this many Queue objects per example (each is a writer thread and connections).
MAX_QUEUES = 5

pytestmark = pytest.mark.timeout(900)

EXAMPLES = int(os.environ.get("PERSISTQ_MODEL_EXAMPLES", "200"))

ACTIVE = ("queued", "running")
FINISHED = ("done", "dead", "cancelled")

pick = st.integers(min_value=0, max_value=1_000)
priorities = st.sampled_from([0, 0, 1, 5, -1])
delays = st.sampled_from([None, 0.0, 0.5, 5.0, 20.0])
attempt_limits = st.sampled_from([None, 1, 2, 3])
dedupe_keys = st.sampled_from([None, None, None, "a", "b"])
ticks = st.sampled_from([0.5, 2.5, 5.0, 9.5, 10.0, 10.5, 30.0])
retry_delays = st.sampled_from([None, 0.0, 0.5, 5.0, 20.0])
lease_lengths = st.sampled_from([0.5, 5.0, 10.0, 30.0])
#: Rates whose tokens per second are exact in binary, so the model's bucket is the store's.
rate_limits = st.sampled_from([None, ("1/s", 1), ("2/s", 1), ("2/s", 2), ("60/m", 3)])
caps = st.sampled_from([None, 1, 2, 3])


@dataclass
class MJob:
    """The model of one job."""

    id: int
    payload: Any
    priority: int
    max_attempts: int
    dedupe_key: str | None
    run_at: float
    enqueued_at: float
    state: str = "queued"
    attempts: int = 0
    token: str | None = None
    lease_expires: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None
    #: Ended deliveries: (attempt, outcome, token, started_at, finished_at, error).
    history: list[tuple[int, str, str, float, float, str | None]] = field(default_factory=list)
    requeued: bool = False
    deleted: bool = False

    def recorded(self, token: str, outcome: str) -> bool:
        """Whether the delivery with ``token`` ended with ``outcome`` (an attempt row says so)."""
        return not self.deleted and any(h[2] == token and h[1] == outcome for h in self.history)


@dataclass
class MFlow:
    """The model of the queue's flow-control settings and its token bucket."""

    paused: bool = False
    cap: int | None = None
    rate: tuple[str, int] | None = None  # (limit, burst)
    tokens: float = 0.0
    refilled_at: float = 0.0

    def per_second(self) -> float:
        assert self.rate is not None
        count, unit = self.rate[0].split("/")
        return int(count) / {"s": 1.0, "m": 60.0, "h": 3600.0}[unit]


@dataclass
class Slot:
    """One Queue object: a "process" of the test."""

    q: pq.Queue
    active: bool = True  # rules may use it; False once closed or dropped


@dataclass
class Delivery:
    """One Job object a claim returned."""

    job: pq.Job
    job_id: int
    token: str
    slot: Slot
    finished: str | None = None  # what Job._finished should say


OUTCOME = {"ack": "acked", "nack": "nacked", "fail": "failed"}


class Boom(Exception):
    """What a handler body raises inside ``async with job``."""


class QueueModel(RuleBasedStateMachine):
    """A real queue on a temp SQLite file, checked against :class:`MJob` records."""

    def __init__(self) -> None:
        super().__init__()
        self.runner = asyncio.Runner()
        self.tmpdir = tempfile.mkdtemp(prefix="persistq-model-")
        self.path = os.path.join(self.tmpdir, "jobs.db")
        self.clock = FakeClock()
        self.slots: list[Slot] = []
        self.jobs: dict[int, MJob] = {}
        self.deliveries: list[Delivery] = []
        self.seq = 0
        self.flow = MFlow()
        self._open_slot()

    # ------------------------------------------------------------------ helpers

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def _open_slot(self) -> Slot:
        q = pq.Queue(
            self.path,
            name=QUEUE_NAME,
            clock=self.clock,
            lease_seconds=LEASE,
            max_attempts=DEFAULT_MAX_ATTEMPTS,
            # No backoff: a nack without a delay (and ``async with job`` on an error) retries
            # at once, so the model knows run_at without the jitter's random draw.
            backoff_base=0.0,
            backoff_max=0.0,
            poll_interval=0.05,
            durability="normal",
        )
        self.run(q.__aenter__())
        slot = Slot(q)
        self.slots.append(slot)
        return slot

    def teardown(self) -> None:
        try:
            for slot in self.slots:
                self.run(slot.q.aclose())
        finally:
            self.runner.close()
            shutil.rmtree(self.tmpdir, ignore_errors=True)

    def active(self) -> list[Slot]:
        return [s for s in self.slots if s.active]

    def slot(self, i: int) -> Slot:
        active = self.active()
        return active[i % len(active)]

    def live(self, d: Delivery) -> bool:
        """Whether the database still holds this delivery's lease."""
        j = self.jobs[d.job_id]
        return not j.deleted and j.state == "running" and j.token == d.token

    def existing(self) -> list[MJob]:
        return [j for j in self.jobs.values() if not j.deleted]

    def now(self) -> float:
        return self.clock.now

    # model transitions -------------------------------------------------

    def m_end(self, j: MJob, outcome: str, error: str | None) -> None:
        assert j.token is not None
        assert j.started_at is not None
        j.history.append((j.attempts, outcome, j.token, j.started_at, self.now(), error))
        j.token = None
        j.lease_expires = None

    def m_rescue(self) -> int:
        now = self.now()
        count = 0
        for j in sorted(self.existing(), key=lambda j: j.id):
            if j.state == "running" and j.lease_expires is not None and j.lease_expires <= now:
                self.m_end(j, "expired", EXPIRED_ERROR)
                spent = j.attempts >= j.max_attempts
                j.state = "dead" if spent else "queued"
                j.finished_at = now if spent else None
                j.run_at = now
                j.last_error = EXPIRED_ERROR
                count += 1
        return count

    def m_claim(self, limit: int) -> list[MJob]:
        self.m_rescue()
        now = self.now()
        flow = self.flow
        if flow.paused:
            return []
        if flow.cap is not None:
            running = sum(1 for j in self.existing() if j.state == "running")
            limit = min(limit, max(0, flow.cap - running))
        tokens = 0.0
        if flow.rate is not None:
            gained = max(0.0, now - flow.refilled_at) * flow.per_second()
            tokens = min(float(flow.rate[1]), flow.tokens + gained)
            limit = min(limit, max(0, math.floor(tokens + 1e-3)))
        ready = [j for j in self.existing() if j.state == "queued" and j.run_at <= now]
        ready.sort(key=lambda j: (-j.priority, j.id))
        chosen = ready[:limit]
        if flow.rate is not None and chosen:
            flow.tokens = tokens - len(chosen)
            flow.refilled_at = max(flow.refilled_at, now)
        for j in chosen:
            j.state = "running"
            j.attempts += 1
            j.started_at = now
            j.lease_expires = now + LEASE
        return chosen

    def m_apply(self, j: MJob, action: str, delay: float | None, error: str | None) -> None:
        now = self.now()
        if action == "ack":
            self.m_end(j, "acked", None)
            j.state = "done"
            j.finished_at = now
        elif action == "nack":
            self.m_end(j, "nacked", error)
            spent = j.attempts >= j.max_attempts
            j.state = "dead" if spent else "queued"
            j.finished_at = now if spent else None
            j.run_at = max(now + (delay or 0.0), now)
            j.last_error = error
        elif action == "fail":
            self.m_end(j, "failed", error)
            j.state = "dead"
            j.finished_at = now
            j.last_error = error
        else:
            raise AssertionError(action)

    def m_release(self, j: MJob) -> None:
        self.m_end(j, "released", None)
        j.state = "queued"
        j.attempts -= 1

    # real calls ----------------------------------------------------------

    async def _store_outcome(
        self, slot: Slot, d: Delivery, action: str, delay: float | None
    ) -> pq.JobState | None:
        """The outcome by (job id, token) at the store; a nack returns the job's state."""
        store = slot.q.store
        if action == "ack":
            await store.ack(d.job_id, d.token, None)
        elif action == "nack":
            return await store.nack(
                d.job_id, d.token, self.now() + (delay or 0.0), f"store-nack-{d.token[:6]}"
            )
        else:
            await store.fail(d.job_id, d.token, f"store-fail-{d.token[:6]}")
        return None

    async def _object_outcome(
        self, d: Delivery, action: str, delay: float | None, error: str
    ) -> None:
        if action == "ack":
            await d.job.ack()
        elif action == "nack":
            await d.job.nack(delay=delay, error=error)
        elif action == "fail":
            await d.job.fail(error=error)
        elif action == "with-ok":
            async with d.job:
                pass
        elif action == "with-error":
            async with d.job:
                raise Boom("boom")
        else:
            raise AssertionError(action)

    def _put(
        self,
        slot: Slot,
        count: int | None,
        priority: int,
        delay: float | None,
        max_attempts: int | None,
        dedupe_key: str | None,
    ) -> None:
        payloads = []
        for _ in range(1 if count is None else count):
            self.seq += 1
            payloads.append({"n": self.seq})
        options = {
            "priority": priority,
            "delay": delay,
            "max_attempts": max_attempts,
            "dedupe_key": dedupe_key,
        }
        if count is None:
            ids = [self.run(slot.q.put(payloads[0], **options))]  # type: ignore[arg-type]
        else:
            ids = self.run(slot.q.put_many(payloads, **options))  # type: ignore[arg-type]
        assert len(ids) == len(payloads)
        now = self.now()
        for payload, job_id in zip(payloads, ids, strict=True):
            holder = None
            if dedupe_key is not None:
                holder = next(
                    (
                        j
                        for j in self.existing()
                        if j.dedupe_key == dedupe_key and j.state in ACTIVE
                    ),
                    None,
                )
            if holder is not None:
                assert job_id == holder.id, (
                    f"dedupe_key {dedupe_key!r} is held by job {holder.id}, put returned {job_id}"
                )
                continue
            assert job_id not in self.jobs, f"put returned the id {job_id} of an earlier job"
            assert all(job_id > k for k in self.jobs), f"ids must grow: {job_id} after {self.jobs}"
            self.jobs[job_id] = MJob(
                id=job_id,
                payload=payload,
                priority=priority,
                max_attempts=DEFAULT_MAX_ATTEMPTS if max_attempts is None else max_attempts,
                dedupe_key=dedupe_key,
                run_at=now if delay is None else max(now + delay, now),
                enqueued_at=now,
            )

    # ------------------------------------------------------------------ rules: producers

    @initialize(count=st.integers(0, 4))
    def some_jobs(self, count: int) -> None:
        self._put(self.active()[0], count, 0, None, None, None)

    @rule(
        qi=pick,
        count=st.sampled_from([None, None, 0, 1, 2, 3]),
        priority=priorities,
        delay=delays,
        max_attempts=attempt_limits,
        dedupe_key=dedupe_keys,
    )
    def put(
        self,
        qi: int,
        count: int | None,
        priority: int,
        delay: float | None,
        max_attempts: int | None,
        dedupe_key: str | None,
    ) -> None:
        """put (count None) or put_many (a list of ``count`` payloads)."""
        self._put(self.slot(qi), count, priority, delay, max_attempts, dedupe_key)

    # ------------------------------------------------------------------ rules: consumers

    def _claim(self, slot: Slot, limit: int | None, *, wait: bool = False) -> None:
        rescued = self.m_rescue()
        expected = self.m_claim(1 if limit is None else limit)
        event(f"claim: {len(expected)} leased, {rescued} rescued first")
        if wait:
            try:
                got = [self.run(slot.q.get(timeout=0))]
            except TimeoutError:
                got = []
        elif limit is None:
            job = self.run(slot.q.get_nowait())
            got = [] if job is None else [job]
        else:
            got, _ = self.run(slot.q.claim(limit))
        assert [j.id for j in got] == [j.id for j in expected], (
            f"claim leased {[j.id for j in got]}, the model expected {[j.id for j in expected]}"
        )
        if got and self.flow.cap is not None:
            # A claim never takes the running count past the cap (a cap lowered below what was
            # running already is only exceeded until those jobs end).
            running = sum(1 for j in self.existing() if j.state == "running")
            assert running <= self.flow.cap, (running, self.flow.cap)
        assert not (got and self.flow.paused)
        # One claim statement leases its jobs under one token; the fence is (job id, token).
        for job, m in zip(got, expected, strict=True):
            assert job.attempts == m.attempts, (job, m.attempts)
            assert job.max_attempts == m.max_attempts
            assert job.priority == m.priority
            assert job.payload == m.payload
            assert job.queue == QUEUE_NAME
            assert job.lease_expires_at == to_datetime(m.lease_expires)
            assert job.enqueued_at == to_datetime(m.enqueued_at)
            assert 1 <= job.attempts <= job.max_attempts
            m.token = job.lease_token
            self.deliveries.append(Delivery(job, job.id, job.lease_token, slot))

    @rule(
        qi=pick,
        kind=st.sampled_from(["get_nowait", "get_nowait", "get", "claim", "other queue"]),
        limit=st.integers(1, 3),
    )
    def claim(self, qi: int, kind: str, limit: int) -> None:
        """get_nowait(); get(timeout=0) (TimeoutError when nothing is ready); claim(limit); or
        a claim on another queue of the database, which rescues this queue's expired leases."""
        self._claim_kind(qi, kind, limit)

    # Claims drive everything else (leases to ack, expire, fence); a second rule doubles their
    # share of the steps, as Hypothesis picks among the enabled rules uniformly.
    @rule(qi=pick, kind=st.sampled_from(["get_nowait", "claim"]), limit=st.integers(1, 3))
    def claim_more(self, qi: int, kind: str, limit: int) -> None:
        self._claim_kind(qi, kind, limit)

    def _claim_kind(self, qi: int, kind: str, limit: int) -> None:
        slot = self.slot(qi)
        if kind == "other queue":
            expected = self.m_rescue()
            event(f"claim other queue: {expected} rescued")
            result = self.run(slot.q.store.claim("other", 1, LEASE))
            assert result.records == []
        elif kind == "claim":
            self._claim(slot, limit)
        else:
            self._claim(slot, None, wait=kind == "get")

    def _open_deliveries(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.finished is None]

    @precondition(lambda self: any(d.finished is None for d in self.deliveries))
    @rule(
        di=pick,
        how=st.sampled_from(["ack", "nack", "fail", "with-ok", "with-error"]),
        delay=retry_delays,
    )
    def finish(self, di: int, how: str, delay: float | None) -> None:
        """ack/nack/fail (or leave ``async with job``) through the Job object: on a live lease,
        a stale one (rescued, re-taken, cancelled, deleted), or a closed queue's."""
        candidates = self._open_deliveries()
        d = candidates[di % len(candidates)]
        j = self.jobs[d.job_id]
        error = f"{how}-{d.token[:6]}"
        action = {"with-ok": "ack", "with-error": "nack"}.get(how, how)
        if how == "with-ok":
            delay = None
        elif how == "with-error":
            delay, error = None, "Boom: boom"
        coro = self._object_outcome(d, how, delay, error)
        raised: type[BaseException] | None = Boom if how == "with-error" else None
        if d.slot.q.closed:
            event(f"finish: QueueClosed ({how})")
            with pytest.raises(pq.QueueClosed):
                self.run(coro)
            return
        if self.live(d):
            event(f"finish: applied ({how}, attempt {j.attempts}/{j.max_attempts})")
            self.m_apply(j, action, delay, error)
            d.finished = OUTCOME[action]
        elif j.recorded(d.token, OUTCOME[action]):
            # The same outcome was applied already (by a store-level retry): a no-op.
            event(f"finish: already applied ({how})")
            d.finished = OUTCOME[action]
        else:
            event(f"finish: LeaseLost ({how})")
            raised = pq.LeaseLost
        if raised is None:
            self.run(coro)
        else:
            with pytest.raises(raised):
                self.run(coro)
        assert d.job.finished == (d.finished is not None)

    @precondition(lambda self: any(d.finished is None for d in self.deliveries))
    @rule(di=pick, seconds=lease_lengths)
    def extend(self, di: int, seconds: float) -> None:
        candidates = self._open_deliveries()
        d = candidates[di % len(candidates)]
        coro = d.job.extend(seconds)
        if d.slot.q.closed:
            event("extend: QueueClosed")
            with pytest.raises(pq.QueueClosed):
                self.run(coro)
        elif self.live(d):
            j = self.jobs[d.job_id]
            assert j.lease_expires is not None
            event(f"extend: applied ({'expired' if j.lease_expires <= self.now() else 'valid'})")
            self.run(coro)
            j.lease_expires = self.now() + seconds
            assert d.job.lease_expires_at == to_datetime(j.lease_expires)
        else:
            event("extend: LeaseLost")
            with pytest.raises(pq.LeaseLost):
                self.run(coro)

    @precondition(lambda self: len(self.deliveries) > 0)
    @rule(di=pick)
    def release(self, di: int) -> None:
        """Hand a lease back (no attempt counted); idempotent on a finished or lost delivery."""
        d = self.deliveries[di % len(self.deliveries)]
        coro = d.job.release()
        if d.finished is not None:
            self.run(coro)
        elif d.slot.q.closed:
            with pytest.raises(pq.QueueClosed):
                self.run(coro)
        else:
            if self.live(d):
                self.m_release(self.jobs[d.job_id])
            self.run(coro)
            d.finished = "released"
        assert d.job.finished == (d.finished is not None)

    @precondition(lambda self: any(d.finished is not None for d in self.deliveries))
    @rule(
        di=pick,
        action=st.sampled_from(["ack", "nack", "fail", "extend", "with-ok", "with-error"]),
    )
    def act_twice(self, di: int, action: str) -> None:
        """A second act on one delivery: JobAlreadyFinished, whatever the database says."""
        candidates = [d for d in self.deliveries if d.finished is not None]
        d = candidates[di % len(candidates)]
        event(f"act twice: {action} after {d.finished}")
        if action == "extend":
            coro: Coroutine[Any, Any, None] = d.job.extend(5.0)
        else:
            coro = self._object_outcome(d, action, 1.0, "twice")
        if action == "with-ok" or action == "with-error":
            # ``async with`` on a finished delivery leaves it alone; the body's error goes on.
            if action == "with-error":
                with pytest.raises(Boom):
                    self.run(coro)
            else:
                self.run(coro)
            return
        with pytest.raises(pq.JobAlreadyFinished):
            self.run(coro)

    @precondition(lambda self: len(self.deliveries) > 0)
    @rule(
        di=pick,
        qi=pick,
        action=st.sampled_from(["ack", "nack", "fail"]),
        delay=retry_delays,
    )
    def store_outcome(self, di: int, qi: int, action: str, delay: float | None) -> None:
        """An outcome by lease token through another Queue's store: a retried call (after a
        cancellation), or a lease held by a closed or crashed process acted on by token."""
        d = self.deliveries[di % len(self.deliveries)]
        slot = self.slot(qi)
        j = self.jobs[d.job_id]
        coro = self._store_outcome(slot, d, action, delay)
        if self.live(d) or j.recorded(d.token, OUTCOME[action]):
            if self.live(d):
                event(f"store outcome: applied ({action})")
                error = None if action == "ack" else f"store-{action}-{d.token[:6]}"
                self.m_apply(j, action, delay, error)
            else:
                event(f"store outcome: retried, no-op ({action})")
            state = self.run(coro)  # a retry of an applied outcome is a no-op
            if action == "nack":
                assert state == j.state, (f"job {j.id}", state, j.state)
        else:
            event(f"store outcome: LeaseLost ({action})")
            with pytest.raises(pq.LeaseLost):
                self.run(coro)

    # ------------------------------------------------------------------ rules: flow control

    @rule(
        qi=pick,
        op=st.sampled_from(["pause", "resume", "resume", "cap", "rate"]),
        cap=caps,
        rate=rate_limits,
    )
    def flow_control(self, qi: int, op: str, cap: int | None, rate: tuple[str, int] | None) -> None:
        """Pause, resume, set or clear max_running or the rate limit, through any queue object."""
        q = self.slot(qi).q
        flow = self.flow
        event(f"flow: {op}")
        if op == "pause":
            self.run(q.pause())
            flow.paused = True
        elif op == "resume":
            self.run(q.resume())
            flow.paused = False
        elif op == "cap":
            self.run(q.set_max_running(cap))
            flow.cap = cap
        elif rate is None:
            self.run(q.set_rate_limit(None))
            flow.rate = None
        else:
            self.run(q.set_rate_limit(rate[0], burst=rate[1]))
            if flow.rate != rate:  # a new limit starts with a full bucket; the same one keeps it
                flow.rate = rate
                flow.tokens = float(rate[1])
                flow.refilled_at = self.now()

    # ------------------------------------------------------------------ rules: operations

    @precondition(lambda self: len(self.jobs) > 0)
    @rule(
        op=st.sampled_from(["cancel", "cancel", "requeue", "requeue", "delete", "purge", "list"]),
        ji=pick,
        qi=pick,
        state=st.sampled_from(ACTIVE + FINISHED),
        limit=st.integers(1, 4),
    )
    def operate(self, op: str, ji: int, qi: int, state: str, limit: int) -> None:
        """The CRUD operations: cancel, requeue, delete, purge(state), list_jobs(state)."""
        if op == "purge":
            self._purge(qi, state)
        elif op == "list":
            self._list_by_state(qi, state, limit)
        else:
            getattr(self, f"_{op}")(ji, qi)

    def _cancel(self, ji: int, qi: int) -> None:
        j = list(self.jobs.values())[ji % len(self.jobs)]
        coro = self.slot(qi).q.cancel(j.id)
        if j.deleted:
            with pytest.raises(pq.JobNotFound):
                self.run(coro)
            return
        expected = j.state in ACTIVE
        if j.state == "running":
            self.m_end(j, "cancelled", "cancelled")
        if expected:
            j.state = "cancelled"
            j.finished_at = self.now()
        assert self.run(coro) is expected

    def _requeue(self, ji: int, qi: int) -> None:
        j = list(self.jobs.values())[ji % len(self.jobs)]
        coro = self.slot(qi).q.requeue(j.id)
        if j.deleted:
            with pytest.raises(pq.JobNotFound):
                self.run(coro)
            return
        conflict = j.dedupe_key is not None and any(
            o.id != j.id and o.dedupe_key == j.dedupe_key and o.state in ACTIVE
            for o in self.existing()
        )
        if j.state in ACTIVE or conflict:
            with pytest.raises(pq.JobStateError):
                self.run(coro)
            return
        self.run(coro)
        now = self.now()
        j.state = "queued"
        j.attempts = 0
        j.run_at = now
        j.enqueued_at = now
        j.finished_at = None
        j.requeued = True

    def _delete(self, ji: int, qi: int) -> None:
        j = list(self.jobs.values())[ji % len(self.jobs)]
        coro = self.slot(qi).q.delete(j.id)
        if j.deleted:
            with pytest.raises(pq.JobNotFound):
                self.run(coro)
            return
        self.run(coro)
        j.deleted = True

    def _purge(self, qi: int, state: str) -> None:
        doomed = [j for j in self.existing() if j.state == state]
        event(f"purge {state}: {len(doomed)}")
        assert self.run(self.slot(qi).q.purge(state)) == len(doomed)
        for j in doomed:
            j.deleted = True

    def _list_by_state(self, qi: int, state: str, limit: int) -> None:
        want = sorted(j.id for j in self.existing() if j.state == state)
        got = self.run(self.slot(qi).q.list_jobs(state=state, limit=limit))
        assert [i.id for i in got] == want[:limit]
        rest = self.run(self.slot(qi).q.list_jobs(state=state, limit=100, offset=limit))
        assert [i.id for i in rest] == want[limit:]

    @rule(
        dt=ticks,
        to=st.sampled_from(["tick", "tick", "next lease end", "just before the next lease end"]),
        then=st.sampled_from(["nothing", "rescue", "claim"]),
        qi=pick,
    )
    def advance_clock(self, dt: float, to: str, then: str, qi: int) -> None:
        """Move the clock by ``dt``, or exactly to (or 0.5 s before) the earliest lease end, the
        boundary where a lease becomes rescuable; then maybe rescue, or claim (rescues first)."""
        ends = [j.lease_expires for j in self.existing() if j.lease_expires is not None]
        if to != "tick" and ends:
            target = min(ends) - (0.5 if to.startswith("just before") else 0.0)
            dt = max(0.0, target - self.now())
        event(f"advance clock: {to if ends else 'tick'}")
        self.clock.now += dt
        if then == "rescue":
            self.rescue(qi)
        elif then == "claim":
            self._claim(self.slot(qi), None)

    @rule(qi=pick)
    def rescue(self, qi: int) -> None:
        """``store.rescue()``: expired leases back to queued, or dead when attempts are spent."""
        expected = self.m_rescue()
        event(f"rescue: {expected}")
        assert self.run(self.slot(qi).q.store.rescue()) == expected

    # ------------------------------------------------------------------ rules: processes

    @precondition(lambda self: len(self.slots) < MAX_QUEUES)
    @rule(op=st.sampled_from(["close and reopen", "open another", "drop"]), qi=pick)
    def process(self, op: str, qi: int) -> None:
        """Queue objects come and go like processes."""
        if op == "close and reopen":
            self._close_and_reopen(qi)
        elif op == "open another":
            self._open_another()
        elif len(self.active()) >= 2:
            self._drop_without_closing(qi)
        else:
            self._open_another()

    def _close_and_reopen(self, qi: int) -> None:
        """Close a queue without finishing its leases ("crash"); open another if none is left.

        The leases stay valid in the database until they expire; the old Job objects raise
        QueueClosed.
        """
        slot = self.slot(qi)
        self.run(slot.q.aclose())
        slot.active = False
        if not self.active():
            self._open_slot()

    def _open_another(self) -> None:
        """A second process on the same file."""
        self._open_slot()

    def _drop_without_closing(self, qi: int) -> None:
        """Abandon a queue without closing it (a process that hangs): no more calls go through
        it, but its Job objects may still act later, like a zombie resuming (closed at teardown)."""
        self.slot(qi).active = False

    # ------------------------------------------------------------------ invariants

    @invariant()
    def matches_model(self) -> None:
        q = self.active()[0].q
        stats = self.run(q.stats())
        existing = self.existing()
        counts = {s: sum(1 for j in existing if j.state == s) for s in ACTIVE + FINISHED}
        assert (stats.queued, stats.running, stats.done, stats.dead, stats.cancelled) == (
            counts["queued"],
            counts["running"],
            counts["done"],
            counts["dead"],
            counts["cancelled"],
        ), (stats, counts)
        # Flow control, as stats report it; and the cap holds.
        flow = self.flow
        assert stats.paused == flow.paused
        assert stats.max_running == flow.cap
        assert stats.rate_limit == (None if flow.rate is None else flow.rate[0])

        infos = self.run(q.list_jobs(limit=10_000))
        assert [i.id for i in infos] == sorted(j.id for j in existing)
        records = {r.id: r for r, _ in self.run(q.store.list_jobs(QUEUE_NAME, None, 10_000, 0))}
        for info in infos:
            m = self.jobs[info.id]
            where = f"job {m.id}"
            assert info.state == m.state, (where, info.state, m.state)
            assert info.attempts == m.attempts, (where, info.attempts, m.attempts)
            assert info.max_attempts == m.max_attempts
            assert info.priority == m.priority
            assert info.payload == m.payload
            assert info.run_at == to_datetime(m.run_at), (where, info.run_at, m.run_at)
            assert info.enqueued_at == to_datetime(m.enqueued_at)
            assert info.finished_at == to_datetime(m.finished_at), (where, info.finished_at)
            assert info.last_error == m.last_error, (where, info.last_error, m.last_error)
            assert info.lease_expires_at == to_datetime(m.lease_expires), (where, info)
            assert info.dedupe_key == m.dedupe_key
            # At-least-once bound and fencing: one lease, the one the model says is valid.
            assert 0 <= info.attempts <= info.max_attempts, where
            assert records[m.id].lease_token == m.token, where
            assert (info.state == "running") == (records[m.id].lease_token is not None), where
            # The audit trail, exactly.
            got = [
                (a.attempt, a.outcome, a.started_at, a.finished_at, a.error) for a in info.history
            ]
            want: list[tuple[Any, ...]] = [
                (h[0], h[1], to_datetime(h[3]), to_datetime(h[4]), h[5]) for h in m.history
            ]
            if m.state == "running":
                want.append((m.attempts, None, to_datetime(m.started_at), None, None))
            assert got == want, (where, got, want)
            # The same, as generic properties of any history.
            numbers = [a.attempt for a in info.history]
            if not m.requeued:
                assert numbers == sorted(numbers), (where, numbers)
            assert all(n <= info.max_attempts for n in numbers), (where, numbers)
            ended = [a.outcome for a in info.history if a.outcome is not None]
            if info.state == "done":
                assert ended[-1:] == ["acked"], (where, ended)
            elif info.state == "dead":
                assert ended[-1:] in (["nacked"], ["failed"], ["expired"]), (where, ended)
            elif info.state == "running":
                assert info.history[-1].outcome is None, where
                assert info.history[-1].attempt == info.attempts, where
            elif info.state == "queued" and ended and not m.requeued:
                assert ended[-1] in ("nacked", "expired", "released"), (where, ended)
        # No job has two valid leases: at most one live delivery per job, and it is the DB's.
        live: dict[int, str] = {}
        for d in self.deliveries:
            if self.live(d):
                assert d.job_id not in live, f"job {d.job_id} has two valid leases"
                live[d.job_id] = d.token
        # And the model's fields agree with the dataclass the public API returns.
        if infos:
            first = self.run(q.job(infos[0].id))
            assert first == infos[0]


QueueModel.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # A step costs milliseconds of real I/O: skip the (traced, slow) explain phase and shrink
    # the first failure only, so a failing run reports within the timeout.
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    report_multiple_bugs=False,
)
TestQueueModel = QueueModel.TestCase
