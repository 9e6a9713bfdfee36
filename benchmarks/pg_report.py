"""The report of ``postgres.py``: throughput with ratios, CPU per job, issue #11's targets.

One markdown text serves the console and ``docs/benchmarks-postgres.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pg_systems import PERSISTQ, PGQUEUER_KEYS, SYSTEMS
from report import Result
from scaling_report import kept_text

#: (scenario key, column heading), in the order of the table.
COLUMNS = (
    ("put.sequential", "put, 1 caller"),
    ("put.concurrent", "put, 100 producers"),
    ("put.batch", "batch put"),
    ("cycle.workers1", "cycle, 1 worker"),
    ("cycle.workers4", "cycle, 4 workers"),
)
#: Issue #11: persistq_async / peer at least this, on every scenario.
TARGETS = (("PgQueuer (the faster configuration)", PGQUEUER_KEYS, 1.0),)
PROCRASTINATE_TARGET = 2.0
CPU_PER_PUT_TARGET_MS = 0.5


def _median(by_key: dict[str, Result], system: str, scenario: str) -> float | None:
    r = by_key.get(f"{system}.{scenario}")
    return None if r is None else r.median


def _figure(by_key: dict[str, Result], system: str, scenario: str, name: str) -> float | None:
    r = by_key.get(f"{system}.{scenario}")
    return None if r is None else r.figure(name)


def _best(by_key: dict[str, Result], systems: tuple[str, ...], scenario: str) -> float | None:
    found = [m for s in systems if (m := _median(by_key, s, scenario))]
    return max(found) if found else None


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def throughput_table(by_key: dict[str, Result], batch_rows: int) -> list[str]:
    """Systems by scenarios; peers' cells carry persistq_async / peer."""
    heads = [h if k != "put.batch" else f"{h} ({batch_rows:,})" for k, h in COLUMNS]
    lines = [
        "| jobs/s | " + " | ".join(heads) + " |",
        "|---|" + "--:|" * len(COLUMNS),
    ]
    for system in SYSTEMS:
        cells = []
        for key, _ in COLUMNS:
            theirs = _median(by_key, system.key, key)
            if theirs is None:
                cells.append("(as above)" if not system.puts and key.startswith("put") else "-")
                continue
            cell = f"{theirs:,.0f}"
            mine = _median(by_key, PERSISTQ.key, key)
            if system is not PERSISTQ and mine:
                cell += f" ({mine / theirs:.2f}x)"
            cells.append(cell)
        lines.append(f"| {system.label} | " + " | ".join(cells) + " |")
    return lines


def cpu_table(by_key: dict[str, Result]) -> list[str]:
    """CPU milliseconds per job: a single put (client + server) and the 1-worker cycle."""
    lines = [
        "| CPU ms per job | put, 1 caller: client | server backends | total "
        "| cycle, 1 worker: worker process | server backends |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for system in SYSTEMS:
        put = [
            _figure(by_key, system.key, "put.sequential", n)
            for n in ("client_cpu_ms_per_job", "server_cpu_ms_per_job", "cpu_ms_per_job")
        ]
        cyc = [
            _figure(by_key, system.key, "cycle.workers1", n)
            for n in ("worker_cpu_ms_per_job", "server_cpu_ms_per_job")
        ]
        lines.append(f"| {system.label} | " + " | ".join(_ms(v) for v in [*put, *cyc]) + " |")
    return lines


def targets(by_key: dict[str, Result]) -> list[tuple[str, str, bool | None]]:
    """(target, figure, met) for each of issue #11's PostgreSQL targets."""
    out: list[tuple[str, str, bool | None]] = []
    for key, heading in COLUMNS:
        mine = _median(by_key, PERSISTQ.key, key)
        for label, systems, bound in (
            *TARGETS,
            ("procrastinate", ("procrastinate",), PROCRASTINATE_TARGET),
        ):
            theirs = _best(by_key, systems, key)
            if mine is None or theirs is None:
                out.append((f"{heading}: at least {bound:g}x {label}", "not measured", None))
                continue
            ratio = mine / theirs
            out.append((f"{heading}: at least {bound:g}x {label}", f"{ratio:.2f}x", ratio >= bound))
    cpu = _figure(by_key, PERSISTQ.key, "put.sequential", "cpu_ms_per_job")
    out.append(
        (
            f"CPU per single put at most {CPU_PER_PUT_TARGET_MS:g} ms (client + server)",
            "not measured" if cpu is None else f"{cpu:.2f} ms",
            None if cpu is None else cpu <= CPU_PER_PUT_TARGET_MS,
        )
    )
    return out


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**missed**")


def _how(meta: dict[str, Any]) -> list[str]:
    pg = meta.get("postgresql") or {}
    sizes = meta["sizes"]
    argv = " ".join(meta.get("argv") or [])
    server = (
        "a private throwaway server started by the script with `.ci/start-postgres.sh`"
        if meta.get("private_server")
        else f"the server at {pg.get('host', '?')}"
    )
    lines = [
        f"One run of `python benchmarks/postgres.py{' ' + argv if argv else ''}` on "
        f"{meta['date']}: medians of {meta['repeats']} repeat(s), {meta['elapsed_seconds']} s in "
        f"all, Python {meta['python']}, {meta['cpus']} CPUs, load average "
        f"{meta['loadavg_before']:.1f} before and {meta['loadavg_after']:.1f} after; the code "
        f"measured: commit {meta.get('commit', 'unknown')}.",
        "",
        f"PostgreSQL {pg.get('server_version', '?')}, {server} (fsync={pg.get('fsync', '?')}, "
        f"synchronous_commit={pg.get('synchronous_commit', '?')}, "
        f"full_page_writes={pg.get('full_page_writes', '?')}); every measurement on a fresh "
        "database of its own; systems interleaved within each scenario.",
        "",
        f"Sizes: {sizes['jobs']:,} small JSON jobs per put scenario and per cycle, "
        f"{sizes['producers']} producers, batch put of {sizes['batch_rows']:,} jobs "
        f"{sizes['batch']:,} per call; a timed loop stops after its jobs or "
        f"{sizes['time_cap']:g} s (cycles {sizes['cycle_cap']:g} s); no-op handler; 16 slots "
        "per worker process; cycles timed from telling the started workers to go until every "
        "job is finished.",
        "",
        "CPU per job: the client process's CPU (`time.process_time`) and the CPU of the "
        "server's backend processes serving the measurement's database (`/proc/PID/schedstat`), "
        "divided by the jobs; the server's shared background processes (WAL writer, "
        "checkpointer) are not counted.",
        "",
        "Versions: "
        + ", ".join(f"{k} {v}" for k, v in (meta.get("versions") or {}).items() if v)
        + ".",
        "",
        "Configurations:",
        "",
    ]
    systems = meta.get("systems") or {}
    lines += [f"- {s.label}: {systems.get(s.key, s.notes)}" for s in SYSTEMS]
    if meta.get("note"):
        lines += ["", meta["note"]]
    return lines


def format_report(results: list[Result], meta: dict[str, Any]) -> str:
    """The whole report as markdown."""
    by_key = {r.scenario.key: r for r in results}
    lines = [
        "## Throughput",
        "",
        "Jobs per second, median; in brackets persistq_async's figure divided by that system's.",
        "",
        *throughput_table(by_key, meta["sizes"]["batch_rows"]),
        "",
        "## CPU per job",
        "",
        *cpu_table(by_key),
        "",
        "## Issue #11's PostgreSQL targets, in this run",
        "",
        "| target | persistq_async | |",
        "|---|--:|---|",
        *(f"| {t} | {fig} | {_verdict(met)} |" for t, fig, met in targets(by_key)),
        "",
        "## How it was measured",
        "",
        *_how(meta),
        "",
    ]
    return "\n".join(lines)


def write_markdown(path: Path, results: list[Result], meta: dict[str, Any]) -> None:
    """The report under a title, ready to be ``docs/benchmarks-postgres.md``."""
    title = [
        "# persistq_async on PostgreSQL beside PgQueuer, procrastinate and raw asyncpg",
        "",
        "Written by `benchmarks/postgres.py` (issue #11's benchmark); "
        "`nox -s bench` runs it on a throwaway server.",
        "",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(title) + format_report(results, meta) + kept_text(path))
