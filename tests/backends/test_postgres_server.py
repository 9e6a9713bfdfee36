"""PostgreSQL only: connection failures name the server and cause, and cleaning is exclusive."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

import persistq_async as pq
from persistq_async.backends.postgres import _CLEAN_LOCK_KEY

pytestmark = [pytest.mark.postgres, pytest.mark.timeout(60)]


@pytest.mark.parametrize(
    ("change", "cause"),
    [
        ({"port": 1}, "Connect call failed"),
        ({"username": "no_such_role"}, 'role "no_such_role" does not exist'),
        ({"database": "no_such_db"}, 'database "no_such_db" does not exist'),
        ({"host": "no-such-host.invalid"}, "Name or service not known|not known|resolve"),
    ],
)
async def test_unusable_server_is_a_clear_error_without_the_password(
    pg_url: str, change: dict[str, object], cause: str
) -> None:
    url = make_url(pg_url).set(password="s3cret-pw", **change)  # type: ignore[arg-type]
    with pytest.raises(pq.DatabaseError) as info:
        async with pq.Queue(url.render_as_string(hide_password=False), name="x"):
            pass
    message = str(info.value)
    assert re.search(cause, message), message
    assert str(url.host) in message
    assert "s3cret-pw" not in message


async def test_cleaning_is_skipped_while_another_process_cleans(
    pg_url: str, queue_name: str
) -> None:
    now = [1_000_000.0]
    async with pq.Queue(pg_url, name=queue_name, retention_seconds=10, clock=lambda: now[0]) as q:
        job_id = await q.put({"n": 1})
        job = await q.get_nowait()
        assert job is not None
        await job.ack()
        now[0] += 60
        engine = create_async_engine(pg_url)
        try:
            async with engine.connect() as other:
                await other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _CLEAN_LOCK_KEY})
                assert await q.clean() == 0
                assert await q.job(job_id) is not None
                await other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _CLEAN_LOCK_KEY})
        finally:
            await engine.dispose()
        assert await q.clean() >= 1
        assert await q.job(job_id) is None
