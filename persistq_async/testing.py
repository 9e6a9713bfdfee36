"""Helpers for testing code that uses persistq_async.

>>> async with temporary_queue(name="emails") as q:      # doctest: +SKIP
...     await q.put({"to": "a@example.org"})
...     results = await drain(q, send)
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from ._checks import check_int
from ._types import Handler
from .errors import Reject, Retry
from .pool import check_handler
from .queue import Queue

__all__ = ["drain", "read_connection", "run_write", "temporary_queue"]

T = TypeVar("T")


async def run_write(queue: Queue, fn: Callable[[Connection], T], *, kind: str = "write") -> T:
    """Run ``fn`` on the queue's write connection, in a transaction of its writer.

    For tests that must reach what belongs to that one connection (SQLite pragmas such as
    ``max_page_count``, a fault to inject); ``kind`` names the operation as the writer sees it
    (``"put"``, ``"claim"``, ``"ack"``...), which decides, for instance, whether SQLite syncs.
    """
    return await queue.store.write(fn, kind=kind)


@asynccontextmanager
async def read_connection(queue: Queue) -> AsyncIterator[AsyncConnection]:
    """A connection of the queue's read pool, for tests that inspect the database directly."""
    store = queue.store
    engine = store.engine
    async with engine.connect() as conn:
        yield conn


@asynccontextmanager
async def temporary_queue(name: str = "default", **options: Any) -> AsyncIterator[Queue]:
    """An open queue on a fresh SQLite file in a temporary directory, deleted afterwards."""
    with tempfile.TemporaryDirectory(prefix="persistq-test-") as tmp:
        async with Queue(Path(tmp) / "queue.db", name=name, **options) as queue:
            yield queue


async def drain(queue: Queue, handler: Handler, *, max_jobs: int = 10_000) -> dict[int, Any]:
    """Run ``handler`` on every job that is ready now, one at a time, as a pool would.

    A return acks; :class:`Retry` and other exceptions nack; :class:`Reject` fails. Jobs that
    become ready during the drain (retries without delay) are run too, up to ``max_jobs``.

    :returns: each acked job's id mapped to its handler's result.
    """
    check_handler(handler)
    limit = check_int("max_jobs", max_jobs, minimum=1)
    results: dict[int, Any] = {}
    for _ in range(limit):
        job = await queue.get_nowait()
        if job is None:
            break
        try:
            result = await handler(job)
        except Retry as exc:
            await job.nack(delay=exc.delay, error="retry requested by the handler")
        except Reject as exc:
            await job.fail(error=f"rejected: {exc.reason}")
        except Exception as exc:
            await job.nack(error=f"{type(exc).__name__}: {exc}")
        else:
            await job.ack(result)
            results[job.id] = result
    return results
