"""Keyset pages, every-queue listing, a job by id in any queue, batched requeue and purge, and
opening without creating: on each backend, each test on a database of its own (the listings
cover every queue of the database)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import persistq_async as pq
from persistq_async._admin import BULK_BATCH
from tests.conftest import open_queue, private_pg_database

from .conftest import FakeClock


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database for this test alone."""
    if request.param == "sqlite":
        yield str(tmp_path / "admin.db")
        return
    with private_pg_database("persistq_admin") as url:
        yield url


async def _dead(q: pq.Queue, count: int) -> list[int]:
    """Put ``count`` jobs in ``q`` and fail each: they end dead."""
    ids = await q.put_many(range(count), max_attempts=1)
    for _ in ids:
        job = await q.get_nowait()
        assert job is not None
        await job.fail(error="boom")
    return ids


async def test_keyset_pages_walk_every_queue_in_id_order(fresh_url: str) -> None:
    async with open_queue(fresh_url, "a") as a:
        b = a.sibling("b")
        ids = []
        for i in range(5):  # interleaved across the two queues
            ids += await a.put_many([i])
            ids += await b.put_many([i])
        assert await a.queue_names() == ["a", "b"]

        pages, after = [], None
        while True:
            page = await a.list_jobs(limit=3, every_queue=True, after_id=after)
            if not page:
                break
            pages.append([i.id for i in page])
            after = page[-1].id
        assert [i for p in pages for i in p] == ids
        assert [len(p) for p in pages] == [3, 3, 3, 1]

        # One queue; one state of every queue; one queue in one state; and backwards.
        assert [i.id for i in await a.list_jobs(limit=100)] == ids[0::2]
        assert [i.id for i in await b.list_jobs(limit=2, after_id=ids[1])] == ids[3:6:2]
        back = await a.list_jobs(limit=3, every_queue=True, before_id=ids[-1])
        assert [i.id for i in back] == ids[-4:-1]
        assert [i.queue for i in back] == ["a", "b", "a"]


async def test_a_state_across_queues_and_a_queue_across_states(fresh_url: str) -> None:
    async with open_queue(fresh_url, "a") as a:
        b = a.sibling("b")
        dead_a = await _dead(a, 2)
        dead_b = await _dead(b, 2)
        queued_b = await b.put_many(["x", "y"])
        queued_a = await a.put_many(["z"])

        dead = await a.list_jobs(state="dead", every_queue=True)
        assert [i.id for i in dead] == sorted(dead_a + dead_b)
        assert {i.queue for i in dead} == {"a", "b"}
        assert all(i.history and i.history[-1].outcome == "failed" for i in dead)
        page = await a.list_jobs(state="dead", every_queue=True, limit=2, after_id=dead_a[1])
        assert [i.id for i in page] == dead_b
        # Queue b in every state, paged: its dead jobs come first (smaller ids).
        assert [i.id for i in await b.list_jobs(limit=3)] == [*dead_b, queued_b[0]]
        assert [i.id for i in await a.list_jobs(limit=5, before_id=queued_a[0])] == dead_a


async def test_a_job_is_found_by_id_in_any_queue(fresh_url: str) -> None:
    async with open_queue(fresh_url, "a") as a:
        (job_id,) = await a.sibling("mail").put_many([{"to": "x"}])
        info = await a.find_job(job_id)
        assert info is not None
        assert (info.queue, info.payload) == ("mail", {"to": "x"})
        assert await a.job(job_id) is None  # Queue.job stays within its queue
        assert await a.find_job(job_id + 1000) is None


async def test_list_jobs_refuses_mixed_paging(fresh_url: str) -> None:
    async with open_queue(fresh_url, "a") as a:
        with pytest.raises(pq.ArgumentError, match="after_id and before_id"):
            await a.list_jobs(after_id=1, before_id=5)
        with pytest.raises(pq.ArgumentError, match="offset"):
            await a.list_jobs(offset=2, after_id=1)
        with pytest.raises(pq.ArgumentError, match="offset"):
            await a.list_jobs(offset=2, every_queue=True)


async def test_requeue_many_works_in_batches_and_leaves_other_queues(fresh_url: str) -> None:
    async with open_queue(fresh_url, "a") as a:
        other = a.sibling("other")
        count = BULK_BATCH * 2 + 7
        await a.put_many(range(count), max_attempts=1)
        jobs, _ = await a.claim(count)
        for job in jobs:
            await job.fail(error="boom")
        await _dead(other, 3)
        progress: list[tuple[int, int]] = []
        requeued = await a.requeue_many("dead", on_progress=lambda d, t: progress.append((d, t)))
        assert requeued == count
        assert progress == [(BULK_BATCH, count), (2 * BULK_BATCH, count), (count, count)]
        stats = await a.stats()
        assert (stats.queued, stats.dead) == (count, 0)
        assert (await other.stats()).dead == 3
        info = await a.job(jobs[0].id)
        assert info is not None
        assert info.attempts == 0
        assert [h.outcome for h in info.history] == ["failed"]  # history kept
        with pytest.raises(pq.ArgumentError, match="only done, dead or cancelled"):
            await a.requeue_many("queued")


async def test_requeue_many_skips_a_job_whose_dedupe_key_is_taken(fresh_url: str) -> None:
    async with open_queue(fresh_url, "a") as a:
        first = await a.put("one", dedupe_key="k", max_attempts=1)
        job = await a.get_nowait()
        assert job is not None
        await job.fail(error="boom")
        free = (await _dead(a, 1))[0]
        holder = await a.put("two", dedupe_key="k")  # the key is active again
        assert await a.requeue_many("dead") == 1
        states = {i.id: i.state for i in await a.list_jobs()}
        assert states == {first: "dead", free: "queued", holder: "queued"}


async def test_purge_older_than_deletes_only_old_jobs_in_batches(fresh_url: str) -> None:
    clock = FakeClock()
    async with open_queue(fresh_url, "a", clock=clock) as a:
        await a.put_many(range(BULK_BATCH + 3))
        jobs, _ = await a.claim(BULK_BATCH + 3)
        for job in jobs:
            await job.ack()
        clock.advance(8 * 86400)
        young = await a.put("young")
        job = await a.get_nowait()
        assert job is not None
        assert job.id == young
        await job.ack()
        calls: list[tuple[int, int]] = []
        deleted = await a.purge(
            "done", older_than=7 * 86400, on_progress=lambda d, t: calls.append((d, t))
        )
        assert deleted == BULK_BATCH + 3
        assert calls == [(BULK_BATCH, BULK_BATCH + 3), (BULK_BATCH + 3, BULK_BATCH + 3)]
        assert [i.id for i in await a.list_jobs(state="done")] == [young]
        assert await a.purge("done") == 1
        with pytest.raises(pq.ArgumentError, match="older_than"):
            await a.purge("done", older_than=-1)


async def test_a_sibling_shares_the_store_and_closing_it_leaves_the_queue_open(
    fresh_url: str,
) -> None:
    async with open_queue(fresh_url, "a") as a:
        b = a.sibling("b")
        assert b.store is a.store
        await b.put("x")
        await b.aclose()
        assert not a.closed
        assert (await a.sibling("b").stats()).queued == 1
    with pytest.raises(pq.QueueClosed):
        a.sibling("c")


async def test_create_false_refuses_a_missing_sqlite_file_and_creates_nothing(
    tmp_path: Path,
) -> None:
    for path in (tmp_path / "typo.db", tmp_path / "no-such-dir" / "typo.db"):
        with pytest.raises(pq.DatabaseNotFound, match="no database at"):
            async with pq.Queue(path, create=False):
                pass
    assert list(tmp_path.iterdir()) == []
    empty = tmp_path / "empty.db"
    empty.touch()
    with pytest.raises(pq.DatabaseNotFound, match="no persistq database"):
        async with pq.Queue(empty, create=False):
            pass
    assert empty.stat().st_size == 0  # nothing written into it
    conn = sqlite3.connect(empty)
    try:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
    finally:
        conn.close()


async def test_create_false_opens_an_existing_database(fresh_url: str) -> None:
    async with pq.Queue(fresh_url, name="a") as q:
        await q.put("x")
    async with pq.Queue(fresh_url, name="a", create=False) as q:
        assert (await q.stats()).queued == 1


@pytest.mark.postgres
def test_create_false_refuses_a_postgres_database_without_our_tables() -> None:
    async def check(url: str) -> None:
        with pytest.raises(pq.DatabaseNotFound, match="no persistq database"):
            async with pq.Queue(url, create=False):
                pass
        async with pq.Queue(url, name="a") as q:  # still empty: this one creates the schema
            assert await q.queue_names() == []

    with private_pg_database("persistq_empty") as url:
        anyio.run(check, url)


async def test_every_listing_and_bulk_read_follows_an_index_on_sqlite(tmp_path: Path) -> None:
    """The plans SQLite chooses: index searches from the keyset, never a scan of the table or
    a sort of it, so a page deep in a million jobs reads what the first page reads (running
    jobs, few, are walked through the leases index that holds only them, and sorted)."""
    from sqlalchemy import func, select
    from sqlalchemy.dialects import sqlite

    from persistq_async.schema import jobs
    from persistq_async.store import admin

    path = tmp_path / "plan.db"
    async with pq.Queue(path, name="a") as q:
        await q.put("x")
    conn = sqlite3.connect(path)

    def plan(stmt: object) -> str:
        compiled = stmt.compile(dialect=sqlite.dialect())  # type: ignore[attr-defined]
        params = [compiled.params[k] for k in compiled.positiontup]
        rows = conn.execute("EXPLAIN QUERY PLAN " + str(compiled), params).fetchall()
        return " | ".join(str(r[3]) for r in rows)

    dead = pq.JobState.DEAD
    try:
        for queue, state, after, before in [
            ("a", dead, 5, None),
            ("a", dead, None, 5),
            (None, None, 5, None),
            (None, None, None, 5),
            ("a", dead, None, None),
        ]:
            found = plan(admin._page(queue, state, 10, after, before))
            assert found.startswith("SEARCH persistq_jobs USING"), found
            assert "TEMP B-TREE" not in found, found
            assert "SCAN" not in found, found
        # the running jobs (few: the leases index holds only them) are walked and sorted
        running = pq.JobState.RUNNING
        for after, before in [(5, None), (None, 5)]:
            found = plan(admin._page("a", running, 10, after, before))
            assert found.startswith("SCAN persistq_jobs USING INDEX persistq_jobs_leases"), found
        names = plan(admin._QUEUE_NAMES)
        assert "persistq_jobs_queue_state (queue>?)" in names, names
        scans = [p for p in names.split(" | ") if p.startswith("SCAN persistq_jobs")]
        assert scans == ["SCAN persistq_jobs USING COVERING INDEX persistq_jobs_leases"], names
        chosen = select(jobs.c.id).where(*admin._matching("a", dead, 5.0), jobs.c.id > 3)
        found = plan(chosen.order_by(jobs.c.id).limit(500))
        assert "USING INDEX persistq_jobs_queue_state" in found, found
        assert "TEMP" not in found, found
        count = plan(
            select(func.count()).select_from(jobs).where(*admin._matching("a", dead, None))
        )
        assert "persistq_jobs_queue_state (queue=? AND state=?)" in count, count
        assert "INTEGER PRIMARY KEY" in plan(select(jobs.c.queue).where(jobs.c.id == 3))
    finally:
        conn.close()


async def test_a_cancelled_bulk_operation_leaves_whole_batches(fresh_url: str) -> None:
    """Cancelled between batches, a requeue or purge has done whole batches (each is one
    transaction; the batch in flight when the cancellation came may still land) and nothing
    of the rest."""
    async with open_queue(fresh_url, "a") as a:
        count = BULK_BATCH * 3
        for q in (a, a.sibling("b")):
            await q.put_many(range(count), max_attempts=1)
            jobs, _ = await q.claim(count)
            for job in jobs:
                await job.fail(error="boom")
        with anyio.CancelScope() as scope:
            await a.requeue_many("dead", on_progress=lambda done, total: scope.cancel())
        assert scope.cancelled_caught
        stats = await a.stats()
        assert stats.queued + stats.dead == count
        assert stats.queued in (BULK_BATCH, 2 * BULK_BATCH)

        b = a.sibling("b")
        with anyio.CancelScope() as scope:
            await b.purge("dead", on_progress=lambda done, total: scope.cancel())
        assert scope.cancelled_caught
        left = await b.list_jobs(limit=count)
        assert count - len(left) in (BULK_BATCH, 2 * BULK_BATCH)
        assert all(i.state == "dead" for i in left)
        assert all([h.outcome for h in i.history] == ["failed"] for i in left)
