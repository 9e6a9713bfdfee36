"""The ``persistq`` command: run the demo or a worker, inspect and operate on queues.

The database comes from ``--url``, else the configuration (``PERSISTQ_URL``, ``persistq.toml``,
``[tool.persistq]``), else ``persistq.db`` in the working directory.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anyio

from ._cli import commands, flow, schedules, watch
from ._cli.durations import duration
from ._cli.output import error
from ._http import Listener, Response, Route, bind, parse_address, serve
from ._types import Handler
from .alerts import Alerting
from .errors import (
    ArgumentError,
    ArgumentTypeError,
    DatabaseError,
    JobNotFound,
    JobStateError,
    PersistQError,
    SerializationError,
)
from .job import Job
from .logformat import JSONFormatter
from .pool import check_handler
from .queue import Queue
from .supervisor import DEFAULT_GRACE, Supervisor

__all__ = ["load_handler", "main"]

logger = logging.getLogger("persistq_async.cli")


def load_handler(spec: str) -> Handler:
    """Import ``module.path:attribute`` and check that it is an async handler.

    :raises ArgumentError: the spec is malformed or does not resolve.
    :raises ArgumentTypeError: the object is not a coroutine function.
    """
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ArgumentError(f"handler: expected 'module.path:function', got {spec!r}")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like `python -m`, so a project's own modules resolve
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArgumentError(f"handler: cannot import module {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ArgumentError(
                f"handler: module {module_name!r} has no attribute {attribute!r}"
            ) from None
    return check_handler(target)


# ---------------------------------------------------------------------- demo


async def _demo(path: Path, shown: str | None = None) -> None:
    print(f"persistq demo on {path}")
    async with Queue(path, name="demo", max_attempts=3, backoff_base=0.05, backoff_max=0.2) as q:
        await q.put({"task": "email", "to": "low@example.org"}, priority=-1)
        await q.put({"task": "email", "to": "normal@example.org"})
        await q.put({"task": "email", "to": "urgent@example.org"}, priority=10)
        await q.put({"task": "email", "to": "later@example.org"}, delay=0.3)
        flaky = await q.put({"task": "flaky", "fails": 2})
        doomed = await q.put({"task": "doomed"})
        print(f"put 6 jobs: {await q.stats()}")

        async def handler(job: Job) -> str:
            payload = job.payload
            print(
                f"  job {job.id} attempt {job.attempts}/{job.max_attempts} "
                f"priority {job.priority}: {payload}"
            )
            if payload["task"] == "flaky" and job.attempts <= payload["fails"]:
                raise ConnectionError("smtp server not answering")
            if payload["task"] == "doomed":
                raise ValueError("mailbox does not exist")
            return f"sent to {payload.get('to', 'nobody')}"

        async with Supervisor(grace=2.0) as sup:
            # concurrency 1, so the order of delivery shows priorities and FIFO
            await sup.add(q, handler, concurrency=1, job_timeout=5.0, name="mailers")
            with anyio.fail_after(30):
                await q.join()
        stats = await q.stats()
        print(
            f"stats: queued={stats.queued} running={stats.running} done={stats.done} "
            f"dead={stats.dead} cancelled={stats.cancelled}"
        )
        for job_id in (flaky, doomed):
            info = await q.job(job_id)
            assert info is not None
            print(f"audit trail of job {job_id} ({info.payload['task']}), now {info.state}:")
            for attempt in info.history:
                error = (attempt.error or "").strip().splitlines()
                print(
                    f"  attempt {attempt.attempt}: {attempt.outcome}"
                    + (f" - {error[-1]}" if error else "")
                )
    await _demo_schedule_and_result(path)
    if shown is not None:
        print(f"the demo's database is kept in {path}; see it in a browser with")
        print(f"  persistq dashboard --url {shown} --token <a secret of yours>")
    else:
        print("(`persistq demo --db demo.db` keeps the database, for `persistq dashboard`)")


async def _demo_schedule_and_result(path: Path) -> None:
    """The demo's second part: a schedule firing each second, and a result awaited."""
    async with Queue(path, name="demo-reports") as q:
        await q.schedule("heartbeat", cron="* * * * * *", payload={"task": "heartbeat"})
        print("schedule 'heartbeat' declared: cron '* * * * * *' (every second)")
        ticks: list[Job] = []
        two_ticks = anyio.Event()

        async def reporter(job: Job) -> Any:
            if job.payload["task"] == "heartbeat":
                ticks.append(job)
                print(f"  heartbeat tick {job.run_at:%H:%M:%S} enqueued as job {job.id}")
                if len(ticks) >= 2:
                    two_ticks.set()
                return None
            return {"total": sum(job.payload["numbers"])}

        async with Supervisor(grace=2.0) as sup:
            await sup.add(q, reporter, concurrency=2, name="reporters")
            with anyio.fail_after(30):
                answer = await q.call({"task": "sum", "numbers": [1, 2, 3]}, timeout=30)
                print(f"awaited result of a job: {answer}")
                await two_ticks.wait()
        await q.unschedule("heartbeat")
        print(f"schedule 'heartbeat' fired {len(ticks)} times, one job per tick; removed")


# ---------------------------------------------------------------------- worker


def _monitor_routes(
    args: argparse.Namespace, q: Queue, sup: Supervisor
) -> dict[tuple[str, int], dict[str, Route]]:
    """The HTTP routes ``--metrics`` and ``--health`` ask for, by address (one server when
    both name the same address)."""
    servers: dict[tuple[str, int], dict[str, Route]] = {}
    if args.health is not None:

        async def livez() -> Response:
            # Answering at all shows that the event loop runs.
            return Response(status=200, content_type="text/plain; charset=utf-8", body=b"ok\n")

        async def readyz() -> Response:
            report = await q.health()
            body = json.dumps(report.as_dict(), indent=2).encode() + b"\n"
            return Response(
                status=200 if report.ok else 503, content_type="application/json", body=body
            )

        servers.setdefault(args.health, {}).update({"/livez": livez, "/readyz": readyz})
    if args.metrics is not None:
        from prometheus_client import CollectorRegistry

        from .contrib.prometheus import PersistqCollector, render

        registry = CollectorRegistry()
        collector = PersistqCollector([q], supervisor=sup)
        registry.register(collector)
        collector.subscribe()

        async def metrics() -> Response:
            await collector.refresh()
            body, content_type = render(registry)
            return Response(status=200, content_type=content_type, body=body)

        servers.setdefault(args.metrics, {})["/metrics"] = metrics
    return servers


def _check_monitor_args(args: argparse.Namespace) -> None:
    args.metrics = None if args.metrics is None else parse_address("--metrics", args.metrics)
    args.health = None if args.health is None else parse_address("--health", args.health)
    if args.metrics is not None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise ArgumentError(
                "--metrics: needs prometheus_client: pip install 'persistq_async[prometheus]'"
            ) from None


async def _worker(args: argparse.Namespace) -> None:
    handler = load_handler(args.handler)
    alerting = Alerting.from_config()  # the [alerts] table, checked before anything opens
    _check_monitor_args(args)
    # Bound before anything starts, so that an address in use is a plain error (exit 2).
    listeners: dict[tuple[str, int], Listener] = {}
    for option, address in (("--health", args.health), ("--metrics", args.metrics)):
        if address is not None and address not in listeners:
            listeners[address] = await bind(option, *address)
    # One signal receiver for the whole run: between two receivers the default disposition
    # would be back, and a second SIGTERM arriving then would kill the process outright.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Queue(args.url, name=args.queue) as q, anyio.create_task_group() as tg:
            async with Supervisor(
                grace=args.grace, gc_freeze=args.gc_freeze, alerts=alerting
            ) as sup:
                # Before the pool starts, so that the metrics count its first jobs too.
                for address, routes in _monitor_routes(args, q, sup).items():
                    await tg.start(functools.partial(serve, listeners.pop(address), routes))
                await sup.add(
                    q,
                    handler,
                    concurrency=args.concurrency,
                    job_timeout=args.job_timeout,
                    name=args.queue,
                )
                logger.info(
                    "worker started: queue %s, concurrency %d; SIGINT/SIGTERM to stop",
                    args.queue,
                    args.concurrency,
                    extra={"action": "worker_started", "queue": args.queue},
                )
                async for signum in signals:
                    logger.info(
                        "%s: stopping gracefully (up to %.0fs); again to stop at once",
                        signal.Signals(signum).name,
                        args.grace,
                        extra={"action": "worker_stopping"},
                    )
                    break

                async def second_signal() -> None:
                    async for _ in signals:
                        logger.warning("stopping at once", extra={"action": "worker_stopping"})
                        sup.cancel_running()
                        return

                tg.start_soon(second_signal)
            tg.cancel_scope.cancel()
    logger.info("worker stopped", extra={"action": "worker_stopped"})


# ---------------------------------------------------------------------- dashboard


def _dashboard(args: argparse.Namespace) -> int:
    try:
        # Imported here: the web extra is optional, and the core never imports it.
        from .web.serve import serve
    except ImportError as exc:
        error(f"the dashboard needs the web extra (pip install 'persistq_async[web]'): {exc}")
        return 2
    serve(args.url, host=args.host, port=args.port, token=args.token, read_only=args.read_only)
    return 0


# ---------------------------------------------------------------------- arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="persistq", description="Inspect and operate persistq_async queues."
    )
    parser.add_argument(
        "--log-level",
        default=None,
        help="logging level (default INFO for the worker, WARNING otherwise)",
    )
    log_format_help = "text lines (default), or one JSON object per line with the structured fields"
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help=log_format_help
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=None, help="database path or URL (default: configured)")
        p.add_argument("--queue", default=None, help="queue name (default: 'default')")

    demo = sub.add_parser("demo", help="run a short demo on a temporary (or given) SQLite file")
    demo.add_argument("--db", type=Path, default=None, help="SQLite file to use (kept afterwards)")

    worker = sub.add_parser("worker", help="run a supervised pool until SIGINT/SIGTERM")
    common(worker)
    worker.add_argument("handler", help="the handler, as module.path:function")
    # Also after the sub-command, where a worker's options are written; SUPPRESS keeps the
    # top-level value when it is not repeated here.
    worker.add_argument(
        "--log-format", choices=["text", "json"], default=argparse.SUPPRESS, help=log_format_help
    )
    worker.add_argument("--concurrency", type=int, default=10)
    worker.add_argument("--job-timeout", type=duration, default=None, help="such as 30s or 5m")
    worker.add_argument("--grace", type=duration, default=DEFAULT_GRACE, help="such as 10s")
    worker.add_argument(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (extra 'prometheus')",
    )
    worker.add_argument(
        "--health",
        default=None,
        metavar="HOST:PORT",
        help="serve /livez and /readyz probes at HOST:PORT (may equal --metrics)",
    )
    worker.add_argument(
        "--no-gc-freeze",
        dest="gc_freeze",
        action="store_false",
        help="leave the garbage collector as it is (see Supervisor's gc_freeze)",
    )

    dashboard = sub.add_parser("dashboard", help="serve the web dashboard (extra 'web')")
    dashboard.add_argument("--url", default=None, help="database path or URL (default: configured)")
    dashboard.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)"
    )
    dashboard.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    dashboard.add_argument(
        "--token",
        default=None,
        help="secret that actions need (default: PERSISTQ_DASHBOARD_TOKEN; none: read-only)",
    )
    dashboard.add_argument("--read-only", action="store_true", help="refuse every action")

    commands.add_parsers(sub, common)
    watch.add_parser(sub, common)
    schedules.add_parser(sub, common)
    flow.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``persistq`` command; returns the exit status.

    0 success; 1 nothing found, or the action was refused (no such job, a job in the wrong
    state, no database at the URL, the database failing); 2 a usage or configuration error.
    A user's error is one line on stderr, never a traceback.
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(
            logging,
            str(args.log_level or ("WARNING" if args.command != "worker" else "INFO")).upper(),
            logging.INFO,
        ),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JSONFormatter())
    try:
        if args.command == "demo":
            if args.db is None:
                with tempfile.TemporaryDirectory(prefix="persistq-demo-") as tmp:
                    anyio.run(_demo, Path(tmp) / "demo.db")
            else:
                anyio.run(_demo, args.db, str(args.db))
            return 0
        if args.command == "worker":
            args.queue = args.queue or "default"
            anyio.run(_worker, args)
            return 0
        if args.command == "dashboard":
            return _dashboard(args)
        if args.command == "watch":
            return anyio.run(watch.run, args)
        return anyio.run(commands.run, args)
    except (ArgumentError, ArgumentTypeError, SerializationError) as exc:
        error(str(exc))  # ConfigError is an ArgumentError
        return 2
    except (JobNotFound, JobStateError, DatabaseError) as exc:
        error(str(exc))
        return 1
    except PersistQError as exc:
        error(str(exc))
        return 1
    except KeyboardInterrupt:
        return 0 if args.command == "watch" else 130  # Ctrl-C is how one leaves watch
