"""Presenting results: the console table, the JSON file and the bar chart."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import Sample, Scenario

__all__ = [
    "Result",
    "draw_chart",
    "format_table",
    "limits",
    "ratios",
    "write_json",
    "write_markdown",
]


@dataclass(slots=True)
class Result:
    """All repeats of one scenario; ``skipped`` says why it did not run, if it did not."""

    scenario: Scenario
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None

    @property
    def median(self) -> float | None:
        """Median jobs/s over the repeats (None when skipped, not run, or a latency scenario)."""
        if not self.samples or self.scenario.metric != "rate":
            return None
        return statistics.median(s.rate for s in self.samples)

    def figure(self, key: str) -> float | None:
        """Median over the repeats of one ``extra`` figure (None when absent)."""
        values = [s.extra[key] for s in self.samples if key in s.extra]
        return statistics.median(values) if values else None

    def headline(self) -> str:
        """The main figure as text: jobs/s, or p50/p99 for a latency scenario."""
        if self.scenario.metric == "latency":
            p50, p99 = self.figure("p50_ms"), self.figure("p99_ms")
            if p50 is None or p99 is None:
                return "-"
            return f"p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        median = self.median
        return "-" if median is None else f"{median:,.0f}"


def limits(result: Result) -> list[dict[str, Any]]:
    """Each absolute target of the scenario (``value <= bound``) against its median figure."""
    out: list[dict[str, Any]] = []
    for lim in result.scenario.limits:
        value = result.figure(lim.metric)
        if value is None:
            continue
        out.append(
            {
                "metric": lim.metric,
                "label": lim.label,
                "value": value,
                "bound": lim.bound,
                "met": value <= lim.bound,
            }
        )
    return out


def _limit_text(entry: dict[str, Any]) -> str:
    return f"{entry['label']} {entry['value']:.1f} (target <= {entry['bound']:g}: " + (
        "met)" if entry["met"] else "MISSED)"
    )


def _details(result: Result, by_key: dict[str, Result]) -> list[str]:
    parts = [_ratio_text(e) for e in ratios(result, by_key)]
    parts += [_limit_text(e) for e in limits(result)]
    limited = {lim.metric for lim in result.scenario.limits}
    figures = {k: result.figure(k) for s in result.samples for k in s.extra}
    for key, fmt in result.scenario.show:
        value = figures.get(key)
        if value is not None and key not in limited:
            parts.append(fmt.format(value, **figures))
    return parts


def ratios(result: Result, by_key: dict[str, Result]) -> list[dict[str, Any]]:
    """This result's median divided by each of its baselines' medians (skipped ones left out)."""
    out: list[dict[str, Any]] = []
    mine = result.median
    if mine is None:
        return out
    for comp in result.scenario.compare:
        other = by_key.get(comp.baseline)
        theirs = None if other is None else other.median
        if not theirs:
            continue
        ratio = mine / theirs
        out.append(
            {
                "baseline": comp.baseline,
                "label": comp.label,
                "ratio": ratio,
                "target": comp.target,
                "met": None if comp.target is None else ratio >= comp.target,
            }
        )
    return out


def _ratio_text(entry: dict[str, Any]) -> str:
    text = f"{entry['ratio']:.2f}x {entry['label']}"
    if entry["target"] is not None:
        text += f" (target {entry['target']:g}x: {'met' if entry['met'] else 'MISSED'})"
    return text


def format_table(results: list[Result]) -> str:
    """A fixed-width table: scenario, durability, median jobs/s, then the ratio to each baseline."""
    by_key = {r.scenario.key: r for r in results}
    head = ("scenario", "sync", "jobs/s (median)", "n", "vs baselines / targets")
    rows: list[tuple[str, str, str, str, str]] = []
    for r in results:
        name = f"{r.scenario.system}: {r.scenario.label}"
        sync = r.scenario.durability or "-"
        if r.skipped is not None:
            rows.append((name, sync, "skipped", "", r.skipped))
            continue
        if not r.samples:
            rows.append((name, sync, "not run", "", ""))
            continue
        ops = statistics.median(s.ops for s in r.samples)
        parts = _details(r, by_key)
        rows.append((name, sync, r.headline(), f"{ops:,.0f}", "; ".join(parts)))
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(4)]
    lines = []
    for row in [head, *rows]:
        cells = [
            row[0].ljust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].rjust(widths[2]),
            row[3].rjust(widths[3]),
            row[4],
        ]
        lines.append("  ".join(cells).rstrip())
        if row is head:
            lines.append("  ".join("-" * w for w in [*widths, len(head[4])]))
    return "\n".join(lines)


def write_json(path: Path, results: list[Result], meta: dict[str, Any]) -> None:
    """Every sample, the medians and the ratios, for comparing runs over time."""
    by_key = {r.scenario.key: r for r in results}
    doc = {
        "meta": meta,
        "results": [
            {
                "key": r.scenario.key,
                "system": r.scenario.system,
                "label": r.scenario.label,
                "durability": r.scenario.durability,
                "notes": r.scenario.notes,
                "metric": r.scenario.metric,
                "skipped": r.skipped,
                "median_jobs_per_s": r.median,
                "median_extra": {
                    k: r.figure(k) for k in dict.fromkeys(k for s in r.samples for k in s.extra)
                },
                "samples": [
                    {"ops": s.ops, "seconds": s.seconds, "jobs_per_s": s.rate, **s.extra}
                    for s in r.samples
                ],
                "ratios": ratios(r, by_key),
                "limits": limits(r),
            }
            for r in results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def write_markdown(path: Path, results: list[Result], meta: dict[str, Any]) -> None:
    """The table as GitHub markdown, ready to paste into the README."""
    by_key = {r.scenario.key: r for r in results}
    lines = [
        "| scenario | durability | jobs/s (median) | vs baselines / targets |",
        "|---|---|--:|---|",
    ]
    for r in results:
        name = f"{r.scenario.system}: {r.scenario.label}"
        sync = r.scenario.durability or "-"
        if r.skipped is not None:
            lines.append(f"| {name} | {sync} | skipped | {r.skipped} |")
            continue
        if not r.samples:
            continue
        details = "; ".join(_details(r, by_key)).replace("|", "/")
        details = details.replace("MISSED", "**MISSED**")
        lines.append(f"| {name} | {sync} | {r.headline()} | {details} |")
    lines += [
        "",
        f"Medians over {meta.get('repeats')} repeat(s), one run of `python benchmarks/run.py"
        f"{' ' + ' '.join(meta.get('argv') or []) if meta.get('argv') else ''}`, "
        f"{meta.get('date')}, Python {meta.get('python')}, SQLite {meta.get('sqlite')}, "
        f"{meta.get('cpus')} CPUs, {meta.get('elapsed_seconds')} s in all. "
        "Temporary SQLite files in WAL mode; durability full = synchronous=FULL, "
        "normal = synchronous=NORMAL; peers use their defaults (WAL, synchronous=FULL).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def draw_chart(path: Path, results: list[Result]) -> str | None:
    """A horizontal bar chart of median jobs/s per scenario, coloured by system.

    :returns: None when drawn, else why not (matplotlib missing).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed; no chart (pip install matplotlib)"
    shown = [r for r in results if r.median]
    if not shown:
        return "no throughput figure in this run; no chart"
    systems = list(dict.fromkeys(r.scenario.system for r in shown))
    colours = plt.get_cmap("tab10")
    labels = [
        f"{r.scenario.system}: {r.scenario.label}"
        + (f" [{r.scenario.durability}]" if r.scenario.durability else "")
        for r in shown
    ]
    values = [r.median or 0.0 for r in shown]
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(shown) + 1.5))
    ax.barh(
        range(len(shown)),
        values,
        color=[colours(systems.index(r.scenario.system) % 10) for r in shown],
    )
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.invert_yaxis()
    # Log scale: the figures span three orders of magnitude (fsync-bound cycles to executemany).
    ax.set_xscale("log")
    ax.set_xlabel("jobs/s (median; log scale)")
    ax.set_title("persistq_async and baselines, same run, temp SQLite files (WAL)")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
