"""Awaiting jobs' results: many awaiters, one reader.

Every :meth:`Queue.result` call registers the job it waits for; one of the awaiting calls at a
time (the *reader*) reads the state of every awaited job with one statement, hands each
finished job's outcome to its awaiter, and waits for the next sign of change: a job of the queue
finished in this process (the store's change listeners, at once), another process committed
(the store's change token, looked at twice per ``poll_interval`` and shared with ``get``), or,
where the change token does not see every commit (PostgreSQL's counts notifications of new
work, not finished jobs), ``poll_interval`` passed. So a thousand awaiters cost the database
what one does. When the reader's own job is done (or its call is cancelled or times out) it
hands the role to another awaiter; nothing runs once no call is waiting.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import anyio

from ._checks import check_int, check_seconds
from ._types import FINISHED_STATES, JobState
from .errors import JobCancelled, JobFailed, JobNotFound
from .job import decode

if TYPE_CHECKING:
    from ._types import Serializer
    from .config import Options
    from .store import JobStore
    from .store.results import Outcome

__all__ = ["ResultMethods", "ResultWaiters"]


@dataclass(slots=True, kw_only=True)
class _Slot:
    """One waiting call."""

    job_id: int
    event: anyio.Event = field(default_factory=anyio.Event)
    outcome: Outcome | None = None
    missing: bool = False

    @property
    def done(self) -> bool:
        return self.outcome is not None or self.missing


class ResultWaiters:
    """The awaiters of one queue object (see the module docstring).

    :param store: the queue's store.
    :param queue: the queue's name.
    :param poll_interval: the queue's ``poll_interval`` option.
    """

    def __init__(self, store: JobStore, queue: str, poll_interval: float) -> None:
        self.store = store
        self._store = store
        self._queue = queue
        self._poll_interval = poll_interval
        self._slots: dict[int, list[_Slot]] = {}
        self._reader: _Slot | None = None
        self._kick = anyio.Event()
        self._listening = False

    @property
    def waiting(self) -> int:
        """How many calls are waiting now (tests check that none is left behind)."""
        return sum(len(slots) for slots in self._slots.values())

    @property
    def listening(self) -> bool:
        """Whether a change listener is registered with the store (only while calls wait)."""
        return self._listening

    def _changed(self, queue: str) -> None:
        if queue == self._queue:
            self._kick.set()

    async def wait(self, job_id: int, deadline: float | None) -> Outcome | None:
        """The outcome of ``job_id`` once it is finished; None if the job does not exist.

        :param deadline: anyio time after which :class:`TimeoutError` is raised; None waits.
        """
        slot = _Slot(job_id=job_id)
        self._slots.setdefault(job_id, []).append(slot)
        if not self._listening:
            self._store.add_change_listener(self._changed)
            self._listening = True
        self._kick.set()
        try:
            while not slot.done:
                if self._reader is None:
                    self._reader = slot
                if self._reader is slot:
                    await self._read_until_done(slot, deadline)
                    continue
                remaining = None if deadline is None else deadline - anyio.current_time()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                with anyio.move_on_after(remaining):
                    await slot.event.wait()
                if not slot.done:
                    slot.event = anyio.Event()  # woken to take over reading
            return None if slot.missing else slot.outcome
        finally:
            self._leave(slot)

    def _leave(self, slot: _Slot) -> None:
        # Synchronous, so a cancelled call leaves nothing behind whatever interrupted it.
        slots = self._slots.get(slot.job_id)
        if slots is not None:
            if slot in slots:
                slots.remove(slot)
            if not slots:
                del self._slots[slot.job_id]
        if self._reader is slot:
            self._reader = None
        if self._reader is None:
            # The next awaiter not yet served becomes the reader. (One that was served but has
            # not run yet would leave without reading: the role would be lost.)
            for others in self._slots.values():
                waiting = next((s for s in others if not s.done), None)
                if waiting is not None:
                    waiting.event.set()
                    break
        if not self._slots and self._listening:
            self._store.remove_change_listener(self._changed)
            self._listening = False

    async def _read_until_done(self, slot: _Slot, deadline: float | None) -> None:
        store = self._store
        sees_every_commit = store.backend.change_token_sees_every_commit()
        while not slot.done:
            # A fresh kick and the token before reading: a change during the read is not lost.
            self._kick = anyio.Event()
            token = await store.change_token() if sees_every_commit else 0
            await self._read()
            read_at = anyio.current_time()
            while not slot.done:
                now = anyio.current_time()
                if deadline is not None and now >= deadline:
                    raise TimeoutError
                limit = now + self._poll_interval / 2
                if deadline is not None:
                    limit = min(limit, deadline)
                with anyio.move_on_after(max(0.0, limit - now)):
                    await self._kick.wait()
                if self._kick.is_set():
                    break
                if sees_every_commit:
                    if await store.change_token() != token:
                        break
                elif anyio.current_time() - read_at >= self._poll_interval:
                    break

    async def _read(self) -> None:
        ids = sorted(job_id for job_id, slots in self._slots.items() if slots)
        if not ids:
            return
        found = await self._store.outcomes(self._queue, ids)
        for job_id in ids:
            outcome = found.get(job_id)
            for waiting in list(self._slots.get(job_id, ())):
                if outcome is None:
                    waiting.missing = True
                elif outcome.state in FINISHED_STATES:
                    waiting.outcome = outcome
                else:
                    continue
                waiting.event.set()


class ResultMethods:
    """Mixed into :class:`~persistq_async.Queue`: await what jobs return."""

    if TYPE_CHECKING:
        name: str
        serializer: Serializer
        options: Options

        @property
        def store(self) -> JobStore: ...

    _result_waiters: ResultWaiters | None = None

    # ``timeout=`` like get's (DESIGN.md).
    async def result(self, job_id: int, timeout: float | timedelta | None = None) -> Any:  # noqa: ASYNC109
        """Wait until the job is finished and return its result: what its handler returned,
        or what ``ack(result)`` stored (None when nothing was).

        A finish in this process wakes the wait at once; one in another process within
        ``poll_interval``. However many calls wait, the database is read for all of them at
        once. Results are kept for ``retention_seconds`` after the job finished, like the job.

        :raises JobFailed: the job is dead; carries its last error and attempts.
        :raises JobCancelled: the job was cancelled.
        :raises TimeoutError: not finished within ``timeout`` seconds (the job goes on).
        :raises JobNotFound: no such job in this queue (or it was deleted, or cleaned after
            ``retention_seconds``).
        """
        store = self.store
        job_id = check_int("job_id", job_id)
        wait = None if timeout is None else check_seconds("timeout", timeout)
        deadline = None if wait is None else anyio.current_time() + wait
        waiters = self._result_waiters
        if waiters is None or waiters.store is not store:
            waiters = self._result_waiters = ResultWaiters(
                store, self.name, self.options.poll_interval
            )
        try:
            outcome = await waiters.wait(job_id, deadline)
        except TimeoutError:
            raise TimeoutError(f"job {job_id} did not finish within {wait}s") from None
        if outcome is None:
            raise JobNotFound(f"no job {job_id} in queue {self.name!r}")
        if outcome.state == JobState.DEAD:
            raise JobFailed(job_id, outcome.last_error, outcome.attempts)
        if outcome.state == JobState.CANCELLED:
            raise JobCancelled(job_id, outcome.last_error, outcome.attempts)
        if outcome.result is None:
            return None
        return decode(self.serializer, outcome.result, job_id)

    async def call(
        self,
        payload: Any,
        *,
        timeout: float | timedelta | None = None,  # noqa: ASYNC109
        **options: Any,
    ) -> Any:
        """Put a job and wait for its result: :meth:`put` then :meth:`result`.

        :param timeout: seconds for the whole call; on :class:`TimeoutError` the job stays
            queued or running (cancel it with ``q.cancel(id)`` if it should not run; the id is
            in the error's message).
        :param options: :meth:`put`'s options (priority, delay, max_attempts, ...).
        :raises JobFailed: the job ended dead.
        :raises JobCancelled: the job was cancelled.
        """
        wait = None if timeout is None else check_seconds("timeout", timeout)
        started = anyio.current_time()
        # Queue.put; the mixin does not repeat its signature.
        put: Callable[..., Awaitable[int]] = getattr(self, "put")  # noqa: B009
        job_id = await put(payload, **options)
        remaining = None if wait is None else max(0.0, wait - (anyio.current_time() - started))
        return await self.result(job_id, timeout=remaining)
