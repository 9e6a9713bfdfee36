"""TimedSteps: a handler's coroutine awaited step by step, each step timed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import anyio
import pytest

from persistq_async._steps import TimedSteps


def timed(coro: Coroutine[Any, Any, Any], slow: list[float], threshold: float = 0.1) -> Any:
    return TimedSteps(coro, threshold=threshold, on_slow=slow.append)


async def test_results_and_exceptions_pass_through() -> None:
    async def returns() -> int:
        await asyncio.sleep(0)
        await anyio.sleep(0.001)
        return 42

    async def raises() -> None:
        await asyncio.sleep(0)
        raise KeyError("k")

    slow: list[float] = []
    assert await timed(returns(), slow) == 42
    with pytest.raises(KeyError):
        await timed(raises(), slow)
    assert slow == []


async def test_only_a_step_that_held_the_loop_is_reported() -> None:
    async def handler() -> str:
        await asyncio.sleep(0.3)  # waiting is not holding the loop
        time.sleep(0.25)  # noqa: ASYNC251 - the blocking call under test
        await asyncio.sleep(0)
        return "done"

    slow: list[float] = []
    assert await timed(handler(), slow) == "done"
    assert len(slow) == 1
    assert 0.2 < slow[0] < 2.0


async def test_a_blocking_last_step_and_a_raising_step_are_reported() -> None:
    async def blocks_then_raises() -> None:
        await asyncio.sleep(0)
        time.sleep(0.15)  # noqa: ASYNC251
        raise ValueError("after blocking")

    slow: list[float] = []
    with pytest.raises(ValueError, match="after blocking"):
        await timed(blocks_then_raises(), slow)
    assert len(slow) == 1


async def test_cancellation_reaches_the_coroutine_and_it_may_clean_up() -> None:
    seen: list[str] = []

    async def handler() -> None:
        try:
            await anyio.sleep(10)
        except anyio.get_cancelled_exc_class():
            seen.append("cancelled")
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # it may still await while cleaning up
            seen.append("cleaned up")
            raise

    slow: list[float] = []
    with anyio.move_on_after(0.05) as scope:
        await timed(handler(), slow)
    assert scope.cancelled_caught
    assert seen == ["cancelled", "cleaned up"]


async def test_a_coroutine_that_catches_what_is_thrown_goes_on() -> None:
    async def handler() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "swallowed"
        return "slept"

    task = asyncio.ensure_future(timed(handler(), []))
    await asyncio.sleep(0.01)
    task.cancel()
    assert await task == "swallowed"


class _Suspend:
    def __await__(self) -> Any:
        yield "suspended"


def test_closing_the_wrapper_closes_the_coroutine() -> None:
    closed: list[bool] = []

    async def handler() -> None:
        try:
            await _Suspend()
        finally:
            closed.append(True)

    awaiting = timed(handler(), []).__await__()
    assert next(awaiting) == "suspended"  # what the coroutine yields reaches the loop
    awaiting.close()
    assert closed == [True]
