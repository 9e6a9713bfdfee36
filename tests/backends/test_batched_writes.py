"""Writes that one writer batch runs as one statement: acks (one update per distinct result,
one insert of attempt rows), the lease check before them, and puts with and without dedupe keys.

Each test has a database of its own: they leave leases and finished jobs stamped with the fake
clock, which the rescues and cleans of other tests (every queue of a database) would meet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection

import persistq_async as pq
from persistq_async.backends.prepared import MAX_IN
from persistq_async.schema import attempts, jobs
from persistq_async.store import acks
from persistq_async.store import statements as st
from persistq_async.store import transactions as tx
from persistq_async.store.records import Delivery
from persistq_async.testing import read_connection, run_write
from tests.conftest import FakeClock, private_pg_database


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def own_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for this test alone."""
    if request.param == "sqlite":
        yield str(tmp_path / "batched.db")
        return
    with private_pg_database("persistq_batched") as url:
        yield url


@pytest.fixture
def is_sqlite(own_url: str) -> bool:
    """Whether this test runs on SQLite."""
    return not own_url.startswith("postgresql")


@pytest.fixture
async def cq(own_url: str, clock: FakeClock) -> AsyncIterator[pq.Queue]:
    """An open queue of the test's own database, driven by ``clock``, with 10 s leases."""
    async with pq.Queue(
        own_url, name="batched", clock=clock, poll_interval=0.05, lease_seconds=10
    ) as q:
        yield q


@pytest.fixture
def ack_batches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the ack batches written together (the real function runs)."""
    sizes: list[int] = []
    real = acks.write_acks

    def counted(
        conn: Connection, where: str, given: Sequence[tuple[Delivery, bytes | None]], now: float
    ) -> None:
        sizes.append(len(given))
        real(conn, where, given, now)

    monkeypatch.setattr(tx, "write_acks", counted)
    return sizes


async def _ack_all(jobs_: Sequence[pq.Job], results: Sequence[Any]) -> dict[int, BaseException]:
    errors: dict[int, BaseException] = {}

    async def ack(job: pq.Job, result: Any) -> None:
        try:
            await job.ack(result)
        except pq.PersistQError as exc:
            errors[job.id] = exc

    async with anyio.create_task_group() as tg:
        for job, result in zip(jobs_, results, strict=True):
            tg.start_soon(ack, job, result)
    return errors


async def test_acks_of_one_batch_keep_each_result_and_attempt(
    cq: pq.Queue, ack_batches: list[int], is_sqlite: bool
) -> None:
    await cq.put_many(list(range(40)))
    taken, _ = await cq.claim(40)
    assert len(taken) == 40
    # None for most (one update), a shared result for some (another), distinct ones for a few.
    results: list[Any] = [None] * 20 + ["same"] * 12 + [{"n": n} for n in range(8)]
    assert await _ack_all(taken, results) == {}
    if is_sqlite:
        # They met in the writer's batches (a lone first one goes at once; PostgreSQL acks
        # natively, not through this path).
        assert max(ack_batches) > 1
    for job, result in zip(taken, results, strict=True):
        info = await cq.job(job.id)
        assert info is not None
        assert (info.state, info.result) == (pq.JobState.DONE, result)
        assert info.finished_at is not None
        assert [(a.attempt, a.outcome) for a in info.history] == [(1, "acked")]
    assert await cq.get_nowait() is None


async def test_one_lost_lease_in_a_batch_fails_alone(cq: pq.Queue, clock: FakeClock) -> None:
    await cq.put("lost")
    stale = await cq.get_nowait()
    assert stale is not None
    clock.advance(11)  # its lease expires: the next claim rescues and re-leases it
    await cq.put_many(list(range(6)))
    fresh, _ = await cq.claim(7)
    assert len(fresh) == 7
    assert fresh[0].id == stale.id
    others = fresh[1:]
    errors = await _ack_all([stale, *others], [None] * 7)
    assert set(errors) == {stale.id}
    assert isinstance(errors[stale.id], pq.LeaseLost)
    for job in others:
        info = await cq.job(job.id)
        assert info is not None
        assert info.state is pq.JobState.DONE
        assert [a.outcome for a in info.history] == ["acked"]
    # The stale delivery wrote nothing: its job still runs under its current holder.
    info = await cq.job(stale.id)
    assert info is not None
    assert info.state is pq.JobState.RUNNING
    assert [a.outcome for a in info.history] == ["expired", None]
    await fresh[0].ack()
    info = await cq.job(stale.id)
    assert info is not None
    assert info.state is pq.JobState.DONE


async def test_more_acks_than_one_statement_takes(cq: pq.Queue, clock: FakeClock) -> None:
    count = MAX_IN + 40
    await cq.put_many(list(range(count)))
    taken, _ = await cq.claim(count)
    assert len(taken) == count
    now = clock()
    given = [
        (
            Delivery(
                job_id=job.id,
                token=job.lease_token,
                queue=job.queue,
                attempt=job.attempts,
                started_at=now - 1,
                ready_at=now - 2,
            ),
            None if n % 3 else b'"r"',
        )
        for n, job in enumerate(taken)
    ]
    ids = [job.id for job in taken]

    def write(conn: Connection) -> dict[int, str | None]:
        leased = acks.leases(conn, [*ids, -1])  # an id that names no job
        acks.write_acks(conn, "test", given, now)
        return leased

    leased = await run_write(cq, write, kind="ack")
    assert leased == {job.id: job.lease_token for job in taken}
    async with read_connection(cq) as conn:
        rows = (
            await conn.execute(
                select(jobs.c.id, jobs.c.state, jobs.c.result, jobs.c.lease_token).where(
                    jobs.c.id.in_(ids)
                )
            )
        ).all()
        written = (
            await conn.execute(
                select(attempts.c.job_id, attempts.c.outcome, attempts.c.ready_at).where(
                    attempts.c.job_id.in_(ids)
                )
            )
        ).all()
    expected = {job.id: (None if n % 3 else b'"r"') for n, job in enumerate(taken)}
    assert {r.id: (r.state, bytes(r.result) if r.result else None) for r in rows} == {
        job_id: ("done", result) for job_id, result in expected.items()
    }
    assert all(r.lease_token is None for r in rows)
    assert sorted(r.job_id for r in written) == sorted(ids)
    assert {(r.outcome, r.ready_at) for r in written} == {("acked", now - 2)}


async def test_the_ack_update_is_fenced_by_each_token(cq: pq.Queue) -> None:
    # The batch checks the leases first; the update still matches each id with its own token,
    # so a delivery whose token is not its job's own is not applied, and the batch fails.
    await cq.put_many([1, 2])
    taken, _ = await cq.claim(1)
    other, _ = await cq.claim(1)
    assert len(taken) == len(other) == 1
    crossed = [
        (
            Delivery(
                job_id=taken[0].id,
                token=other[0].lease_token,  # another delivery's token
                queue=cq.name,
                attempt=1,
                started_at=0.0,
            ),
            None,
        ),
        (
            Delivery(
                job_id=other[0].id,
                token=other[0].lease_token,
                queue=cq.name,
                attempt=1,
                started_at=0.0,
            ),
            None,
        ),
    ]

    def write(conn: Connection) -> str:
        with pytest.raises(pq.DatabaseError, match="1 of 2 acks applied") as raised:
            acks.write_acks(conn, "test", crossed, 0.0)
        return str(raised.value)

    # (The writer rolls a batch back when its acks fail so; this test's own write commits.)
    await run_write(cq, write, kind="ack")
    info = await cq.job(taken[0].id)
    assert info is not None
    assert info.state is pq.JobState.RUNNING  # the crossed token did not apply
    await taken[0].ack()
    info = await cq.job(taken[0].id)
    assert info is not None
    assert info.state is pq.JobState.DONE


@pytest.mark.parametrize("length", [1, 2, 3, 7, 8, 9, 16, 17, MAX_IN])
async def test_an_in_list_of_any_length(cq: pq.Queue, length: int) -> None:
    await cq.put_many(list(range(length)))
    taken, _ = await cq.claim(length)
    ids = [job.id for job in taken]
    found = await run_write(cq, lambda conn: st.LEASES_P.rows_in(conn, ids), kind="ack")
    assert sorted(found) == sorted((job.id, job.lease_token) for job in taken)


async def test_an_in_list_must_have_one_to_max_in_values(cq: pq.Queue) -> None:
    def check(conn: Connection) -> None:
        for values in ([], list(range(MAX_IN + 1))):
            with pytest.raises(ValueError, match="1 to"):
                st.LEASES_P.rows_in(conn, values)
        with pytest.raises(ValueError, match="expanding"):
            st.JOB_STATE_P.rows_in(conn, [1])

    await run_write(cq, check, kind="ack")


async def test_puts_with_and_without_dedupe_keys_in_one_batch(cq: pq.Queue) -> None:
    holder = await cq.put("holder", dedupe_key="held")
    got: dict[str, int] = {}

    async def put(label: str, key: str | None) -> None:
        got[label] = await cq.put(label, dedupe_key=key)

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(put, f"plain{n}", None)
        for n in range(5):
            tg.start_soon(put, f"keyed{n}", f"k{n}")
        tg.start_soon(put, "twin-a", "twin")
        tg.start_soon(put, "twin-b", "twin")
        tg.start_soon(put, "late", "held")
    assert got["late"] == holder
    assert got["twin-a"] == got["twin-b"]
    new = [got[f"plain{n}"] for n in range(10)] + [got[f"keyed{n}"] for n in range(5)]
    new.append(got["twin-a"])
    assert len(set(new)) == 16
    assert holder not in new
    for label, job_id in got.items():
        info = await cq.job(job_id)
        assert info is not None
        if label == "late":
            assert info.payload == "holder"
        elif label.startswith("twin"):
            assert info.payload in ("twin-a", "twin-b")
        else:
            assert info.payload == label
    assert (await cq.stats()).queued == 17


async def test_a_put_many_larger_than_one_statement(cq: pq.Queue) -> None:
    count = 4500  # over SQLite's 2,000 rows a statement: three statements, one transaction
    ids = await cq.put_many([{"n": n} for n in range(count)])
    assert len(ids) == len(set(ids)) == count
    assert ids == sorted(ids)
    taken, _ = await cq.claim(count)
    assert [job.id for job in taken] == ids  # FIFO: the order of the put
    assert [job.payload for job in taken] == [{"n": n} for n in range(count)]


def test_the_claim_builds_every_field_of_a_record() -> None:
    # record_maker unpacks a claimed row field by field; a field added to JobRecord must be
    # added there too.
    from dataclasses import fields

    from persistq_async.schema import jobs as table
    from persistq_async.store.records import JobRecord, record_maker

    columns = tuple(c.key for c in table.c)
    given: dict[str, object] = {name: f"v-{name}" for name in columns}
    # PostgreSQL's driver may hand binary columns over as memoryview; the record holds bytes.
    given.update(state="queued", payload=memoryview(b"v-payload"), result=b"v-result")
    row = tuple(given[name] for name in columns)
    record = record_maker(columns)(row)
    for field in fields(JobRecord):
        value = getattr(record, field.name)
        if field.name == "state":
            assert value is pq.JobState.QUEUED
        elif field.name in ("payload", "result"):
            assert value == f"v-{field.name}".encode()
        else:
            assert value == f"v-{field.name}"
