"""The store: every SQL statement on the job path, and the writer that runs them.

Modules, bottom to top (an import-linter contract keeps them in this order):

- :mod:`.records`: the rows that cross the store's boundary, as frozen dataclasses;
- :mod:`.statements`: the prebuilt Core statements and the store's fixed sizes;
- :mod:`.writer`: one transaction per batch of writes, each caller woken with its own result;
- :mod:`.transactions`: the synchronous body of each write, run by the writer;
- :mod:`.schema_setup`: creating, checking and migrating the schema at open;
- :mod:`.wakeups`: per-queue events in a process, the change token across processes;
- :mod:`.reads`: the reads (stats, inspection);
- :mod:`.jobstore`: :class:`JobStore`, the thin async face that the rest of the package calls.
"""

from __future__ import annotations

from .dberror import wrap_db_error
from .jobstore import JobStore
from .records import AttemptRecord, ClaimResult, JobRecord, NewJob
from .statements import EXPIRED_ERROR
from .transactions import Delivery

__all__ = [
    "EXPIRED_ERROR",
    "AttemptRecord",
    "ClaimResult",
    "Delivery",
    "JobRecord",
    "JobStore",
    "NewJob",
    "wrap_db_error",
]
