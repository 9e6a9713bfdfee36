"""The claim as an op whose common case runs as one native statement (PostgreSQL).

A claim of a queue without flow control, while no lease has expired, is one statement in
autocommit (:meth:`.Backend.native_claim`): no rescue to run, no gate to consult. Otherwise, and
on backends without native writes, it is :func:`.transactions.claim` in a transaction as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import flow
from . import transactions as tx
from .records import ClaimResult, JobRecord, new_lease_token
from .writer import BulkOp

__all__ = ["ClaimOp"]


class ClaimOp(BulkOp[ClaimResult]):
    """Lease up to ``limit`` ready jobs of ``queue``; see the module docstring."""

    __slots__ = ("ctx", "lease_seconds", "limit", "queue")

    def __init__(
        self,
        ctx: tx.Context,
        queue: str,
        limit: int,
        lease_seconds: float,
        on_abandon: Callable[[ClaimResult], None],
    ) -> None:
        super().__init__(
            lambda conn: tx.claim(conn, ctx, queue, limit, lease_seconds),
            None,
            on_abandon,
            kind="claim",
        )
        self.ctx = ctx
        self.queue = queue
        self.limit = limit
        self.lease_seconds = lease_seconds

    @classmethod
    def run_together(cls, conn: Any, ops: list[ClaimOp]) -> bool:
        """Claims of one batch run one by one (each its own statements)."""
        return False

    @classmethod
    async def run_native(cls, driver: Any, ops: list[ClaimOp]) -> list[ClaimOp] | None:
        """Each claim as one native statement; those that need more go the usual way."""
        return [op for op in ops if not await op._native(driver)]

    async def _native(self, driver: Any) -> bool:
        ctx = self.ctx
        now = ctx.clock()
        found = await ctx.backend.native_claim(
            driver,
            queue=self.queue,
            limit=self.limit,
            now=now,
            token=new_lease_token(),
            expires=now + self.lease_seconds,
        )
        if found is None:
            return False
        rows, due, expiry = found
        records = [JobRecord.from_mapping(r) for r in rows]
        records.sort(key=lambda r: (-r.priority, r.id))
        flow.note_cap(ctx.capped, self.queue, None)
        next_due = None
        if len(records) < self.limit:
            next_due = flow.retry_at(None, len(records), due, expiry, now)
        self.result = ClaimResult(records=records, next_due_at=next_due)
        return True
