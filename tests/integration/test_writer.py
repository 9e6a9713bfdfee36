"""The writer's batch, tested directly: each op gets its own outcome, claims run last, and a
cancelled caller's write still completes as a whole (and is undone through ``on_abandon``)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

import persistq_async as pq
from persistq_async.store.writer import Op, ThreadWriter, run_batch

WHERE = "test database"


@pytest.fixture
def engine(tmp_path: Path) -> Any:
    engine = create_engine(f"sqlite:///{tmp_path / 'w.db'}", poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (n INTEGER PRIMARY KEY, kind TEXT NOT NULL)")
    yield engine
    engine.dispose()


def insert(n: int, kind: str = "put") -> Op[int]:
    def fn(conn: Connection) -> int:
        conn.exec_driver_sql("INSERT INTO t (n, kind) VALUES (?, ?)", (n, kind))
        order = conn.exec_driver_sql("SELECT count(*) FROM t").scalar_one()
        return int(order)

    return Op(fn, kind=kind)


def rows(engine: Engine) -> list[tuple[int, str]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql("SELECT n, kind FROM t ORDER BY n")]  # type: ignore[misc]


def never_busy(_exc: BaseException) -> bool:
    return False


def test_a_failing_op_among_good_ones_fails_alone(engine: Engine) -> None:
    good1, dup, good2 = insert(1), insert(1), insert(2)  # dup violates the primary key
    refused: Op[int] = Op(lambda _conn: (_ for _ in ()).throw(pq.ArgumentError("no")))
    with engine.connect() as conn:
        run_batch(conn, [good1, dup, refused, good2], where=WHERE, is_busy=never_busy, sleep=None)
    assert good1.error is None
    assert good2.error is None
    assert isinstance(dup.error, pq.DatabaseError)
    assert WHERE in str(dup.error)
    assert isinstance(refused.error, pq.ArgumentError)
    assert rows(engine) == [(1, "put"), (2, "put")]  # the batch was rerun without the duplicate


def test_claims_run_after_every_other_op_of_their_batch(engine: Engine) -> None:
    claim, put1, put2 = insert(10, "claim"), insert(1), insert(2)
    with engine.connect() as conn:
        run_batch(conn, [claim, put1, put2], where=WHERE, is_busy=never_busy, sleep=None)
    # Each op returned how many rows it saw: the claim saw both puts of its own batch.
    assert (put1.result, put2.result, claim.result) == (1, 2, 3)


def test_a_batch_that_meets_an_unexpected_error_fails_every_op_and_writes_nothing(
    engine: Engine,
) -> None:
    def broken(_conn: Connection) -> int:
        raise RuntimeError("bug")

    good, bad = insert(1), Op(broken)
    with engine.connect() as conn:
        run_batch(conn, [good, bad], where=WHERE, is_busy=never_busy, sleep=None)
    assert isinstance(good.error, pq.DatabaseError)
    assert isinstance(bad.error, pq.DatabaseError)
    assert rows(engine) == []


async def test_a_cancelled_caller_s_write_completes_and_is_abandoned(engine: Engine) -> None:
    writer = ThreadWriter(engine.connect, where=WHERE, is_busy=never_busy)
    await writer.start(lambda _conn: None)
    abandoned: list[int] = []
    try:
        loop = asyncio.get_running_loop()
        slow_started = anyio.Event()
        go_on = threading.Event()

        def slow(conn: Connection) -> int:
            loop.call_soon_threadsafe(slow_started.set)
            go_on.wait(10)  # until the caller was cancelled
            conn.exec_driver_sql("INSERT INTO t (n, kind) VALUES (1, 'slow')")
            return 1

        op: Op[int] = Op(slow, on_abandon=abandoned.append)
        with anyio.CancelScope() as scope:

            async def cancel_when_running() -> None:
                await slow_started.wait()
                scope.cancel()
                go_on.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_running)
                await writer.run(op)
        assert scope.cancelled_caught
        with anyio.fail_after(10):
            await op.done.wait()
        assert abandoned == [1]  # the committed result was handed to on_abandon to undo
        assert await writer.run(insert(2)) == 2
    finally:
        await writer.aclose()
    assert rows(engine) == [(1, "slow"), (2, "put")]


async def test_a_lone_write_goes_to_the_thread_without_waiting_for_the_loop(
    engine: Engine,
) -> None:
    """Once the last batch held one op, a write that finds nothing else pending is handed to
    the thread at once: it runs even while the event loop is held up (no loop iterations are
    spent gathering a batch that nobody would join)."""
    writer = ThreadWriter(engine.connect, where=WHERE, is_busy=never_busy)
    await writer.start(lambda _conn: None)
    try:
        assert await writer.run(insert(1)) == 1  # a batch of one
        ran = threading.Event()

        def marked(conn: Connection) -> int:
            conn.exec_driver_sql("INSERT INTO t (n, kind) VALUES (2, 'lone')")
            ran.set()
            return 2

        op: Op[int] = Op(marked)
        writer.submit_nowait(op)
        # Hold the loop (no await): only a write already handed to the thread can run now.
        assert ran.wait(10), "the lone write waited for the event loop"
        with anyio.fail_after(10):
            await op.done.wait()
        assert op.value() == 2
    finally:
        await writer.aclose()
    assert rows(engine) == [(1, "put"), (2, "lone")]


async def test_a_burst_after_a_lone_write_gathers_behind_its_first_op(engine: Engine) -> None:
    """The first op of a burst goes alone, the others gather while it runs; after a batch of
    more than one, the writer waits again for a batch to gather."""
    sizes: list[int] = []
    writer = ThreadWriter(
        engine.connect,
        where=WHERE,
        is_busy=never_busy,
        before_batch=lambda _conn, kinds: sizes.append(len(kinds)),
    )
    await writer.start(lambda _conn: None)
    try:
        await writer.run(insert(1))
        await writer.run(insert(2))
        assert sizes == [1, 1]

        async def burst(first: int) -> None:
            async with anyio.create_task_group() as tg:
                for n in range(first, first + 10):
                    tg.start_soon(writer.run, insert(n))

        await burst(100)
        assert sizes[2:] == [1, 9]
        await burst(200)
        assert sizes[4:] == [10]
    finally:
        await writer.aclose()
    assert len(rows(engine)) == 22


async def test_close_waits_for_the_writes_still_pending(engine: Engine) -> None:
    writer = ThreadWriter(engine.connect, where=WHERE, is_busy=never_busy)
    await writer.start(lambda _conn: None)
    ops = [insert(n) for n in range(1, 6)]
    for op in ops:
        writer.submit_nowait(op)
    await writer.aclose()
    assert all(op.finished and op.error is None for op in ops)
    assert len(rows(engine)) == 5
    with pytest.raises(pq.QueueClosed):
        await writer.run(insert(9))
