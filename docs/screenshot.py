"""Take docs/dashboard.png: the dashboard's overview of a database with an hour of history.

    python docs/screenshot.py [--out docs/dashboard.png] [--chromium /usr/bin/chromium]

Fills a temporary SQLite file (three queues; jobs put, acked, retried and dead over the last
hour, written with a clock set back in time), serves it with ``persistq dashboard`` on a free
port of 127.0.0.1, and photographs the overview in headless Chromium (Debian's package, driven
by Playwright). Needs the ``test`` extra.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import persistq_async as pq

HERE = Path(__file__).resolve().parent
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


class Clock:
    """Epoch seconds set by hand, so that an hour of history can be written in a second."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def fill(database: Path) -> None:
    rng = random.Random(14)
    end = time.time()
    clock = Clock(end - 3600)
    shapes = {"emails": (12, 0.06), "reports": (3, 0.2), "thumbnails": (20, 0.02)}
    for name, (per_minute, failure_rate) in shapes.items():
        # durability "normal": a throwaway file, no need to fsync every ack
        async with pq.Queue(
            database, name=name, clock=clock, max_attempts=3, durability="normal"
        ) as q:
            for minute in range(60):
                clock.now = end - 3600 + minute * 60
                # busier in the middle of the hour
                count = max(1, int(per_minute * (0.5 + minute / 60) * rng.uniform(0.6, 1.4)))
                await q.put_many(
                    [{"n": minute, "to": f"user{i}@example.org"} for i in range(count)]
                )
                while (job := await q.get_nowait()) is not None:
                    clock.now += rng.uniform(0.1, 0.5)
                    if rng.random() < failure_rate:
                        await job.nack(delay=0, error="ConnectionError: upstream timed out")
                    else:
                        await job.ack({"ok": True})
            clock.now = end
            await q.put_many([{"backlog": i} for i in range(rng.randint(3, 40))])
            await q.put_many([{"later": i} for i in range(rng.randint(1, 9))], delay=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def shoot(url: str, out: Path, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 620})
        page.goto(url)
        page.wait_for_selector('tr[data-queue="thumbnails"]')
        page.wait_for_selector("#chart-total rect")
        page.screenshot(path=str(out), full_page=True)
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "dashboard.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="persistq-shot-") as tmp:
        database = Path(tmp) / "jobs.db"
        asyncio.run(fill(database))
        port = free_port()
        command = ["persistq_async", "dashboard", "--url", str(database), "--port", str(port)]
        server = subprocess.Popen(
            [sys.executable, "-m", *command, "--token", "screenshot"],
            stdout=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(HERE.parent)},
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise SystemExit("the dashboard did not start") from None
                    time.sleep(0.1)
            shoot(f"http://127.0.0.1:{port}/", args.out, args.chromium)
        finally:
            server.terminate()
            server.wait(10)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
