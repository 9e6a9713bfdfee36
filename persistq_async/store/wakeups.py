"""Waking waiters: per-queue events within a process, and the change token across processes.

Every store of a process registers its :class:`Wakeups`; a commit by one store wakes the waiters
of every store on the same database and event loop (several ``Queue`` objects may share a
file). Another process's commit is seen through the backend's change token (SQLite's
``PRAGMA data_version``, PostgreSQL's notification count), read at most a few times per
``poll_interval`` however many waiters ask.
"""

from __future__ import annotations

import asyncio
import math
import weakref
from collections.abc import Callable

import anyio
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..backends import Backend
from .dberror import wrap_db_error

__all__ = ["Wakeups"]

CancelListener = Callable[[str, int], None]
ChangeListener = Callable[[str], None]

_registry: weakref.WeakSet[Wakeups] = weakref.WeakSet()
#: Moves on whenever a store registers or unregisters, so that each keeps its list of peers
#: until then (every commit's wake-up asks for it).
_generation = 0


class Wakeups:
    """The wake-up events and change token of one store.

    :param backend: the store's backend (for the change token).
    :param where: the database, as the backend describes it.
    """

    def __init__(self, backend: Backend, where: str) -> None:
        self._backend = backend
        self._where = where
        self._loop: asyncio.AbstractEventLoop | None = None
        self._work_events: dict[str, anyio.Event] = {}
        self._change_events: dict[str, anyio.Event] = {}
        self._cancel_listeners: list[CancelListener] = []
        self._change_listeners: list[ChangeListener] = []
        self._schedules_event: anyio.Event | None = None
        self._watch_conn: AsyncConnection | None = None
        self._watch_lock = anyio.Lock()
        self._watch_value = 0
        self._watch_checked = -math.inf
        self._peer_list: list[Wakeups] = []
        self._peers_of = -1

    def register(self, watch_conn: AsyncConnection | None) -> None:
        """Start receiving wake-ups of this process's stores on the same database."""
        global _generation
        self._loop = asyncio.get_running_loop()
        self._watch_conn = watch_conn
        _registry.add(self)
        _generation += 1

    def unregister(self) -> AsyncConnection | None:
        """Stop receiving wake-ups; returns the watch connection for the caller to close."""
        global _generation
        _registry.discard(self)
        _generation += 1
        conn, self._watch_conn = self._watch_conn, None
        return conn

    def _peers(self) -> list[Wakeups]:
        if self._peers_of != _generation:
            self._peer_list = [
                w for w in list(_registry) if w._where == self._where and w._loop is self._loop
            ]
            self._peers_of = _generation
        return self._peer_list

    def work_event(self, queue: str) -> anyio.Event:
        """An event set when jobs of ``queue`` may have become claimable in this process."""
        event = self._work_events.get(queue)
        if event is None:
            event = self._work_events[queue] = anyio.Event()
        return event

    def change_event(self, queue: str) -> anyio.Event:
        """An event set when any job of ``queue`` changed state in this process."""
        event = self._change_events.get(queue)
        if event is None:
            event = self._change_events[queue] = anyio.Event()
        return event

    def notify(self, queue: str, *, work: bool) -> None:
        """Wake the waiters of ``queue`` in every store of this process on this database:
        those waiting for any change, and with ``work`` those waiting for claimable jobs."""
        for peer in self._peers():
            if work:
                event = peer._work_events.pop(queue, None)
                if event is not None:
                    event.set()
            event = peer._change_events.pop(queue, None)
            if event is not None:
                event.set()
            for listener in list(peer._change_listeners):
                listener(queue)

    def notify_all_work(self) -> None:
        """Wake the work waiters of every queue this store has waiters for."""
        for queue in list(self._work_events):
            self.notify(queue, work=True)

    def schedules_event(self) -> anyio.Event:
        """An event set when this process saved, paused or resumed a schedule (the scheduler
        then looks again at once rather than at its next pass)."""
        if self._schedules_event is None:
            self._schedules_event = anyio.Event()
        return self._schedules_event

    def notify_schedules(self) -> None:
        """Wake the schedulers of this process on this database."""
        for peer in self._peers():
            event, peer._schedules_event = peer._schedules_event, None
            if event is not None:
                event.set()

    def add_change_listener(self, listener: ChangeListener) -> None:
        """Call ``listener(queue)`` whenever :meth:`notify` wakes the change waiters of a queue
        (one callback for many waiters, where an event per waiter would cost one each)."""
        self._change_listeners.append(listener)

    def remove_change_listener(self, listener: ChangeListener) -> None:
        """Undo :meth:`add_change_listener`."""
        if listener in self._change_listeners:
            self._change_listeners.remove(listener)

    def add_cancel_listener(self, listener: CancelListener) -> None:
        """Call ``listener(queue, job_id)`` when this process cancels a job."""
        self._cancel_listeners.append(listener)

    def remove_cancel_listener(self, listener: CancelListener) -> None:
        """Undo :meth:`add_cancel_listener`."""
        if listener in self._cancel_listeners:
            self._cancel_listeners.remove(listener)

    def notify_cancelled(self, queue: str, job_id: int) -> None:
        """Tell every cancel listener of this process on this database."""
        for peer in self._peers():
            for listener in list(peer._cancel_listeners):
                listener(queue, job_id)

    def known_change_token(self) -> int:
        """The change token as last read, without reading it again.

        What a claim loop takes *before* its claim: a token older than the claim can only make
        the wait after it return at once (one more claim, finding nothing), never miss a
        commit. Reading a fresh one there would put a round trip to the database before every
        claim, in the path from a put to its handler.
        """
        return self._watch_value

    async def change_token(self, poll_interval: float) -> int:
        """A number that changes when another connection committed; shared by all waiters,
        read from the database at most four times per ``poll_interval``."""
        async with self._watch_lock:
            now = anyio.current_time()
            if now - self._watch_checked >= poll_interval / 4:
                try:
                    with anyio.CancelScope(shield=True):
                        self._watch_value = await self._backend.change_token(self._watch_conn)
                except DBAPIError as exc:
                    raise wrap_db_error(exc, "watching for changes", self._where) from exc
                self._watch_checked = now
            return self._watch_value
