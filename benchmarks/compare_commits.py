"""Compare two commits of persistq_async on the persistq scenarios of ``run.py``, interleaved.

    python benchmarks/compare_commits.py OLD NEW [--rounds 3] [--only persistq] [--quick]

Each commit is checked out into a temporary worktree and its own ``benchmarks/run.py`` runs
with that worktree first on ``PYTHONPATH`` (the installed dependencies are shared). The rounds
alternate OLD, NEW, OLD, NEW... so that a noisy machine disturbs both alike; the table gives the
median of each scenario and the ratio NEW / OLD.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worktree(ref: str, base: Path) -> Path:
    """A detached worktree of ``ref`` under ``base``."""
    path = base / ref.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref],
        check=True,
        capture_output=True,
    )
    return path


def run_once(tree: Path, only: list[str], quick: bool, out: Path) -> dict[str, float]:
    """Run ``tree``'s benchmark once; jobs per second by scenario key."""
    args = [sys.executable, str(tree / "benchmarks" / "run.py"), "--repeats", "1"]
    args += ["--json", str(out), "--chart", str(out.with_suffix(".png"))]
    args += ["--markdown", str(out.with_suffix(".md"))]
    if quick:
        args.append("--quick")
    for key in only:
        args += ["--only", key]
    env = dict(os.environ, PYTHONPATH=str(tree))
    subprocess.run(args, check=True, cwd=tree, env=env, stdout=subprocess.DEVNULL)
    data = json.loads(out.read_text())
    rates: dict[str, float] = {}
    for row in data["results"]:
        if row["median_jobs_per_s"] is not None and not row["skipped"]:
            rates[row["key"]] = float(row["median_jobs_per_s"])
    return rates


def main() -> int:
    """Run the rounds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    only = args.only or ["persistq"]
    with tempfile.TemporaryDirectory(prefix="pq-compare-") as tmp:
        base = Path(tmp)
        trees = {ref: worktree(ref, base) for ref in (args.old, args.new)}
        try:
            seen: dict[str, dict[str, list[float]]] = {args.old: {}, args.new: {}}
            for n in range(args.rounds):
                for ref, tree in trees.items():
                    rates = run_once(tree, only, args.quick, base / f"{n}-{len(seen[ref])}.json")
                    for key, rate in rates.items():
                        seen[ref].setdefault(key, []).append(rate)
                    print(f"round {n + 1} {ref}: {len(rates)} scenarios", file=sys.stderr)
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                    check=False,
                )
    print(f"| scenario (jobs/s, median of {args.rounds}) | {args.old} | {args.new} | ratio |")
    print("|---|--:|--:|--:|")
    for key in sorted(seen[args.old]):
        old = statistics.median(seen[args.old][key])
        new_values = seen[args.new].get(key)
        if not new_values:
            continue
        new = statistics.median(new_values)
        print(f"| {key} | {old:,.0f} | {new:,.0f} | {new / old:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
