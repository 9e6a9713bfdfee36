"""Several processes on one SQLite file: the WAL lock is exclusive across processes.

Five writer processes put, claim and ack on one file at once, each recording when it held the file's
lock (docs/architecture.md, "the WAL lock": every commit, its checkpoint, and every open and close
of the library's connections run under it). No two of the recorded intervals may overlap, whichever
processes they come from; the file's integrity check must pass afterwards.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import persistq_async as pq
from persistq_async.backends.wal_lock import LOCK_SUFFIX, WalLock

pytestmark = pytest.mark.timeout(120)

CHILD = Path(__file__).with_name("_wal_lock_child.py")
WRITERS = 5
SECONDS = 4.0


@pytest.mark.parametrize("durability", ["full", "normal"])
async def test_intervals_held_under_the_lock_never_overlap_across_five_writers(
    tmp_path: Path, durability: str
) -> None:
    db = tmp_path / "jobs.db"
    async with pq.Queue(db, name="setup"):
        pass  # the schema exists before the writers race
    outs = [tmp_path / f"w{i}.json" for i in range(WRITERS)]
    children = [
        subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; the wait is bounded
            [sys.executable, str(CHILD), str(db), str(SECONDS), str(out), durability],
            stderr=subprocess.PIPE,
        )
        for out in outs
    ]
    for child in children:
        _, err = child.communicate(timeout=90)
        assert child.returncode == 0, err.decode(errors="replace")
    results = [json.loads(out.read_text()) for out in outs]
    held = sorted((start, end, r["pid"]) for r in results for start, end in r["intervals"])
    assert all(r["done"] > 0 and r["done"] == r["total"] for r in results), results
    overlaps = [(a, b) for a, b in itertools.pairwise(held) if b[0] < a[1]]
    assert overlaps == [], f"{len(overlaps)} overlapping holds, e.g. {overlaps[:3]}"
    # The processes did run at once: the holder changes from one process to another often.
    handovers = sum(1 for a, b in itertools.pairwise(held) if a[2] != b[2])
    print(f"{len(held)} holds by {WRITERS} processes, {handovers} handovers between processes")
    assert handovers >= WRITERS * 5
    assert Path(f"{db}{LOCK_SUFFIX}").exists()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


# Run in a fresh interpreter: forking the test process, which may have threads, is unsafe.
_FORK_SCRIPT = textwrap.dedent(
    """
    import os, sys, threading
    from pathlib import Path
    from persistq_async.backends.wal_lock import wal_lock_for

    db = Path(sys.argv[1])
    lock = wal_lock_for(db)
    with lock:
        pass  # the lock file is open in the parent before the fork
    to_child, from_parent = os.pipe()
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: is it let in while the parent holds the lock?
        code = 1
        try:
            os.read(to_child, 4)  # the parent holds it now
            mine = wal_lock_for(db)
            got = threading.Event()
            threading.Thread(target=lambda: (mine.acquire(), got.set()), daemon=True).start()
            os.write(to_parent, b"early" if got.wait(0.5) else b"waits")
            code = 0 if got.wait(20) else 2  # let in once the parent has released it
        finally:
            os._exit(code)
    with lock:
        os.write(from_parent, b"held")
        verdict = os.read(from_child, 5)
    _, status = os.waitpid(pid, 0)
    assert wal_lock_for(db) is lock  # the parent's registry is untouched
    print(verdict.decode(), os.waitstatus_to_exitcode(status))
    """
)


def test_a_forked_child_does_not_share_the_parents_lock(tmp_path: Path) -> None:
    # flock belongs to an open file description, which fork shares: a child that reused the
    # parent's descriptor would be let in while the parent holds the lock.
    done = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, str(tmp_path / "jobs.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["waits", "0"]


def test_try_acquire_never_waits_and_leaves_nothing_held_when_refused(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    lock = WalLock(db)
    assert lock.try_acquire()
    other = WalLock(db)  # another open of the lock file: as another process would hold it
    assert not other.try_acquire()  # flock refuses at once
    assert not other.locked()  # and the thread lock it took first is given back
    lock.release()
    assert other.try_acquire()
    # Held by another process.
    other.release()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys\n"
            f"fd = os.open({str(db) + LOCK_SUFFIX!r}, os.O_RDWR)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "sys.stdin.readline()\n",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert not lock.try_acquire()
        assert not lock.locked()
    finally:
        holder.communicate("\n", timeout=10)
    assert lock.try_acquire()  # free again once the other process let go
    lock.release()
    # Held by another thread of this process: the in-process lock refuses first.
    held, let_go = threading.Event(), threading.Event()

    def hold() -> None:
        with lock:
            held.set()
            let_go.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert held.wait(10)
        assert not lock.try_acquire()
    finally:
        let_go.set()
        thread.join(10)
    assert lock.try_acquire()
    lock.release()
