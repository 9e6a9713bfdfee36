"""Helpers shared by the pool, supervisor and service tests (not a test module)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest

import persistq_async as pq


def records(caplog: pytest.LogCaptureFixture, action: str) -> list[logging.LogRecord]:
    """The captured log records whose structured ``action`` is ``action``."""
    return [r for r in caplog.records if getattr(r, "action", None) == action]


async def info(q: pq.Queue, job_id: int) -> pq.JobInfo:
    """The job, which must exist."""
    found = await q.job(job_id)
    assert found is not None, f"job {job_id} vanished"
    return found


class Gauge:
    """Counts running handlers and remembers the peak; ``reached(n)`` fires when n run at once."""

    def __init__(self) -> None:
        self.running = 0
        self.peak = 0
        self._waiters: list[tuple[int, anyio.Event]] = []

    def enter(self) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        for n, event in self._waiters:
            if self.running >= n:
                event.set()

    def leave(self) -> None:
        self.running -= 1

    def reached(self, n: int) -> anyio.Event:
        event = anyio.Event()
        if self.running >= n:
            event.set()
        else:
            self._waiters.append((n, event))
        return event


def run_in_other_loop(fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``fn`` in a fresh event loop on another thread: like another process, this loop's
    in-process wake-ups (cancel listeners, work events) do not reach the caller's loop."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = anyio.run(fn)
        except BaseException as exc:  # re-raised in the caller
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "the other event loop did not finish within 30 s"
    if "error" in box:
        raise box["error"]
    return box.get("result")
