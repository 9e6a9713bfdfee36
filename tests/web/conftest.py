"""Fixtures of the dashboard tests: a real uvicorn in a subprocess, httpx, headless Chromium.

The browser is Debian's ``chromium`` (``apt-get install chromium``), driven by Playwright for
Python; Playwright's own browser download is never used. Without it the browser tests are
skipped locally with a hint, and fail in CI (``CI=true`` or ``PERSISTQ_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import persistq_async as pq

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("PERSISTQ_TEST_CHROMIUM", "/usr/bin/chromium")
# Read at import: the autouse fixture that isolates the configuration removes PERSISTQ_* later.
REQUIRE_BROWSER = (
    os.environ.get("CI", "").lower() == "true" or os.environ.get("PERSISTQ_REQUIRE_BROWSER") == "1"
)
BROWSER_HINT = (
    "no headless browser: install Debian's chromium (apt-get install -y chromium) and the test "
    "extra (playwright), then run pytest again"
)
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "s3cret-token"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "playwright is not installed; " + BROWSER_HINT
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"{CHROMIUM} is missing; " + BROWSER_HINT
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip (locally) or fail (CI) the browser tests when there is no browser."""
    why = browser_missing()
    if why is None:
        return
    for item in items:
        if "browser" in item.fixturenames:
            if REQUIRE_BROWSER:
                raise pytest.UsageError(f"the browser tests must run in CI: {why}")
            item.add_marker(pytest.mark.skip(reason=why))


def free_port() -> int:
    """A port nobody listens on right now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A dashboard served by uvicorn in a subprocess."""

    url: str
    process: subprocess.Popen[str]
    database: str
    output: str | None = None

    def stop(self) -> str:
        """Stop it (SIGTERM, then SIGKILL) and return what it printed. Idempotent."""
        if self.output is not None:
            return self.output
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        out, _ = self.process.communicate()
        self.output = out or ""
        return self.output


def start_server(argv: list[str], url: str, database: str, cwd: Path) -> Server:
    """Run ``argv`` and wait until ``url`` answers (or the process dies)."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    server = Server(url=url, process=process, database=database)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the dashboard server exited: {server.stop()}")
        try:
            httpx.get(url + "/api/info", timeout=1)
            return server
        except httpx.TransportError:
            time.sleep(0.1)
    output = server.stop()
    raise AssertionError(f"the dashboard server did not answer within 30 s: {output}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(database, token=..., read_only=..., prefix=...)`` starts a dashboard server."""
    servers: list[Server] = []

    def start(
        database: str,
        *,
        token: str | None = TOKEN,
        read_only: bool = False,
        prefix: str | None = None,
    ) -> Server:
        port = free_port()
        argv = [sys.executable, "-m", "tests.web._server", database, str(port)]
        if token is not None:
            argv += ["--token", token]
        if read_only:
            argv.append("--read-only")
        base = f"http://127.0.0.1:{port}"
        if prefix is not None:
            argv += ["--prefix", prefix]
            base += prefix
        server = start_server(argv, base, database, tmp_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    """Headless Chromium from the system packages (never a downloaded one)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh page; a script error on it fails the test."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.set_default_timeout(15_000)
    yield page
    await context.close()
    assert not errors, f"script errors on the page: {errors}"


async def prepare(database: str) -> dict[str, Any]:
    """A database with three queues: counts to see, and a dead job with three attempts."""
    ids: dict[str, Any] = {}
    async with pq.Queue(database, name="emails", max_attempts=3, lease_seconds=600) as q:
        ids["emails"] = await q.put_many([{"to": f"user{i}@example.org"} for i in range(4)])
        for _ in range(2):
            job = await q.get(timeout=5)
            await job.ack("sent")
        running = await q.get(timeout=5)
        ids["running"] = running.id
        # leave it running: the lease is long enough for the test
    async with pq.Queue(database, name="reports", max_attempts=3, backoff_base=0.01) as q:
        dead = await q.put({"report": "monthly"})
        for attempt in range(3):
            job = await q.get(timeout=5)
            await job.nack(delay=0, error=f"ValueError: attempt {attempt + 1} went wrong")
        ids["dead"] = dead
        ids["reports"] = [dead, *await q.put_many([{"report": "daily"}, {"report": "weekly"}])]
    async with pq.Queue(database, name="misc") as q:
        cancelled = await q.put({"n": 1}, delay=3600)
        await q.cancel(cancelled)
        ids["scheduled"] = await q.put({"n": 2}, delay=3600)
    return ids
