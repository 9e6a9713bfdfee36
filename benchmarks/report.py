"""Presenting results: the console table, the JSON file and the bar chart."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import Sample, Scenario

__all__ = ["Result", "draw_chart", "format_table", "ratios", "write_json"]


@dataclass(slots=True)
class Result:
    """All repeats of one scenario; ``skipped`` says why it did not run, if it did not."""

    scenario: Scenario
    samples: list[Sample] = field(default_factory=list)
    skipped: str | None = None

    @property
    def median(self) -> float | None:
        """Median jobs/s over the repeats (None when skipped or not run)."""
        if not self.samples:
            return None
        return statistics.median(s.rate for s in self.samples)


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
    head = ("scenario", "sync", "jobs/s", "n", "vs baselines")
    rows: list[tuple[str, str, str, str, str]] = []
    for r in results:
        name = f"{r.scenario.system}: {r.scenario.label}"
        sync = r.scenario.durability or "-"
        if r.skipped is not None:
            rows.append((name, sync, "skipped", "", r.skipped))
            continue
        median = r.median
        assert median is not None
        ops = statistics.median(s.ops for s in r.samples)
        parts = [_ratio_text(e) for e in ratios(r, by_key)]
        rows.append((name, sync, f"{median:,.0f}", f"{ops:,.0f}", "; ".join(parts)))
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
            lines.append("  ".join("-" * w for w in [*widths, len("vs baselines")]))
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
                "skipped": r.skipped,
                "median_jobs_per_s": r.median,
                "samples": [
                    {"ops": s.ops, "seconds": s.seconds, "jobs_per_s": s.rate} for s in r.samples
                ],
                "ratios": ratios(r, by_key),
            }
            for r in results
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


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
