"""What timing each step of a handler costs (pool.py wraps every handler's coroutine).

``python benchmarks/step_timing.py``: awaits a three-step coroutine (two ``asyncio.sleep(0)``)
bare and through :class:`persistq_async._steps.TimedSteps`, interleaved, and prints the medians
per handler and per step. A second or two; figures from a shared machine are rough.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from persistq_async._steps import TimedSteps

ROUNDS = 7
CALLS = 20_000
STEPS = 3


async def handler() -> int:
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    return 1


def ignore(seconds: float) -> None:
    pass


async def main() -> None:
    bare: list[float] = []
    timed: list[float] = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(CALLS):
            await handler()
        bare.append((time.perf_counter() - start) / CALLS)
        start = time.perf_counter()
        for _ in range(CALLS):
            await TimedSteps(handler(), threshold=0.5, on_slow=ignore)
        timed.append((time.perf_counter() - start) / CALLS)
    b, t = statistics.median(bare), statistics.median(timed)
    print(f"bare   {b * 1e6:6.2f} us per handler")
    print(f"timed  {t * 1e6:6.2f} us per handler")
    print(f"cost   {(t - b) * 1e6:6.2f} us per handler, {(t - b) / STEPS * 1e6:.2f} us per step")


if __name__ == "__main__":
    asyncio.run(main())
