"""Storage faults: a full database or disk, write I/O errors, read-only, damaged and foreign files,
and missing or stale ``-wal`` files (issue 6, "Storage faults").

For each fault: the caller gets a typed :class:`persistq_async.PersistQError` (``DatabaseError`` or
``SchemaError``) whose message names the cause, jobs whose ``put`` returned stay intact,
``PRAGMA integrity_check`` is ok afterwards, and the queue works again once the fault is removed.
A file that is refused is left byte for byte as it was.

Some faults need root (``mount`` of a small tmpfs, a read-only bind mount, ``chattr +i``): they are
skipped, with the reason, where the system does not allow them. Child processes are this file run
as a script (see ``_child_main`` at the bottom), in the pattern of ``tests/integration/_worker.py``:
one flushed line per event, so the parent knows exactly which puts had returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import queue as stdlib_queue
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Connection

import persistq_async as pq
from persistq_async.testing import run_write

pytestmark = pytest.mark.timeout(60)

CHILD = Path(__file__).resolve()
QUEUE_NAME = "faults"
#: Longest a child may take to print its next line (its start imports SQLAlchemy).
LINE_TIMEOUT = 20.0
EXIT_TIMEOUT = 30.0


# ---------------------------------------------------------------------- helpers (synchronous)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files(directory: Path) -> dict[str, str]:
    """Every file of ``directory`` and its hash: what a refused open must leave as it was."""
    return {p.name: digest(p) for p in sorted(directory.iterdir()) if p.is_file()}


def integrity(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [row[0] for row in conn.execute("PRAGMA integrity_check")]


def stored_ids(path: Path) -> set[int]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM persistq_jobs")}


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=30)


def chattr(flag: str, *paths: Path) -> None:
    result = run("chattr", flag, *map(str, paths))
    assert result.returncode == 0, result.stderr


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``chattr +i``: not even root may write (``chmod 0444`` does not stop root)."""
    chattr("+i", *paths)
    try:
        yield
    finally:
        chattr("-i", *paths)


def require_chattr(probe: Path) -> None:
    """Skip unless ``chattr +i`` works here (root, on a file system with the flag)."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed; cannot make a file read-only for root")
    probe.touch()
    result = run("chattr", "+i", str(probe))
    if result.returncode != 0:
        probe.unlink()
        pytest.skip(f"chattr +i is not permitted here: {result.stderr.strip()}")
    chattr("-i", probe)
    probe.unlink()


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    """``mount ARGS TARGET``, skipping the test when mounting is not permitted."""
    target.mkdir()
    result = run("mount", *args, str(target))
    if result.returncode != 0:
        pytest.skip(f"mount {' '.join(args)} is not permitted here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        if run("umount", str(target)).returncode != 0:
            run("umount", "-l", str(target))


def assert_names(error: BaseException, path: Path, *causes: str) -> None:
    """A typed error whose message names the database and one of ``causes``."""
    assert isinstance(error, pq.PersistQError)
    assert isinstance(error, pq.DatabaseError)
    message = str(error)
    assert str(path) in message, message
    assert any(cause in message.lower() for cause in causes), message


class Child:
    """This file run as a script in a child process, its stdout read line by line."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: stdlib_queue.Queue[str | None] = stdlib_queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def line(self) -> str:
        try:
            line = self._lines.get(timeout=LINE_TIMEOUT)
        except stdlib_queue.Empty:
            raise AssertionError(f"the child printed nothing for {LINE_TIMEOUT} s") from None
        if line is None:
            raise AssertionError(f"the child exited early: {self.finish()}")
        return line

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.finish()

    def finish(self) -> str:
        """Wait for the exit, close the pipes; the rest of stderr."""
        self.proc.wait(timeout=EXIT_TIMEOUT)
        self._reader.join(timeout=EXIT_TIMEOUT)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read()
        self.proc.stderr.close()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return err


async def make_queue_file(path: Path, count: int, *, name: str = QUEUE_NAME) -> list[int]:
    """A closed queue file (WAL checkpointed and removed) holding ``count`` queued jobs."""
    async with pq.Queue(path, name=name) as q:
        return await q.put_many([{"i": i, "pad": "p" * 200} for i in range(count)])


async def assert_jobs_intact(q: pq.Queue, ids: list[int]) -> None:
    """Every job in ``ids`` is there, queued, with a payload ``{"i": ...}`` as it was put."""
    for job_id in ids:
        info = await q.job(job_id)
        assert info is not None, f"job {job_id} was lost"
        assert info.state is pq.JobState.QUEUED, info
        assert isinstance(info.payload, dict)
        assert isinstance(info.payload.get("i"), int), info.payload


async def put_until_it_fails(q: pq.Queue, size: int) -> tuple[list[int], pq.PersistQError]:
    """Put ``size``-byte payloads one by one until a put fails: the ids accepted, the error."""
    accepted: list[int] = []
    for _ in range(1000):  # the faults here stop it after a few dozen
        try:
            accepted.append(await q.put({"big": "x" * size}))
        except pq.PersistQError as exc:
            return accepted, exc
    raise AssertionError("1000 puts and no fault")


async def assert_works(q: pq.Queue) -> None:
    """The queue accepts a put, and the job can be delivered and acked."""
    job_id = await q.put({"after": "recovery"}, priority=100)
    job = await q.get(timeout=5)
    assert job.id == job_id
    assert job.payload == {"after": "recovery"}
    await job.ack()
    info = await q.job(job_id)
    assert info is not None
    assert info.state is pq.JobState.DONE


# ---------------------------------------------------------------------- a full database


def _limit_pages(extra: int) -> Callable[[Connection], tuple[int, int]]:
    """An operation for the writer thread: ``max_page_count`` = the pages in use + ``extra``.

    ``max_page_count`` belongs to one connection, and the library's only write connection lives
    on its writer thread; there is no public way to reach it, so this goes through
    ``persistq_async.testing.run_write`` with a plain function of the connection, the same
    shape as every put.
    """

    def fn(conn: Connection) -> tuple[int, int]:
        used = int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
        limit = conn.exec_driver_sql(f"PRAGMA max_page_count = {used + extra}").scalar_one()
        return used, int(limit)

    return fn


async def test_a_full_database_refuses_puts_keeps_jobs_and_recovers(db_path: Path) -> None:
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        ids = await q.put_many([{"i": i} for i in range(20)])
        used, limit = await run_write(q, _limit_pages(2))
        assert limit == used + 2
        accepted, error = await put_until_it_fails(q, 3000)
        assert_names(error, db_path, "full")
        assert not isinstance(error, pq.SchemaError)
        assert "sqlite3.OperationalError" in repr(error.__cause__)
        before = await q.stats()
        # All or nothing: a put_many that does not fit leaves nothing behind.
        with pytest.raises(pq.DatabaseError, match="full"):
            await q.put_many([{"big": "y" * 3000} for _ in range(10)])
        after = await q.stats()  # the counts: the lag and the window move with the clock
        assert (after.queued, after.total) == (before.queued, before.total)
        assert before.queued == len(ids) + len(accepted)
        await assert_jobs_intact(q, ids)
        for job_id in accepted:
            assert await q.job(job_id) is not None
        # Remove the fault: raise the limit on the same connection.
        await run_write(q, _limit_pages(1_000_000))
        more = await q.put_many([{"big": "y" * 3000} for _ in range(10)])
        assert len(more) == 10
        await assert_works(q)
    assert integrity(db_path) == ["ok"]
    assert set(ids) | set(accepted) | set(more) <= stored_ids(db_path)


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only), unmounted afterwards."""
    with mounted(tmp_path / "tmpfs", "-t", "tmpfs", "-o", "size=1m", "tmpfs") as mnt:
        yield mnt


def remount_tmpfs(mnt: Path, size: str) -> None:
    result = run("mount", "-o", f"remount,size={size}", str(mnt))
    assert result.returncode == 0, result.stderr


async def test_a_full_disk_refuses_puts_keeps_jobs_and_recovers(small_tmpfs: Path) -> None:
    db = small_tmpfs / "jobs.db"
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        ids = await q.put_many([{"i": i} for i in range(20)])
        accepted, error = await put_until_it_fails(q, 8000)
        assert_names(error, db, "full")
        assert accepted, "the disk was full before the first big put"
        # A second failure is the same typed error: nothing half-written got in the way.
        with pytest.raises(pq.DatabaseError, match="full"):
            await q.put({"big": "x" * 8000})
        assert (await q.stats()).queued == len(ids) + len(accepted)
        await assert_jobs_intact(q, ids)
        # Remove the fault on the live queue.
        remount_tmpfs(small_tmpfs, "16m")
        await assert_works(q)
    assert integrity(db) == ["ok"]
    assert set(ids) | set(accepted) <= stored_ids(db)


async def test_closing_on_a_full_disk_loses_nothing(small_tmpfs: Path) -> None:
    db = small_tmpfs / "jobs.db"
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        ids = await q.put_many([{"i": i} for i in range(20)])
        accepted, error = await put_until_it_fails(q, 8000)
        assert_names(error, db, "full")
        ids += accepted
    # The close could not checkpoint into a full disk: what it left must still be whole.
    assert integrity(db) == ["ok"]
    assert stored_ids(db) == set(ids)
    remount_tmpfs(small_tmpfs, "16m")
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        assert (await q.stats()).queued == len(ids)
        await assert_works(q)
    assert integrity(db) == ["ok"]


# ---------------------------------------------------------------------- a write I/O error


async def test_a_write_error_in_a_child_is_typed_and_loses_nothing(db_path: Path) -> None:
    child = Child("fsize", str(db_path))
    base = [int(x) for x in child.line().split()[1:]]
    accepted: list[int] = []
    while (line := child.line()).startswith("put "):
        accepted.append(int(line.split()[1]))
    kind, _, message = line.partition(" ")
    stderr = child.finish()
    assert child.proc.returncode == 0, stderr
    assert kind == "error-DatabaseError", line
    assert str(db_path) in message
    assert "i/o error" in message.lower() or "full" in message.lower(), message
    assert accepted, "the file size limit was hit before the first put"
    # (A second put after the first failure got the same typed error: the child checks it and
    # exits non-zero otherwise.)
    # Afterwards, without the limit: everything whose put returned is there, the file is whole.
    assert integrity(db_path) == ["ok"]
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        await assert_jobs_intact(q, base)
        for job_id in accepted:
            assert await q.job(job_id) is not None, f"job {job_id} was lost"
        await assert_works(q)
    assert integrity(db_path) == ["ok"]


# ---------------------------------------------------------------------- read-only files


async def test_an_immutable_file_is_refused_untouched_then_reopens(db_path: Path) -> None:
    require_chattr(db_path.with_name("probe"))
    ids = await make_queue_file(db_path, 10)
    before = files(db_path.parent)
    with immutable(db_path), pytest.raises(pq.DatabaseError) as info:
        async with pq.Queue(db_path, name=QUEUE_NAME):
            pass
    assert_names(info.value, db_path, "read-only", "readonly")
    assert files(db_path.parent) == before
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        await assert_jobs_intact(q, ids)
        await assert_works(q)
    assert integrity(db_path) == ["ok"]


async def test_a_file_made_read_only_while_open_fails_puts_then_recovers(db_path: Path) -> None:
    require_chattr(db_path.with_name("probe"))
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        ids = await q.put_many([{"i": i} for i in range(10)])
        wal = db_path.with_name(db_path.name + "-wal")
        assert wal.exists()
        # Not the -shm: it is memory-mapped, and a write to an immutable mapping is a SIGBUS.
        with immutable(db_path, wal):
            with pytest.raises(pq.DatabaseError) as info:
                await q.put({"while": "read-only"})
            assert_names(info.value, db_path, "i/o error", "read-only", "readonly")
            await assert_jobs_intact(q, ids)
        assert (await q.stats()).queued == len(ids)
        await assert_works(q)
    assert integrity(db_path) == ["ok"]
    assert stored_ids(db_path) >= set(ids)


async def test_a_read_only_directory_is_named(db_path: Path) -> None:
    require_chattr(db_path.with_name("probe"))
    ids = await make_queue_file(db_path, 5)
    before = files(db_path.parent)
    # The file is writable, but its -wal and -shm cannot be created beside it.
    with immutable(db_path.parent), pytest.raises(pq.DatabaseError) as info:
        async with pq.Queue(db_path, name=QUEUE_NAME):
            pass
    assert_names(info.value, db_path, "writable", "read-only", "readonly")
    assert files(db_path.parent) == before
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        await assert_jobs_intact(q, ids)
        await assert_works(q)


async def test_a_read_only_mount_is_refused_then_the_writable_path_works(tmp_path: Path) -> None:
    source = tmp_path / "data"
    source.mkdir()
    db = source / "jobs.db"
    ids = await make_queue_file(db, 5)
    before = files(source)
    with mounted(tmp_path / "ro", "--bind", "-o", "ro", str(source)) as ro:
        with pytest.raises(pq.DatabaseError) as info:
            async with pq.Queue(ro / "jobs.db", name=QUEUE_NAME):
                pass
        assert_names(info.value, ro / "jobs.db", "read-only", "readonly")
    assert files(source) == before
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        await assert_jobs_intact(q, ids)
        await assert_works(q)


# ---------------------------------------------------------------------- damaged and foreign files


def _truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _truncate_mid_page(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2 + 1234)


def _zero(path: Path) -> None:
    path.write_bytes(bytes(path.stat().st_size))


@pytest.mark.parametrize(
    ("damage", "causes"),
    [
        pytest.param(_truncate_half, ("malformed",), id="truncated-at-a-page"),
        pytest.param(_truncate_mid_page, ("malformed",), id="truncated-mid-page"),
        pytest.param(_zero, ("not an sqlite database",), id="zeroed"),
    ],
)
async def test_a_damaged_file_is_refused_untouched(
    db_path: Path, damage: Callable[[Path], None], causes: tuple[str, ...]
) -> None:
    ids = await make_queue_file(db_path, 200)
    good = db_path.read_bytes()
    damage(db_path)
    before = files(db_path.parent)
    with pytest.raises(pq.SchemaError) as info:
        async with pq.Queue(db_path, name=QUEUE_NAME):
            pass
    assert_names(info.value, db_path, *causes)
    assert files(db_path.parent) == before, "a refused file was changed (or -wal/-shm left)"
    # Never silently turned into an empty queue: a second try is refused the same way.
    with pytest.raises(pq.SchemaError):
        async with pq.Queue(db_path, name=QUEUE_NAME):
            pass
    # Remove the fault (restore the file): everything is there.
    db_path.write_bytes(good)
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        await assert_jobs_intact(q, ids)
        await assert_works(q)
    assert integrity(db_path) == ["ok"]


def _foreign_database(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.execute("CREATE INDEX users_email ON users (email)")
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, payload BLOB)")
        conn.executemany("INSERT INTO users (email) VALUES (?)", [(f"u{i}@x",) for i in range(50)])
        conn.commit()


async def test_a_foreign_sqlite_file_is_refused_untouched(db_path: Path) -> None:
    _foreign_database(db_path)
    before = files(db_path.parent)
    with pytest.raises(pq.SchemaError) as info:
        async with pq.Queue(db_path, name=QUEUE_NAME):
            pass
    assert_names(info.value, db_path, "something else")
    assert "users" in str(info.value)
    assert files(db_path.parent) == before
    assert integrity(db_path) == ["ok"]


def _foreign_database_after_a_crash(path: Path) -> None:
    """A foreign WAL-mode database as its application left it when it crashed: a hot -wal."""
    source = path.with_name("app-src.db")
    with contextlib.closing(sqlite3.connect(source, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)")
        conn.execute("INSERT INTO users (email) VALUES ('ada@example.org')")
        shutil.copyfile(source, path)
        shutil.copyfile(source.with_name(source.name + "-wal"), path.with_name(path.name + "-wal"))
    source.unlink()


async def test_a_foreign_database_with_a_hot_wal_is_refused_untouched(db_path: Path) -> None:
    _foreign_database_after_a_crash(db_path)
    before = files(db_path.parent)
    assert set(before) == {db_path.name, db_path.name + "-wal"}
    with pytest.raises(pq.SchemaError) as info:
        async with pq.Queue(db_path, name=QUEUE_NAME):
            pass
    assert_names(info.value, db_path, "something else")
    assert {k: v for k, v in files(db_path.parent).items() if not k.endswith("-shm")} == before


# ---------------------------------------------------------------------- missing and stale -wal


async def test_a_wal_deleted_after_a_crash_loses_only_its_own_jobs(db_path: Path) -> None:
    child = Child("crash-puts", str(db_path))
    base = [int(x) for x in child.line().split()[1:]]
    printed = [int(child.line().split()[1]) for _ in range(20)]
    child.kill()  # mid-writes: it puts without pause
    wal = db_path.with_name(db_path.name + "-wal")
    assert wal.stat().st_size > 0, "the crash left no -wal to lose"
    wal.unlink()
    # By definition the jobs committed only in the -wal are gone; the file is whole and usable.
    assert integrity(db_path) == ["ok"]
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        present = {info.id for info in await q.list_jobs(limit=10_000)}
        assert set(base) <= present, "jobs checkpointed into the file were lost"
        # Exactly those: the later ones were never checkpointed (see _child_crash_puts), and
        # nothing half-applied from the deleted -wal shows up.
        assert present == set(base), sorted(present - set(base))
        assert not present & set(printed)
        await assert_jobs_intact(q, base)
        await assert_works(q)
    assert integrity(db_path) == ["ok"]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"\0" * 50_000, id="zeros"),
        pytest.param(os.urandom(50_000), id="random-bytes"),
        pytest.param(b"\x37\x7f\x06\x82" + b"\0" * 100, id="bad-header"),
    ],
)
async def test_a_stale_invalid_wal_is_ignored(db_path: Path, content: bytes) -> None:
    ids = await make_queue_file(db_path, 50)
    db_path.with_name(db_path.name + "-wal").write_bytes(content)
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        assert (await q.stats()).queued == len(ids)
        await assert_jobs_intact(q, ids)
        await assert_works(q)
    assert integrity(db_path) == ["ok"]


def _copy_wal(source: Path, target: Path) -> None:
    shutil.copyfile(source.with_name(source.name + "-wal"), target.with_name(target.name + "-wal"))


async def _assert_refused_or_intact(db_path: Path, ids: list[int]) -> None:
    """The guarantee: a typed error naming the cause, or the jobs intact and the file whole."""
    try:
        async with pq.Queue(db_path, name=QUEUE_NAME) as q:
            await assert_jobs_intact(q, ids)
            assert (await q.stats()).queued == len(ids)
    except pq.DatabaseError as exc:
        assert_names(exc, db_path, "wal", "malformed", "corrupt")
    else:
        assert integrity(db_path) == ["ok"]


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known limitation (README, Guarantees): SQLite replays a -wal from another database, "
        "since nothing in a WAL names its database; the pages it carries need not include any "
        "that would tell (the schema pages were written before WAL mode). Here every job "
        "silently disappears, integrity_check is still ok, and the queue opens empty. A fix "
        "needs an identity SQLite cannot give cheaply"
    ),
)
async def test_a_wal_from_another_queue_database_is_refused_or_harmless(tmp_path: Path) -> None:
    db_path = tmp_path / "jobs.db"
    ids = await make_queue_file(db_path, 100)
    other = tmp_path / "other" / "jobs.db"
    other.parent.mkdir()
    async with pq.Queue(other, name="other") as q:
        await q.put_many([{"other": i} for i in range(100)])
        _copy_wal(other, db_path)  # committed and synced: what a crash would leave
    await _assert_refused_or_intact(db_path, ids)


@pytest.mark.xfail(
    strict=True,
    reason=(
        "known limitation (README, Guarantees): an older -wal of the same database put back "
        "beside it (restored from a backup) is replayed over newer pages: integrity_check then "
        "reports 'row missing from index', but the queue opens without a word. Detecting it "
        "needs a full integrity_check at every open while a -wal exists, which is whenever "
        "another process has the file open"
    ),
)
async def test_an_older_wal_of_the_same_database_is_refused_or_harmless(db_path: Path) -> None:
    # (How it ends depends on the page layout: with bigger payloads the replayed pages are
    # caught as "malformed" and refused with a SchemaError, which is the right outcome. This
    # layout is the one that opens silently; it is deterministic.)
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        ids = await q.put_many([{"i": i} for i in range(100)])
    old_wal = db_path.with_name("old-wal")
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        ids += await q.put_many([{"i": i} for i in range(100, 150)])
        shutil.copyfile(db_path.with_name(db_path.name + "-wal"), old_wal)
    async with pq.Queue(db_path, name=QUEUE_NAME) as q:
        job = await q.get_nowait()
        assert job is not None
        await job.ack()
        ids.remove(job.id)
        ids += await q.put_many([{"i": i} for i in range(150, 200)])
    assert integrity(db_path) == ["ok"]
    shutil.copyfile(old_wal, db_path.with_name(db_path.name + "-wal"))
    await _assert_refused_or_intact(db_path, ids)


# ---------------------------------------------------------------------- child processes


async def _child_fsize(db: str) -> None:
    """Put until a file size limit makes writing fail; report the error; close cleanly."""
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        base = await q.put_many([{"i": i} for i in range(10)])
        print("base", *base, flush=True)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a fatal signal
        largest = max(p.stat().st_size for p in Path(db).parent.iterdir() if p.is_file())
        resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 64 * 1024, resource.RLIM_INFINITY))
        try:
            for _ in range(10_000):
                print("put", await q.put({"big": "x" * 3000}), flush=True)
        except pq.PersistQError as exc:
            first = exc
        else:
            raise SystemExit("the file size limit never stopped a put")
        try:
            await q.put({"big": "again"})
        except pq.PersistQError as exc:
            if type(exc) is not type(first):
                raise SystemExit(f"a second put failed differently: {exc!r}") from exc
        print(f"error-{type(first).__name__} {first}", flush=True)


async def _child_crash_puts(db: str) -> None:
    """Put jobs and checkpoint them into the file; then put more, into the -wal, until killed."""
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        base = await q.put_many([{"i": i} for i in range(30)])
    print("base", *base, flush=True)  # closed: checkpointed into the file, -wal removed
    async with pq.Queue(db, name=QUEUE_NAME) as q:
        # 20 puts of a few pages each: below the writer's automatic checkpoint (every
        # AUTOCHECKPOINT_PAGES, 1,000), so every one of them lives only in the -wal.
        for i in range(20):
            print("put", await q.put({"wal": i}), flush=True)
        await asyncio.sleep(3600)  # until SIGKILL


def _child_main(argv: list[str]) -> None:
    role, db = argv
    roles = {"fsize": _child_fsize, "crash-puts": _child_crash_puts}
    asyncio.run(roles[role](db))


if __name__ == "__main__":
    _child_main(sys.argv[1:])
