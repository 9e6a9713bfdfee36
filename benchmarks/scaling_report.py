"""The report of ``scaling.py``: one PNG chart per curve, the JSON, and markdown tables."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scaling import Point

BACKEND_LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
COLOURS = {"sqlite": "tab:blue", "postgresql": "tab:orange"}
TITLES = {
    "concurrency": "Throughput against pool concurrency (slots of one pool)",
    "payload": "Throughput against payload size",
    "queues": "Puts against the number of queues in one database (100 producers)",
    "workers": "PostgreSQL: cycle throughput against worker processes (16 slots each)",
}
XLABELS = {
    "concurrency": "pool concurrency (slots)",
    "payload": "payload size",
    "queues": "queues in the database",
    "workers": "worker processes",
}


def x_text(curve: str, x: int) -> str:
    """A point's x as people say it: 10 KB rather than 10000."""
    if curve == "payload":
        if x >= 1_000_000:
            return f"{x // 1_000_000} MB"
        if x >= 1_000:
            return f"{x // 1_000} KB"
        return f"{x} B"
    return f"{x:,}"


def short_error(error: str) -> str:
    """The reason at the end of an error message ("sorry, too many clients already")."""
    return error.rsplit(": ", 1)[-1][:48]


def _label_sides(lines: dict[str, list[Point]]) -> dict[tuple[str, int], tuple[int, int]]:
    """Where each point's label goes (an offset in points): at each x the highest point's
    above it, the lowest's below, those between to the right, so close lines stay legible."""
    at_x: dict[int, list[tuple[float, str]]] = {}
    for label, line in lines.items():
        for p in line:
            at_x.setdefault(p.x, []).append((p.median or 0.0, label))
    sides = {}
    for x, found in at_x.items():
        ranked = sorted(found, reverse=True)
        for rank, (_, label) in enumerate(ranked):
            if rank == 0:
                sides[(label, x)] = (0, 6)
            elif rank == len(ranked) - 1:
                sides[(label, x)] = (0, -12)
            else:
                sides[(label, x)] = (22, -3)
    return sides


def _lines(points: list[Point], curve: str) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for p in points:
        if p.curve == curve:
            out.setdefault(f"{BACKEND_LABEL[p.backend]}: {p.series}", []).append(p)
    for line in out.values():
        line.sort(key=lambda p: p.x)
    return out


def draw_charts(directory: Path, points: list[Point]) -> list[Path]:
    """One PNG per curve in ``directory`` (``scaling-<curve>.png``); returns their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no charts (pip install matplotlib)")
        return []
    drawn = []
    directory.mkdir(parents=True, exist_ok=True)
    for curve in dict.fromkeys(p.curve for p in points):
        lines = _lines(points, curve)
        xs = sorted({p.x for p in points if p.curve == curve})
        fig, ax = plt.subplots(figsize=(8, 4.8))
        series = list(dict.fromkeys(p.series for p in points if p.curve == curve))
        above = _label_sides(lines)
        for n, (label, line) in enumerate(lines.items()):
            ok = [(p, p.median) for p in line if p.median is not None]
            k = series.index(line[0].series)
            ax.plot(
                [p.x for p, _ in ok],
                [m for _, m in ok],
                ("-", "--", ":")[k % 3],
                marker=("o", "s", "^")[k % 3],
                color=COLOURS[line[0].backend],
                label=label,
            )
            for p, m in ok:
                ax.annotate(
                    f"{m:,.0f}",
                    (p.x, m),
                    textcoords="offset points",
                    xytext=above[(label, p.x)],
                    ha="center",
                    fontsize=7,
                    color=COLOURS[line[0].backend],
                )
            for p in line:
                if p.error is not None:
                    ax.annotate(
                        f"{label.split(':')[0]} failed:\n{short_error(p.error)}",
                        (p.x, 0.5),
                        xycoords=("data", "axes fraction"),
                        textcoords="offset points",
                        xytext=(0, -24 * n),
                        ha="right",
                        fontsize=7,
                        color="red",
                    )
        ax.set_xscale("log")
        ax.set_xticks(xs, [x_text(curve, x) for x in xs])
        ax.minorticks_off()
        logy = curve != "workers"
        if logy:
            ax.set_yscale("log")  # the points differ by orders of magnitude
        low, high = ax.get_ylim()
        # Room above the highest point for its label, below the title.
        ax.set_ylim(low / 1.5 if logy else 0, high * (1.8 if logy else 1.12))
        ax.set_xlabel(XLABELS[curve])
        ax.set_ylabel("jobs/s" + (" (log scale)" if logy else ""))
        ax.set_title(TITLES[curve], fontsize=11)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        path = directory / f"scaling-{curve}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        drawn.append(path)
    return drawn


def write_json(path: Path, points: list[Point], meta: dict[str, Any]) -> None:
    """Every measurement of every point."""
    doc = {
        "meta": meta,
        "points": [
            {
                "curve": p.curve,
                "backend": p.backend,
                "x": p.x,
                "series": p.series,
                "median_jobs_per_s": p.median,
                "rates": p.rates,
                "extra": {k: statistics.median(v) for k, v in p.extra.items()},
                "error": p.error,
            }
            for p in points
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _cell(p: Point | None) -> str:
    if p is None:
        return "-"
    if p.error is not None:
        return f"failed: {p.error.replace('|', '/')}"
    assert p.median is not None
    cell = f"{p.median:,.0f}"
    open_s = p.extra.get("open_s")
    if open_s:
        cell += f" (opened in {statistics.median(open_s):.1f} s)"
    return cell


def tables(points: list[Point]) -> list[str]:
    """One markdown table per curve: a row per backend and series, a column per point."""
    lines: list[str] = []
    for curve in dict.fromkeys(p.curve for p in points):
        xs = sorted({p.x for p in points if p.curve == curve})
        lines += [
            f"### {TITLES[curve]}",
            "",
            "| jobs/s | " + " | ".join(x_text(curve, x) for x in xs) + " |",
            "|---|" + "--:|" * len(xs),
        ]
        for label, line in _lines(points, curve).items():
            by_x = {p.x: p for p in line}
            lines.append(f"| {label} | " + " | ".join(_cell(by_x.get(x)) for x in xs) + " |")
        lines.append("")
    return lines


def write_markdown(
    path: Path, points: list[Point], meta: dict[str, Any], charts: list[Path]
) -> None:
    """Tables, the charts (linked relative to ``path``) and how the run was made."""
    pg = meta.get("postgresql") or {}
    sizes = meta["sizes"]
    argv = " ".join(meta.get("argv") or [])
    body = [
        "# How throughput grows with the work (issue #11)",
        "",
        "Written by `benchmarks/scaling.py`.",
        "",
        *tables(points),
        *(f"![{c.stem}]({os.path.relpath(c, path.parent)})\n" for c in charts),
        "## How it was measured",
        "",
        f"One run of `python benchmarks/scaling.py{' ' + argv if argv else ''}` on "
        f"{meta['date']}, {meta['repeats']} measurement(s) per point (median shown), "
        f"{meta['elapsed_seconds']} s in all, Python {meta['python']}, {meta['cpus']} CPUs, "
        f"load average {meta['loadavg_before']:.1f} before and {meta['loadavg_after']:.1f} after; "
        f"the code measured: commit {meta.get('commit', 'unknown')}.",
        "",
        "SQLite: a fresh temporary file per point (WAL, durability full, the default). "
        + (
            f"PostgreSQL {pg.get('server_version', '?')} "
            f"(fsync={pg.get('fsync', '?')}, synchronous_commit="
            f"{pg.get('synchronous_commit', '?')}, max_connections="
            f"{pg.get('max_connections', '?')}), "
            + (
                "a private throwaway server started with `.ci/start-postgres.sh`"
                if meta.get("private_server")
                else f"at {pg.get('host', '?')}"
            )
            + ", a fresh database per point."
            if pg
            else "PostgreSQL: not run."
        ),
        "",
        f"Work per point: {sizes['jobs']:,} jobs (payload points: at most "
        f"{sizes['payload_budget'] / 1e6:g} MB of payload, at least 16 jobs), or "
        f"{sizes['time_cap']:g} s, whichever comes first; no-op handler; pools pre-filled with "
        "put_many and timed from `Supervisor.add` to `join()` returning; worker processes timed "
        "from telling the started processes to go until every job is finished.",
        "",
    ]
    if meta.get("note"):
        body += [meta["note"], ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(body) + kept_text(path))


#: Text after this line in an existing report is written by hand and kept by a new run.
KEEP_MARKER = "<!-- written by hand below this line; benchmark runs keep it -->"


def kept_text(path: Path) -> str:
    """The hand-written part of the report at ``path`` (from the marker on), or ""."""
    try:
        old = path.read_text()
    except OSError:
        return ""
    at = old.find(KEEP_MARKER)
    return "" if at < 0 else "\n" + old[at:]
