"""The worker registry: each running :class:`~persistq_async.Supervisor` records itself in the
database of each of its pools' queues, so that every process can list the live workers
(:meth:`Queue.workers`).

A row is written when the supervisor's first pool on a database starts (pruning rows of workers
not seen for :data:`PRUNE_AFTER` seconds, and the stalest beyond
:data:`~persistq_async.store.metrics.MAX_WORKER_ROWS`), refreshed every ``interval`` seconds
with its pools' counters, and deleted when the supervisor stops cleanly. A worker that crashed
leaves its row; listings show it as gone once its heartbeat is older than their timeout, and the
next registration prunes it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import anyio

from ._maintenance import Service
from .errors import PersistQError
from .monitoring import log_event
from .store.metrics import WorkerRecord

if TYPE_CHECKING:
    from .pool import Pool
    from .queue import Queue
    from .store import JobStore

__all__ = ["DEFAULT_REGISTRY_INTERVAL", "PRUNE_AFTER", "Registrar"]

logger = logging.getLogger(__name__)

#: Seconds between two refreshes of a supervisor's row.
DEFAULT_REGISTRY_INTERVAL = 5.0
#: Rows not refreshed for this many seconds are deleted when another worker registers.
PRUNE_AFTER = 3600.0
#: Longest the supervisor waits for its rows to be deleted at shutdown.
UNREGISTER_TIMEOUT = 5.0


class Registrar(Service):
    """Keeps one supervisor's rows in the registry of each database its pools use."""

    def __init__(
        self, worker_id: str, pools: Callable[[], Iterable[Pool]], *, interval: float
    ) -> None:
        self.worker_id = worker_id
        self.pools = pools
        self.interval = interval
        self.host = socket.gethostname()
        self.pid = os.getpid()
        # database (store.where) -> (the store it was registered through, started_at)
        self._registered: dict[str, tuple[JobStore, float]] = {}

    def _record(self, store: JobStore, started_at: float) -> WorkerRecord:
        pools: list[dict[str, Any]] = []
        for pool in self.pools():
            queue = pool.queue
            if queue.closed or pool.stopped or queue.store.where != store.where:
                continue
            pools.append(
                {
                    "name": pool.name,
                    "queue": queue.name,
                    "concurrency": pool.concurrency,
                    "active": pool.active,
                    "processed": pool.processed,
                    "failed": pool.failed,
                }
            )
        return WorkerRecord(
            id=self.worker_id,
            host=self.host,
            pid=self.pid,
            started_at=started_at,
            last_seen=store.clock(),
            pools=pools,
        )

    async def register(self, queue: Queue) -> None:
        """Record the supervisor in ``queue``'s database, if it is not there yet."""
        store = queue.store
        if store.where in self._registered:
            await self._refresh(store.where)
            return
        started_at = store.clock()
        try:
            with anyio.CancelScope(shield=True):
                pruned = await store.register_worker(
                    self._record(store, started_at), started_at - PRUNE_AFTER
                )
        except PersistQError as exc:
            log_event(
                logger,
                logging.WARNING,
                "service_failed",
                f"registering the worker failed: {exc}",
                worker=self.worker_id,
            )
            return
        self._registered[store.where] = (store, started_at)
        log_event(
            logger,
            logging.DEBUG,
            "worker_registered",
            f"worker {self.worker_id} registered",
            worker=self.worker_id,
        )
        if pruned:
            log_event(
                logger,
                logging.INFO,
                "workers_pruned",
                f"{pruned} stale worker(s) pruned from the registry",
                count=pruned,
            )

    def _open_store(self, where: str) -> JobStore | None:
        store, _ = self._registered[where]
        if store.is_open:
            return store
        for pool in self.pools():
            if not pool.queue.closed and pool.queue.store.where == where:
                return pool.queue.store
        return None

    async def _refresh(self, where: str) -> None:
        store = self._open_store(where)
        if store is None:
            return
        started_at = self._registered[where][1]
        with anyio.CancelScope(shield=True):
            await store.refresh_worker(self._record(store, started_at), store.clock() - PRUNE_AFTER)

    async def tick(self) -> None:
        """Refresh the heartbeat and pool counters of every row."""
        for where in list(self._registered):
            await self._refresh(where)

    async def unregister_all(self) -> None:
        """Delete the supervisor's rows (clean shutdown); a database that fails is logged and
        its row left to expire."""
        for where in list(self._registered):
            store = self._open_store(where)
            self._registered.pop(where, None)
            if store is None:
                continue
            try:
                with anyio.CancelScope(shield=True), anyio.move_on_after(UNREGISTER_TIMEOUT):
                    await store.unregister_worker(self.worker_id)
            except PersistQError as exc:
                log_event(
                    logger,
                    logging.WARNING,
                    "service_failed",
                    f"removing the worker from the registry failed: {exc}",
                    worker=self.worker_id,
                )
                continue
            log_event(
                logger,
                logging.DEBUG,
                "worker_unregistered",
                f"worker {self.worker_id} unregistered",
                worker=self.worker_id,
            )
