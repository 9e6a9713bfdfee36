"""A PostgreSQL server of the test's own, which the test may stop and start.

The shared test server (``PERSISTQ_TEST_PG_URL``) must never be stopped, so a test that restarts
its database runs this one: ``initdb`` into a temporary directory, on a free port on 127.0.0.1,
with the binaries of the highest ``/usr/lib/postgresql/*/bin`` (as ``.ci/start-postgres.sh``
finds them; CI installs them there). Run as the ``postgres`` OS user when the tests run as root
(``initdb`` refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

__all__ = ["PrivatePostgres", "find_bindir"]


def find_bindir() -> Path | None:
    """The highest PostgreSQL version's bin directory with initdb and pg_ctl, or None."""
    found = [
        Path(d)
        for d in glob.glob("/usr/lib/postgresql/*/bin")
        if os.access(Path(d) / "initdb", os.X_OK) and os.access(Path(d) / "pg_ctl", os.X_OK)
    ]
    if not found:
        return None

    def version(path: Path) -> list[int]:
        return [int(p) for p in path.parent.name.split(".") if p.isdigit()]

    return max(found, key=version)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivatePostgres:
    """One throwaway server: :meth:`start`, :meth:`stop`, :meth:`start` again, :meth:`destroy`."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="persistq-private-pg."))
        self.data = self.base / "data"
        self.log = self.base / "server.log"
        self.port = _free_port()
        self._as_root = os.geteuid() == 0
        if self._as_root:
            shutil.chown(self.base, "postgres", "postgres")
        self.base.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        self._run("initdb", "--version")  # the binaries answer; fail here rather than later
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                "\n# persistq private test server\n"
                "listen_addresses = '127.0.0.1'\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.base}'\n"
                "max_connections = 100\n"
                "fsync = off\n"
            )

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the ``postgres`` database."""
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, cwd="/", capture_output=True, timeout=120)

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back open transactions, close every connection)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", "60")

    def running(self) -> bool:
        """Whether the server is running."""
        command = [str(self.bindir / "pg_ctl"), "status", "-D", str(self.data)]
        if self._as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, cwd="/", capture_output=True, timeout=30, check=False)
        return done.returncode == 0

    def destroy(self) -> None:
        """Stop the server if it runs, and delete its directory."""
        try:
            if self.running():
                self.stop("immediate")
        finally:
            for _ in range(3):
                shutil.rmtree(self.base, ignore_errors=True)
                if not self.base.exists():
                    break
                time.sleep(0.2)
