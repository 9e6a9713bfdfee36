"""The reads of one queue find their jobs through an index on both backends (schema 6).

Since schema 6 no index holds every job of a queue: ``persistq_jobs_queue_state`` leaves the
running jobs out and ``persistq_jobs_leases`` holds them. A read that forgets to repeat the
partial index's predicate literally (a bound ``state = ?`` cannot prove it) would scan the whole
table, fast on a test's few rows and slow on a million. So every statement that the stats,
counts, listings, pages, the dashboard and the alert rules send for one queue is captured and
explained: on SQLite no plain ``SCAN`` of a table (an index walk is fine), on PostgreSQL no
``Seq Scan`` of the jobs or attempts while sequential scans are priced out (so a plan keeps
one only when no index can answer).
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncConnection

import persistq_async as pq
from persistq_async.store import admin, dashboard, metrics, reads
from persistq_async.store import alerts as store_alerts
from persistq_async.testing import read_connection
from tests.conftest import open_queue

TABLES = ("persistq_jobs", "persistq_attempts")


async def fill(q: pq.Queue) -> None:
    """Jobs of ``q`` in every state, a delayed one among them."""
    ids = await q.put_many(range(6))
    await q.put("later", delay=3600)
    jobs, _ = await q.claim(4)
    await jobs[0].ack("ok")
    await jobs[1].fail(error="boom")
    await jobs[2].nack(error="again")
    await q.cancel(ids[5])  # queued: cancelled; jobs[3] stays running


async def run_reads(conn: AsyncConnection, queue: str) -> None:
    now = time.time()
    await metrics.read_stats(conn, queue, now, 60)
    await metrics.read_oldest_ready(conn, queue, now)
    await reads.counts(conn, queue)
    await reads.active_count(conn, queue)
    states: list[pq.JobState | None] = [None, *pq.JobState]
    for state in states:
        await reads.list_jobs(conn, queue, state, 3, 1)
        for page_queue, page_state in [(queue, state), (None, state)]:
            if page_queue is not None or page_state is not None:
                for after, before in [(None, None), (2, None), (None, 10**9)]:
                    await admin.list_page(conn, page_queue, page_state, 3, after, before)
        for after, before in [(None, None), (None, 10**9), (2, None)]:
            await dashboard.job_page(
                conn,
                queue=queue,
                state=state,
                priority=None,
                before_id=before,
                after_id=after,
                limit=2,
            )
    for state in pq.JobState:
        await admin.count_matching(conn, queue, state, now + 1)
        await admin.select_ids(conn, queue, state, None, 0, 100)
    await admin.queue_names(conn)
    await dashboard.queue_summaries(conn, now)
    await store_alerts.count_dead_since(conn, queue, now - 60)
    await store_alerts.outcomes_since(conn, queue, now - 60)


async def captured_reads(q: pq.Queue) -> list[tuple[str, Any]]:
    seen: list[tuple[str, Any]] = []

    def grab(*args: Any) -> None:
        statement, parameters = args[2], args[3]
        if any(t in statement for t in TABLES):
            seen.append((statement, parameters))

    async with read_connection(q) as conn:
        event.listen(conn.sync_connection, "before_cursor_execute", grab)
        try:
            await run_reads(conn, q.name)
        finally:
            event.remove(conn.sync_connection, "before_cursor_execute", grab)
    return seen


async def explain(q: pq.Queue, statement: str, parameters: Any, sqlite: bool) -> str:
    async with read_connection(q) as conn:
        if sqlite:
            found = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
            return " | ".join(str(r[-1]) for r in found)  # the plan step's detail
        await conn.execute(text("SET LOCAL enable_seqscan = off"))
        found = await conn.exec_driver_sql("EXPLAIN " + statement, parameters)
        return " | ".join(str(r[0]).strip() for r in found)


def test_the_finished_predicate_names_every_state_that_is_not_finished() -> None:
    """schema.FINISHED says "neither queued nor running" (two inequalities are cheaper for
    SQLite than an IN list): exact only while those are the states that are not finished."""
    from persistq_async import schema

    assert set(pq.JobState) - pq.FINISHED_STATES == {pq.JobState.QUEUED, pq.JobState.RUNNING}
    assert str(schema.FINISHED) == "state <> 'queued' AND state <> 'running'"


async def test_every_read_of_a_queue_uses_an_index(backend_url: str, queue_name: str) -> None:
    sqlite = not backend_url.startswith("postgresql")
    async with open_queue(backend_url, queue_name) as q:
        await fill(q)
        statements = await captured_reads(q)
        assert len(statements) > 40, len(statements)
        for statement, parameters in statements:
            plan = await explain(q, statement, parameters, sqlite)
            for table in TABLES:
                if sqlite:
                    for step in plan.split(" | "):
                        assert step != f"SCAN {table}", (statement, plan)
                else:
                    # across every queue in every state the primary key is the walk
                    assert f"Seq Scan on {table}" not in plan, (statement, plan)
        # and the answers are right: the reads were not made cheap by reading nothing
        stats = await q.stats()
        assert (stats.queued, stats.running, stats.done, stats.dead, stats.cancelled) == (
            3,
            1,
            1,
            1,
            1,
        )
        listed = await q.list_jobs(limit=20)
        assert sorted(i.state.value for i in listed) == sorted(
            ["queued"] * 3 + ["running", "done", "dead", "cancelled"]
        )


async def test_the_stats_counts_search_each_states_index_on_sqlite(db_path: object) -> None:
    """The per-state counts are searches of (queue, state) ranges of the finished jobs' index,
    of the queue's range of the due index for the queued jobs, and a walk of the leases index
    for the running ones: each from the index alone (covering)."""
    async with pq.Queue(str(db_path), name="a") as q:
        await fill(q)
        statements = await captured_reads(q)
        counts = [s for s, _ in statements if s.count("count(*)") == 5]
        assert counts, "the stats' per-state counts were not sent"
        plan = await explain(q, counts[0], next(p for s, p in statements if s == counts[0]), True)
        assert plan.count("COVERING INDEX persistq_jobs_queue_state (queue=? AND state=?)") == 3
        assert plan.count("SEARCH persistq_jobs USING COVERING INDEX persistq_jobs_due (queue=?)")
        assert plan.count("SCAN persistq_jobs USING COVERING INDEX persistq_jobs_leases") == 1


async def test_queued_jobs_are_paged_one_priority_at_a_time(backend_url: str) -> None:
    """Queued jobs are walked in id order through the ready index, one walk per priority,
    merged; past MAX_PRIORITY_WALKS priorities one sorted walk gives the same pages."""
    from persistq_async.store import walks

    sqlite = not backend_url.startswith("postgresql")
    async with open_queue(backend_url, f"prio-{time.time_ns()}") as q:
        ids = [await q.put(i, priority=i % 3) for i in range(9)]
        statements = await captured_reads(q)
        by_priority = [s for s, _ in statements if "persistq_jobs.priority =" in s]
        assert by_priority, "no walk of one priority was sent"
        for statement, parameters in statements:
            if statement in by_priority:
                plan = await explain(q, statement, parameters, sqlite)
                # PostgreSQL chooses by cost (on a few rows the primary key may win)
                assert "persistq_jobs_ready" in plan if sqlite else "Seq Scan" not in plan, plan
        first = [i.id for i in await q.list_jobs(state=pq.JobState.QUEUED, limit=4)]
        assert first == ids[:4]
        async with read_connection(q) as conn:
            assert await walks.queued_priorities(conn, q.name) == [2, 1, 0]
            page = await admin.list_page(conn, q.name, pq.JobState.QUEUED, 3, ids[2], None)
            assert [r.id for r, _ in page] == ids[3:6]
            page = await admin.list_page(conn, q.name, pq.JobState.QUEUED, 3, None, ids[5])
            assert [r.id for r, _ in page] == ids[2:5]
        # more priorities than walked one by one: the sorted walk, same order
        many = [await q.put(i, priority=100 + i) for i in range(walks.MAX_PRIORITY_WALKS + 1)]
        async with read_connection(q) as conn:
            assert await walks.queued_priorities(conn, q.name) is None
            page = await admin.list_page(conn, q.name, pq.JobState.QUEUED, 12, ids[2], None)
            assert [r.id for r, _ in page] == [*ids[3:], *many[:6]]
