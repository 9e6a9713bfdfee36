"""Fixtures of the backend conformance suite.

Every test here runs once per backend through ``backend_url`` (tests/conftest.py: an SQLite
file, or the run's own PostgreSQL database); adding a backend means adding it there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

import persistq_async as pq
from tests.conftest import FakeClock


@pytest.fixture
async def cq(backend_url: str, queue_name: str, clock: FakeClock) -> AsyncIterator[pq.Queue]:
    """An open queue driven by ``clock``, with 10 s leases and a 10 s backoff base."""
    q = pq.Queue(
        backend_url,
        name=queue_name,
        clock=clock,
        poll_interval=0.05,
        lease_seconds=10,
        backoff_base=10,
        backoff_max=1000,
    )
    async with q as opened:
        yield opened
