"""The dashboard's JSON API over real HTTP: what it shows, what it does, what it refuses."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest

import persistq_async as pq
from tests.web.conftest import TOKEN, prepare

pytestmark = pytest.mark.timeout(90)

JSON = {"Content-Type": "application/json"}
AUTH = {**JSON, "X-PersistQ-Token": TOKEN}


@pytest.fixture
async def prepared(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    database = str(tmp_path / "jobs.db")
    return database, await prepare(database)


async def test_the_overview_counts_every_queue_by_state(
    serve: Any, prepared: tuple[str, dict[str, Any]]
) -> None:
    database, _ = prepared
    server = serve(database)
    async with httpx.AsyncClient(base_url=server.url) as client:
        data = (await client.get("/api/overview")).json()
    queues = {q["name"]: q for q in data["queues"]}
    assert sorted(queues) == ["emails", "misc", "reports"]
    emails, reports, misc = queues["emails"], queues["reports"], queues["misc"]
    assert (emails["queued"], emails["running"], emails["done"], emails["total"]) == (1, 1, 2, 4)
    assert (reports["queued"], reports["dead"], reports["ready"]) == (2, 1, 2)
    assert (misc["cancelled"], misc["queued"], misc["scheduled"], misc["ready"]) == (1, 1, 1, 0)
    assert misc["lag_seconds"] is None  # nothing ready, so nothing waits
    assert reports["lag_seconds"] is not None
    assert reports["lag_seconds"] >= 0
    assert data["totals"]["total"] == 9


async def test_throughput_counts_the_attempts_of_the_last_hour(
    serve: Any, prepared: tuple[str, dict[str, Any]]
) -> None:
    database, _ = prepared
    server = serve(database)
    async with httpx.AsyncClient(base_url=server.url) as client:
        data = (await client.get("/api/throughput")).json()
    assert data["buckets"] == 60
    assert data["bucket_seconds"] == 60
    assert sum(data["queues"]["emails"]["acked"]) == 2
    assert sum(data["queues"]["reports"]["nacked"]) == 3
    assert sum(data["total"]["acked"]) == 2


async def test_a_job_shows_payload_result_and_every_attempt(
    serve: Any, prepared: tuple[str, dict[str, Any]]
) -> None:
    database, ids = prepared
    server = serve(database)
    async with httpx.AsyncClient(base_url=server.url) as client:
        dead = (await client.get(f"/api/jobs/{ids['dead']}")).json()
        done = (await client.get(f"/api/jobs/{ids['emails'][0]}")).json()
    assert dead["state"] == "dead"
    assert dead["queue"] == "reports"
    assert dead["payload"] == {"report": "monthly"}
    assert [a["outcome"] for a in dead["history"]] == ["nacked"] * 3
    assert dead["history"][2]["error"] == "ValueError: attempt 3 went wrong"
    assert dead["last_error"] == "ValueError: attempt 3 went wrong"
    assert done["result"] == "sent"
    assert done["state"] == "done"


async def test_keyset_pages_walk_every_job_once_both_ways(serve: Any, tmp_path: Path) -> None:
    database = str(tmp_path / "jobs.db")
    async with pq.Queue(database, name="bulk") as q:
        ids = await q.put_many([{"n": i} for i in range(23)])
        await q.put_many([{"n": i} for i in range(5)], priority=7)
    server = serve(database)
    seen: list[int] = []
    pages: list[list[int]] = []
    async with httpx.AsyncClient(base_url=server.url) as client:
        url = "/api/queues/bulk/jobs?limit=10&priority=0"
        page = (await client.get(url)).json()
        assert page["newer"] is None
        while True:
            pages.append([j["id"] for j in page["jobs"]])
            seen += pages[-1]
            if page["older"] is None:
                break
            page = (await client.get(f"{url}&before={page['older']}")).json()
        assert seen == sorted(ids, reverse=True)  # newest first, each once, filter kept
        assert [len(p) for p in pages] == [10, 10, 3]
        # and back: from the last page to the newer ones
        back = (await client.get(f"{url}&after={pages[2][0]}")).json()
        assert [j["id"] for j in back["jobs"]] == pages[1]
        assert back["newer"] == pages[1][0]
        assert back["older"] == pages[1][-1]
        first = (await client.get(f"{url}&after={pages[1][0]}")).json()
        assert [j["id"] for j in first["jobs"]] == pages[0]
        assert first["newer"] is None
        one = (await client.get(f"/api/queues/bulk/jobs?id={ids[3]}")).json()
        assert [j["id"] for j in one["jobs"]] == [ids[3]]
        dead = (await client.get("/api/jobs?state=dead")).json()
        assert dead["jobs"] == []


BAD_REQUESTS = [
    ("/api/jobs/999999", 404, "no job 999999"),
    ("/jobs/999999", 404, "no job 999999"),
    ("/api/jobs/abc", 400, "job id: expected an integer"),
    ("/jobs/abc", 400, "job id: expected an integer"),
    ("/api/jobs/0", 400, "job id: must be >= 1"),
    ("/api/queues/nope/jobs", 404, "no queue named 'nope'"),
    ("/queues/nope", 404, "no queue named"),
    ("/api/jobs?state=zombie", 400, "state: unknown state 'zombie'"),
    ("/api/jobs?limit=100000", 400, "limit: must be <= 500"),
    ("/api/jobs?limit=ten", 400, "limit: expected an integer"),
    ("/api/jobs?before=3&after=1", 400, "give one or the other"),
    ("/api/jobs?colour=red", 400, "unknown parameter 'colour'"),
    ("/api/jobs?state=dead&state=done", 400, "given 2 times"),
    ("/api/jobs?tag=%01", 400, "tag"),
    ("/api/nothing-here", 404, "not found"),
    ("/nothing-here", 404, "not found"),
]


async def test_bad_requests_get_a_status_and_a_message_never_a_traceback(
    serve: Any, prepared: tuple[str, dict[str, Any]]
) -> None:
    database, _ = prepared
    server = serve(database)
    async with httpx.AsyncClient(base_url=server.url) as client:
        for path, status, fragment in BAD_REQUESTS:
            response = await client.get(path)
            assert response.status_code == status, (path, response.text)
            assert fragment in response.text, (path, response.text)
            assert "Traceback" not in response.text
            if path.startswith("/api/"):
                assert response.json() == {"error": response.json()["error"], "status": status}
            else:
                assert response.headers["content-type"].startswith("text/html")
                assert "<script>" not in response.text
            assert "script-src 'self'" in response.headers["content-security-policy"]
        # markup in a path comes back escaped on the error page
        escaped = await client.get("/jobs/%3Cscript%3Ealert(1)")
        assert escaped.status_code == 400
        nowhere = await client.get("/%3Cscript%3Ealert(1)%3C%2Fscript%3E")
        assert nowhere.status_code == 404
        assert "<script>alert(1)" not in nowhere.text
        assert "<script>alert(1)" not in escaped.text
        assert "&lt;script&gt;" in escaped.text
    output = server.stop()
    assert "Traceback" not in output, output


async def test_mutations_need_the_token_json_and_the_same_origin(
    serve: Any, prepared: tuple[str, dict[str, Any]]
) -> None:
    database, ids = prepared
    server = serve(database)
    url = f"/api/jobs/{ids['dead']}/requeue"
    async with httpx.AsyncClient(base_url=server.url) as client:
        refused = [
            (await client.post(url, headers=JSON, content="{}"), 401, "needs the dashboard token"),
            (
                await client.post(url, headers={**JSON, "X-PersistQ-Token": "guess"}, content="{}"),
                403,
                "wrong dashboard token",
            ),
            # what a cross-site HTML form can send: no custom header, a form body
            (
                await client.post(url, data={"x": "1"}, headers={"Origin": "http://evil.test"}),
                403,
                "cross-site",
            ),
            (
                await client.post(
                    url,
                    headers={**AUTH, "Origin": "http://evil.test"},
                    content="{}",
                ),
                403,
                "cross-site request from origin 'http://evil.test'",
            ),
            (
                await client.post(
                    url,
                    headers={**AUTH, "Sec-Fetch-Site": "cross-site"},
                    content="{}",
                ),
                403,
                "cross-site",
            ),
            (
                await client.post(url, headers={"X-PersistQ-Token": TOKEN}, data={"x": "1"}),
                415,
                "must be JSON",
            ),
            (await client.get(url), 405, ""),
        ]
        for response, status, fragment in refused:
            assert response.status_code == status, response.text
            assert fragment in response.text
        assert (await client.get(f"/api/jobs/{ids['dead']}")).json()["state"] == "dead"

        own = server.url  # the dashboard's own origin is fine
        ok = await client.post(url, headers={**AUTH, "Origin": own}, content="{}")
        assert ok.status_code == 200, ok.text
        assert ok.json() == {"touched": 1}
        again = await client.post(url, headers=AUTH, content="{}")
        assert again.status_code == 409
        assert "only done, dead or cancelled jobs can be requeued" in again.json()["error"]
        assert (await client.post("/api/jobs/999999/delete", headers=AUTH)).status_code == 404
        assert (
            await client.post(f"/api/jobs/{ids['dead']}/explode", headers=AUTH)
        ).status_code == 400
    async with pq.Queue(database, name="reports") as q:
        info = await q.job(ids["dead"])
        assert info is not None
        assert info.state is pq.JobState.QUEUED
        assert info.attempts == 0
        assert len(info.history) == 3  # history kept


async def test_without_a_token_the_dashboard_is_read_only_and_says_so(
    serve: Any, prepared: tuple[str, dict[str, Any]]
) -> None:
    database, ids = prepared
    for options, reason in (
        ({"token": None}, "no token configured"),
        ({"token": TOKEN, "read_only": True}, "--read-only"),
    ):
        server = serve(database, **options)
        async with httpx.AsyncClient(base_url=server.url) as client:
            info = (await client.get("/api/info")).json()
            assert info["writable"] is False
            assert reason in info["read_only_reason"]
            assert reason in (await client.get("/")).text
            response = await client.post(
                f"/api/jobs/{ids['dead']}/requeue", headers=AUTH, content="{}"
            )
            assert response.status_code == 403
            assert "read-only" in response.json()["error"]
            purge = await client.post(
                "/api/queues/reports/purge", headers=AUTH, json={"state": "queued"}
            )
            assert purge.status_code == 403
    async with pq.Queue(database, name="reports") as q:
        assert (await q.stats()).dead == 1
        assert (await q.stats()).queued == 2


async def test_bulk_actions_report_what_they_touched(
    serve: Any, prepared: tuple[str, dict[str, Any]]
) -> None:
    database, ids = prepared
    server = serve(database)
    async with httpx.AsyncClient(base_url=server.url) as client:
        cancel = await client.post(
            "/api/jobs/bulk",
            headers=AUTH,
            json={"action": "cancel", "ids": [*ids["reports"], 999999]},
        )
        assert cancel.status_code == 200, cancel.text
        body = cancel.json()
        assert body["touched"] == 2  # the two queued ones; the dead one had finished
        assert sorted(s["id"] for s in body["skipped"]) == [ids["dead"], 999999]
        requeue_all = await client.post(
            "/api/queues/reports/requeue", headers=AUTH, json={"state": "cancelled"}
        )
        assert requeue_all.json() == {"touched": 2}
        bad = await client.post(
            "/api/queues/reports/requeue", headers=AUTH, json={"state": "queued"}
        )
        assert bad.status_code == 400
        assert "only done, dead or cancelled" in bad.json()["error"]
        running = await client.post(
            "/api/queues/emails/purge", headers=AUTH, json={"state": "running"}
        )
        assert running.status_code == 400
        assert "cannot be purged" in running.json()["error"]
        purge = await client.post("/api/queues/reports/purge", headers=AUTH, json={"state": "dead"})
        assert purge.json() == {"touched": 1}
        for payload, fragment in (
            ({"action": "requeue", "ids": []}, "ids: expected a non-empty list"),
            ({"action": "requeue", "ids": ["1"]}, "ids: expected a non-empty list"),
            ({"action": "requeue", "ids": list(range(1, 1002))}, "at most 1000"),
            ({"action": "smash", "ids": [1]}, "action: expected one of"),
        ):
            response = await client.post("/api/jobs/bulk", headers=AUTH, json=payload)
            assert response.status_code == 400
            assert fragment in response.json()["error"]
        broken = await client.post("/api/jobs/bulk", headers=AUTH, content="{not json")
        assert broken.status_code == 400
        assert "not valid JSON" in broken.json()["error"]
    async with pq.Queue(database, name="reports") as q:
        s = await q.stats()
        assert (s.queued, s.dead, s.cancelled) == (2, 0, 0)


async def test_a_payload_the_serializer_cannot_read_is_shown_not_crashed_on(
    serve: Any, tmp_path: Path
) -> None:
    class Opaque:
        def dumps(self, value: Any) -> bytes:
            return b"\x80\x81 not json"

        def loads(self, data: bytes) -> Any:
            return data

    database = str(tmp_path / "jobs.db")
    async with pq.Queue(database, name="odd", serializer=Opaque()) as q:
        job_id = await q.put("anything")
    server = serve(database)
    async with httpx.AsyncClient(base_url=server.url) as client:
        listing = await client.get("/api/queues/odd/jobs")
        one = await client.get(f"/api/jobs/{job_id}")
        page = await client.get(f"/jobs/{job_id}")
    assert listing.status_code == 200
    assert "not valid JSON" in listing.json()["jobs"][0]["decode_error"]
    assert one.status_code == 200
    assert "not valid JSON" in one.json()["decode_error"]
    assert page.status_code == 200


async def test_mounted_under_a_prefix_in_a_host_application(
    serve: Any, prepared: tuple[str, dict[str, Any]]
) -> None:
    database, ids = prepared
    server = serve(database, prefix="/ops/queues")
    async with httpx.AsyncClient(base_url=server.url) as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert 'href="/ops/queues/static/dashboard.css"' in page.text
        assert 'data-base="/ops/queues"' in page.text
        assert (await client.get("/static/dashboard.js")).status_code == 200
        overview = (await client.get("/api/overview")).json()
        assert {q["name"] for q in overview["queues"]} == {"emails", "misc", "reports"}
        origin = server.url.removesuffix("/ops/queues")
        done = await client.post(
            f"/api/jobs/{ids['dead']}/requeue", headers={**AUTH, "Origin": origin}, content="{}"
        )
        assert done.status_code == 200, done.text
        missing = await client.get("/api/jobs/999999")
        assert missing.status_code == 404
        assert missing.json()["status"] == 404
    output = server.stop()
    assert "Traceback" not in output, output


async def test_jobs_filter_by_tag_and_show_tags_and_headers(serve: Any, tmp_path: Path) -> None:
    database = str(tmp_path / "jobs.db")
    async with pq.Queue(database, name="mail") as q:
        plain = await q.put({"n": 1})
        vip = await q.put({"n": 2}, tags=["vip", "eu"], headers={"trace": "abc"})
        eu = await q.put({"n": 3}, tags=["eu"])
    server = serve(database)
    async with httpx.AsyncClient(base_url=server.url) as client:
        both = (await client.get("/api/queues/mail/jobs?tag=eu")).json()
        one = (await client.get("/api/jobs?tag=vip")).json()
        job = (await client.get(f"/api/jobs/{vip}")).json()
        by_id = (await client.get(f"/api/queues/mail/jobs?id={plain}&tag=eu")).json()
    assert [j["id"] for j in both["jobs"]] == [eu, vip]
    assert [j["id"] for j in one["jobs"]] == [vip]
    assert job["tags"] == ["vip", "eu"]
    assert job["headers"] == {"trace": "abc"}
    assert by_id["jobs"] == []


async def test_the_workers_api_lists_a_live_supervisor_and_its_pools(
    serve: Any, tmp_path: Path
) -> None:
    database = str(tmp_path / "jobs.db")

    async def handler(job: pq.Job) -> None:
        return None

    async with pq.Queue(database, name="mail") as q:
        await q.put({"n": 1})
        server = serve(database)
        async with pq.Supervisor(grace=1) as sup:
            await sup.add(q, handler, concurrency=3, name="mailers")
            await q.join(timeout=10)
            async with httpx.AsyncClient(base_url=server.url) as client:
                data = (await client.get("/api/workers")).json()
    assert data["available"] is True
    [worker] = [w for w in data["workers"] if w["pid"] == os.getpid()]
    assert worker["alive"] is True
    [pool] = worker["pools"]
    assert pool["name"] == "mailers"
    assert pool["queue"] == "mail"
    assert pool["concurrency"] == 3


@pytest.mark.postgres
async def test_a_database_that_goes_away_answers_503_with_a_reason(serve: Any) -> None:
    """On PostgreSQL: the dashboard's database is dropped under it; pages and API say so."""
    from sqlalchemy.engine import make_url

    from tests.conftest import PG_URL, pg_admin

    assert PG_URL is not None
    name = f"h_web_gone_{os.getpid()}"
    await pg_admin(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await pg_admin(PG_URL, f'CREATE DATABASE "{name}"')
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    try:
        async with pq.Queue(url, name="mail") as q:
            await q.put({"n": 1})
        server = serve(url)
        async with httpx.AsyncClient(base_url=server.url) as client:
            assert (await client.get("/api/overview")).status_code == 200
            await pg_admin(PG_URL, f'DROP DATABASE "{name}" WITH (FORCE)')
            api = await client.get("/api/overview")
            page = await client.get("/jobs/1")
        assert api.status_code == 503
        assert name in api.json()["error"]
        assert page.status_code == 503
        assert "Traceback" not in page.text
        assert "Traceback" not in server.stop()
    finally:
        await pg_admin(PG_URL, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_the_schedules_api_lists_every_queues_schedules(serve: Any, tmp_path: Path) -> None:
    database = str(tmp_path / "jobs.db")
    async with pq.Queue(database, name="reports") as q:
        await q.schedule(
            "nightly", cron="30 2 * * *", timezone="Europe/Paris", payload={"report": "sales"}
        )
        await q.schedule("pulse", every=60, payload={"report": "pulse"}, tags=["ops"])
        await q.pause_schedule("pulse")
        await q.sibling("mail").schedule("digest", every=3600, payload={"to": "all"})
        nightly = next(s for s in await q.schedules() if s.name == "nightly")
    server = serve(database)
    async with httpx.AsyncClient(base_url=server.url) as client:
        data = (await client.get("/api/schedules")).json()
        refused = await client.get("/api/schedules?queue=mail")
    by_name = {(s["queue"], s["name"]): s for s in data["schedules"]}
    assert sorted(by_name) == [("mail", "digest"), ("reports", "nightly"), ("reports", "pulse")]
    assert by_name["reports", "nightly"]["spec"] == "cron '30 2 * * *' Europe/Paris"
    assert nightly.next_run_at is not None
    assert by_name["reports", "nightly"]["next_run_at"] == nightly.next_run_at.isoformat()
    assert by_name["reports", "nightly"]["preview"] == '{"report": "sales"}'
    assert by_name["reports", "pulse"]["paused"] is True
    assert by_name["reports", "pulse"]["next_run_at"] is None
    assert by_name["reports", "pulse"]["tags"] == ["ops"]
    assert by_name["mail", "digest"]["spec"] == "every 3600s"
    assert refused.status_code == 400
    assert "unknown parameter 'queue'" in refused.json()["error"]
