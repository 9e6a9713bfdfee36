"""Running ``persistq`` in a subprocess (piped, or on a pseudo-terminal) and preparing databases
for it."""

from __future__ import annotations

import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

import persistq_async as pq

#: A directory whose ``rich`` package cannot be imported: on PYTHONPATH it hides the real one,
#: as if the ``cli`` extra were not installed.
NO_RICH = Path(__file__).with_name("_no_rich")


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m persistq_async ARGS`` with stdout and stderr piped; never a traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "persistq_async", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done


@dataclass
class Terminal:
    """``persistq`` on a pseudo-terminal: everything it writes lands in ``output``."""

    process: subprocess.Popen[bytes]
    master: int
    output: str = ""
    _raw: bytearray = field(default_factory=bytearray)

    def read(self, seconds: float) -> None:
        """Read what arrives for up to ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                return
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the other side closed
                return
            if not chunk:
                return
            self._raw += chunk
            self.output = self._raw.decode("utf-8", "replace")

    def wait_for(self, check: Callable[[str], bool], timeout: float = 20) -> None:
        """Read until ``check(output)`` holds."""
        end = time.monotonic() + timeout
        while not check(self.output):
            assert time.monotonic() < end, f"not seen within {timeout}s:\n{self.output}"
            self.read(0.1)

    def send(self, data: bytes) -> None:
        """Type ``data``."""
        os.write(self.master, data)

    def finish(self, timeout: float = 20) -> int:
        """Wait for the process to exit (reading its output meanwhile); its exit code."""
        end = time.monotonic() + timeout
        while self.process.poll() is None:
            if time.monotonic() > end:
                self.process.send_signal(signal.SIGKILL)
                raise AssertionError(f"still running after {timeout}s:\n{self.output}")
            self.read(0.1)
        self.read(0.2)
        os.close(self.master)
        assert "Traceback" not in self.output, self.output
        return self.process.returncode


def _take_terminal() -> None:
    """In the child, after setsid: make the pty its controlling terminal, so that Ctrl-C typed
    on it is a SIGINT, as in a real terminal."""
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def start_in_terminal(
    *args: str, cwd: Path, env: dict[str, str] | None = None, columns: int = 120
) -> Terminal:
    """Start ``python -m persistq_async ARGS`` with a pseudo-terminal as stdin, stdout and
    stderr, ``columns`` wide."""
    master, slave = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    environment = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    environment.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "persistq_async", *args],
        cwd=cwd,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**environment, **(env or {})},
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    os.close(slave)
    return Terminal(process, master)


@dataclass(frozen=True)
class Seeded:
    """What :func:`seed` put in a database."""

    dead: list[int]  # queue "mail"
    queued: list[int]  # queue "mail"
    done: list[int]  # queue "default"
    delayed: list[int]  # queue "reports"


def seed(url: str) -> Seeded:
    """Two dead jobs and one queued in ``mail``, one done job in ``default``, one delayed job
    in ``reports``."""

    async def run() -> Seeded:
        async with pq.Queue(url, name="mail", max_attempts=1) as mail:
            dead = await mail.put_many([{"to": "x@example.org"}, {"to": "<script>"}])
            for _ in dead:
                job = await mail.get_nowait()
                assert job is not None
                await job.nack(error="SMTPError: mailbox unavailable")
            queued = await mail.put_many([{"to": "y@example.org"}])
            default = mail.sibling("default")
            done = await default.put_many(["report"])
            job = await default.get_nowait()
            assert job is not None
            await job.ack({"ok": True})
            delayed = await mail.sibling("reports").put_many(["weekly"], delay=3600)
        return Seeded(dead=dead, queued=queued, done=done, delayed=delayed)

    return anyio.run(run)


def states(url: str, queue: str) -> dict[int, str]:
    """Every job of ``queue`` and its state."""

    async def run() -> dict[int, str]:
        async with pq.Queue(url, name=queue, create=False) as q:
            return {i.id: i.state.value for i in await q.list_jobs(limit=10_000)}

    return anyio.run(run)
