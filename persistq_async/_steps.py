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
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

__all__ = ["TimedSteps", "timed_steps"]

T = TypeVar("T")
S = TypeVar("S")


@types.coroutine
def timed_steps(
    coro: Coroutine[Any, Any, T],
    threshold: float,
    on_slow: Callable[[S, float], None],
    subject: S,
) -> Generator[Any, Any, T]:
    """Await ``coro``, calling ``on_slow(subject, seconds)`` after each step that held the loop
    longer than ``threshold`` seconds: ``await timed_steps(handler(job), 0.5, report, ...)``.

    A generator-based coroutine rather than an object with ``__await__``: the pool wraps every
    handler in it, so it costs one generator and no object or closure of its own per delivery.
    What the coroutine yields goes to the event loop unchanged, what the loop sends or throws
    (a cancellation included) goes to the coroutine, and closing it closes the coroutine.
    """
    clock = time.perf_counter
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
            return stop.value  # type: ignore[no-any-return]
        finally:  # the step ended: returned, raised, or yielded to the loop
            elapsed = clock() - start
            if elapsed > threshold:
                on_slow(subject, elapsed)
        try:
            value = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # the loop's throw (cancellation): the coroutine's
            value, error = None, exc


def _call(on_slow: Callable[[float], None], seconds: float) -> None:
    on_slow(seconds)


class TimedSteps(Generic[T]):
    """Await ``coro``, calling ``on_slow(seconds)`` after each step that held the loop longer
    than ``threshold`` seconds (:func:`timed_steps` as an awaitable object).

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
        # ``yield from``: __await__ must return a plain iterator, not a coroutine.
        return (yield from timed_steps(self._coro, self._threshold, _call, self._on_slow))
