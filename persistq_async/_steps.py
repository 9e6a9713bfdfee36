"""Timing each step of a handler's coroutine, so a blocked event loop is blamed on the right code.

An event loop runs one task at a time: a coroutine holds the loop from the moment the loop resumes
it (``send``/``throw``) until it yields again. Timing those steps of a handler's coroutine tells
whether *that handler* held the loop; the lateness of a timer elsewhere only tells that
*something* did (another task, another library, the garbage collector, an overloaded machine).
:class:`TimedSteps` runs a coroutine as ``await`` would and times each step with
:func:`time.perf_counter`: two clock reads and a generator hop per step, a fraction of a
microsecond on a job path whose every step already costs tens of microseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

__all__ = ["TimedSteps"]

T = TypeVar("T")


class TimedSteps(Generic[T]):
    """Await ``coro``, calling ``on_slow(seconds)`` after each step that held the loop longer
    than ``threshold`` seconds.

    The wrapper is transparent: what the coroutine yields goes to the event loop unchanged, what
    the loop sends or throws (a cancellation included) goes to the coroutine, and closing the
    wrapper closes the coroutine.
    """

    __slots__ = ("_coro", "_on_slow", "_threshold")

    def __init__(
        self,
        coro: Coroutine[Any, Any, T],
        *,
        threshold: float,
        on_slow: Callable[[float], None],
    ) -> None:
        self._coro = coro
        self._threshold = threshold
        self._on_slow = on_slow

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        clock = time.perf_counter
        threshold = self._threshold
        value: Any = None
        error: BaseException | None = None
        while True:
            start = clock()
            try:
                if error is None:
                    yielded = coro.send(value)
                else:
                    # Dropped before the step, so the traceback's frames are not kept alive.
                    thrown, error = error, None
                    yielded = coro.throw(thrown)
            except StopIteration as stop:
                self._check(clock() - start)
                return stop.value  # type: ignore[no-any-return]
            except BaseException:
                self._check(clock() - start)
                raise
            elapsed = clock() - start
            if elapsed > threshold:
                self._on_slow(elapsed)
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # the loop's throw (cancellation): the coroutine's
                value, error = None, exc

    def _check(self, elapsed: float) -> None:
        if elapsed > self._threshold:
            self._on_slow(elapsed)
