"""The dashboard in headless Chromium (Debian's package, driven by Playwright for Python).

Each test serves a prepared database with a real uvicorn on 127.0.0.1 and drives the pages as an
operator would: read the counts, open a dead job, requeue it, be refused without the token.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

import persistq_async as pq
from tests.web.conftest import TOKEN, free_port, prepare, start_server

pytestmark = pytest.mark.timeout(120)


async def expect_text(
    page: Any, selector: str, text: str | re.Pattern[str], within_ms: float = 10_000
) -> None:
    """Wait until the element's text equals ``text`` (the pages refresh themselves)."""
    from playwright.async_api import expect

    await expect(page.locator(selector)).to_have_text(text, timeout=within_ms)


async def unlock(page: Any, token: str = TOKEN) -> None:
    await page.fill("#token-input", token)
    await page.click("#token-save")
    await expect_text(page, "#token-state", "actions unlocked")


async def confirm(page: Any, expected: str) -> None:
    dialog = page.locator("dialog#confirm")
    await dialog.wait_for(state="visible")
    assert expected in await page.locator("#confirm-text").inner_text()
    await page.click("#confirm-ok")


async def test_the_overview_shows_the_counts_of_a_prepared_database(
    serve: Any, browser: Any, page: Any, tmp_path: Path
) -> None:
    database = str(tmp_path / "jobs.db")
    await prepare(database)
    server = serve(database)
    await page.goto(server.url + "/")
    row = 'tr[data-queue="{}"] td[data-col="{}"]'
    await expect_text(page, row.format("emails", "queued"), "1")
    expected = {
        "emails": {"running": "1", "done": "2", "dead": "0", "total": "4"},
        "reports": {"queued": "2", "ready": "2", "dead": "1", "total": "3"},
        "misc": {"queued": "1", "scheduled": "1", "ready": "0", "cancelled": "1"},
    }
    for queue, columns in expected.items():
        for column, value in columns.items():
            await expect_text(page, row.format(queue, column), value)
    await expect_text(page, 'tfoot th[data-col="total"]', "9")
    # the chart has a bar for the last minute's attempts: 2 acked, 3 nacked
    assert await page.locator('#chart-total rect[data-outcome="acked"]').count() >= 1
    assert await page.locator('#chart-total rect[data-outcome="nacked"]').count() >= 1
    await page.click('a[href="/queues/reports"]')
    await page.wait_for_url("**/queues/reports")
    await expect_text(page, 'a[data-state="dead"]', "dead (1)")


async def test_open_a_dead_job_see_its_attempts_requeue_it_and_watch_it_leave(
    serve: Any, browser: Any, page: Any, tmp_path: Path
) -> None:
    database = str(tmp_path / "jobs.db")
    ids = await prepare(database)
    dead = ids["dead"]
    server = serve(database)
    await page.goto(server.url + "/dead")
    link = page.locator(f'#jobs tr[data-id="{dead}"] a[href="/jobs/{dead}"]')
    await link.wait_for()
    await expect_text(
        page, f'#jobs tr[data-id="{dead}"] td.error', "ValueError: attempt 3 went wrong"
    )
    await link.click()
    await page.wait_for_url(f"**/jobs/{dead}")
    await expect_text(page, "#job-state", "dead")
    outcomes = page.locator("#attempts tbody tr td:nth-child(5)")
    from playwright.async_api import expect

    await expect(outcomes).to_have_text(["nacked", "nacked", "nacked"])
    errors = page.locator("#attempts tbody tr td:nth-child(6)")
    await expect(errors).to_have_text([f"ValueError: attempt {i} went wrong" for i in (1, 2, 3)])
    assert await page.locator("#timeline rect").count() == 3
    await expect(page.locator("#payload")).to_contain_text('"report": "monthly"')

    await unlock(page)
    await page.click("[data-action=requeue]")
    await confirm(page, f"Requeue job {dead}?")
    await expect_text(page, "#flash", "requeued 1 job")
    await expect_text(page, "#job-state", "queued")

    await page.goto(server.url + "/dead")
    from playwright.async_api import expect

    await expect(page.locator("#no-jobs")).to_be_visible()
    assert await page.locator(f'#jobs tr[data-id="{dead}"]').count() == 0
    async with pq.Queue(database, name="reports") as q:
        info = await q.job(dead)
        assert info is not None
        assert info.state is pq.JobState.QUEUED


async def test_a_dead_job_leaves_the_open_dead_list_by_itself(
    serve: Any, browser: Any, page: Any, tmp_path: Path
) -> None:
    """The list refreshes: a requeue done elsewhere shows without a reload; so does a new death."""
    database = str(tmp_path / "jobs.db")
    ids = await prepare(database)
    server = serve(database)
    await page.goto(server.url + "/dead?queue=reports")
    row = page.locator(f'#jobs tr[data-id="{ids["dead"]}"]')
    await row.wait_for()
    async with pq.Queue(database, name="reports", max_attempts=1) as q:
        await q.requeue(ids["dead"])
        await row.wait_for(state="detached", timeout=10_000)
        doomed = await q.put({"report": "doomed"})
        job = await q.get(timeout=5)
        while job.id != doomed:
            await job.ack()
            job = await q.get(timeout=5)
        await job.fail(error="<b>not bold</b>")
    await page.locator(f'#jobs tr[data-id="{doomed}"]').wait_for(timeout=10_000)
    await expect_text(page, f'#jobs tr[data-id="{doomed}"] td.error', "<b>not bold</b>")


async def test_a_mutating_action_without_the_token_is_refused(
    serve: Any, browser: Any, page: Any, tmp_path: Path
) -> None:
    database = str(tmp_path / "jobs.db")
    ids = await prepare(database)
    server = serve(database)
    await page.goto(server.url + f"/jobs/{ids['dead']}")
    await expect_text(page, "#job-state", "dead")
    await page.click("[data-action=requeue]")
    await confirm(page, "Requeue job")
    await expect_text(page, "#flash", re.compile(r"refused: this action needs the dashboard token"))
    # a wrong token is refused when it is entered, and actions stay locked
    await page.fill("#token-input", "not-the-token")
    await page.click("#token-save")
    await expect_text(page, "#flash", "refused: wrong dashboard token")
    await expect_text(page, "#token-state", "actions locked")
    await page.click("[data-action=delete]")
    await confirm(page, "Delete job")
    await expect_text(page, "#flash", re.compile("needs the dashboard token"))
    await expect_text(page, "#job-state", "dead")
    async with pq.Queue(database, name="reports") as q:
        info = await q.job(ids["dead"])
        assert info is not None
        assert info.state is pq.JobState.DEAD


async def test_without_a_token_the_pages_say_read_only_and_disable_actions(
    serve: Any, browser: Any, page: Any, tmp_path: Path
) -> None:
    database = str(tmp_path / "jobs.db")
    ids = await prepare(database)
    server = serve(database, token=None)
    await page.goto(server.url + f"/jobs/{ids['dead']}")
    banner = page.locator("#readonly-banner")
    await banner.wait_for()
    assert "no token configured" in await banner.inner_text()
    assert await page.locator("#token-form").count() == 0
    assert await page.locator("[data-action=requeue]").is_disabled()


async def test_markup_in_payloads_and_errors_shows_as_text(
    serve: Any, browser: Any, page: Any, tmp_path: Path
) -> None:
    database = str(tmp_path / "jobs.db")
    evil = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
    async with pq.Queue(database, name="<i>queue</i>") as q:
        job_id = await q.put({"html": evil}, dedupe_key="<b>key</b>")
        job = await q.get(timeout=5)
        await job.fail(error=evil)
    server = serve(database)
    for path in ("/", "/dead", "/queues/%3Ci%3Equeue%3C%2Fi%3E", f"/jobs/{job_id}"):
        await page.goto(server.url + path)
        await expect_text(page, "#updated", re.compile("^updated"))
        assert await page.evaluate("window.pwned") is None, path
        assert await page.locator("main img, main script, main i, main b").count() == 0, path
    await expect_text(page, "#last-error", evil)
    assert json.loads(await page.locator("#payload").inner_text()) == {"html": evil}
    await expect_text(page, "#fields dd >> nth=0", "<i>queue</i>")
    await page.goto(server.url + "/")
    await expect_text(page, 'tr[data-queue="<i>queue</i>"] td a >> nth=0', "<i>queue</i>")


async def test_bulk_requeue_of_a_selection_asks_with_a_count_and_reports_it(
    serve: Any, browser: Any, page: Any, tmp_path: Path
) -> None:
    database = str(tmp_path / "jobs.db")
    async with pq.Queue(database, name="batch", max_attempts=1) as q:
        ids = await q.put_many([{"n": i} for i in range(5)])
        for _ in ids:
            job = await q.get(timeout=5)
            await job.nack(error="boom")
    server = serve(database)
    await page.goto(server.url + "/queues/batch?state=dead")
    await page.locator(f'#jobs tr[data-id="{ids[0]}"]').wait_for()
    await unlock(page)
    for job_id in ids[:3]:
        await page.check(f'#jobs input[data-id="{job_id}"]')
    await expect_text(page, "#selection", "3 jobs selected")
    await page.click("[data-bulk=requeue]")
    await confirm(page, "Requeue 3 jobs?")
    await expect_text(page, "#flash", "requeued 3 jobs")
    await expect_text(page, 'a[data-state="dead"]', "dead (2)")
    # every dead job of the queue, in one go
    await page.click("#requeue-state")
    await confirm(page, "Requeue all 2 dead jobs of queue batch?")
    await expect_text(page, "#flash", "requeued 2 jobs")
    await expect_text(page, 'a[data-state="dead"]', "dead (0)")
    await expect_text(page, 'a[data-state="queued"]', "queued (5)")


async def test_the_demo_then_persistq_dashboard_requeues_the_dead_job(
    browser: Any, page: Any, tmp_path: Path
) -> None:
    """The issue's done-when, with the commands a user types: ``persistq demo --db demo.db``,
    then ``persistq dashboard --url demo.db --token ...``; see the dead job, requeue it."""
    with anyio.fail_after(60):
        demo = await anyio.run_process(
            [sys.executable, "-m", "persistq_async", "demo", "--db", "demo.db"],
            cwd=tmp_path,
            check=False,
        )
    assert demo.returncode == 0, demo.stderr.decode()
    assert "persistq dashboard --url demo.db" in demo.stdout.decode()
    port = free_port()
    server = start_server(
        [
            sys.executable,
            "-m",
            "persistq_async",
            "dashboard",
            "--url",
            "demo.db",
            "--port",
            str(port),
            "--token",
            TOKEN,
        ],
        f"http://127.0.0.1:{port}",
        str(tmp_path / "demo.db"),
        tmp_path,
    )
    from playwright.async_api import expect

    try:
        await page.goto(server.url + "/dead")
        row = page.locator("#jobs tbody tr")
        await row.first.wait_for()
        assert await row.count() == 1
        assert "mailbox does not exist" in await row.locator("td.error").inner_text()
        assert '{"task": "doomed"}' in await row.locator("td.payload").inner_text()
        await unlock(page)
        await page.check("#jobs tbody input[type=checkbox]")
        await page.click("[data-bulk=requeue]")
        await confirm(page, "Requeue 1 job?")
        await expect_text(page, "#flash", "requeued 1 job")
        await expect(page.locator("#no-jobs")).to_be_visible()
        await expect(page.locator("#jobs tbody tr")).to_have_count(0)
    finally:
        output = server.stop()
    assert "Traceback" not in output, output


@pytest.mark.slow
async def test_the_screenshot_script_photographs_the_overview(browser: Any, tmp_path: Path) -> None:
    """docs/screenshot.py (which made docs/dashboard.png) still runs."""
    out = tmp_path / "shot.png"
    script = Path(__file__).resolve().parents[2] / "docs" / "screenshot.py"
    with anyio.fail_after(100):
        done = await anyio.run_process(
            [sys.executable, str(script), "--out", str(out)], check=False
        )
    assert done.returncode == 0, done.stderr.decode()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_the_schedules_page_lists_each_schedule_with_its_next_run(
    serve: Any, page: Any, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    database = str(tmp_path / "jobs.db")
    async with pq.Queue(database, name="reports") as q:
        server = serve(database)
        await page.goto(server.url + "/schedules")
        await expect(page.locator("#no-schedules")).to_be_visible()
        await q.schedule("nightly", cron="30 2 * * *", payload={"report": "sales"})
        await q.schedule("pulse", every=60, payload={"report": "pulse"})
        await q.pause_schedule("pulse")
    row = page.locator('#schedules tbody tr[data-schedule="reports/nightly"]')
    await row.wait_for()
    assert await row.locator("td.spec").inner_text() == "cron '30 2 * * *' UTC"
    assert (await row.locator("td.next").inner_text()).startswith("in ")
    assert await row.locator("td.payload").inner_text() == '{"report": "sales"}'
    paused = page.locator('#schedules tbody tr[data-schedule="reports/pulse"] td.next')
    await expect_text(page, '#schedules tbody tr[data-schedule="reports/pulse"] td.next', "paused")
    assert await paused.count() == 1
    assert await page.locator("#no-schedules").is_hidden()
    await page.click('#schedules tbody tr[data-schedule="reports/nightly"] a')
    await page.wait_for_url(server.url + "/queues/reports")


async def test_the_workers_page_shows_a_live_supervisor_and_its_pool(
    serve: Any, browser: Any, page: Any, tmp_path: Path
) -> None:
    database = str(tmp_path / "jobs.db")

    async def handler(job: pq.Job) -> None:
        return None

    async with pq.Queue(database, name="mail") as q:
        await q.put({"n": 1}, tags=["vip"])
        server = serve(database)
        async with pq.Supervisor(grace=1) as sup:
            await sup.add(q, handler, concurrency=4, name="mailers")
            await page.goto(server.url + "/workers")
            pools = page.locator("#workers tbody tr ul.pools li")
            await pools.first.wait_for()
            text = await pools.first.inner_text()
            assert "mailers on mail: " in text
            assert "/4 active" in text
            assert await page.locator("#workers-unavailable").is_hidden()
            await page.goto(server.url + "/queues/mail?tag=vip")
            await expect_text(page, "#jobs tbody tr td.payload span.tag", "vip")
