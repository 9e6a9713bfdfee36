"""Split py-spy samples of ``pool_profile.py``'s drains into the pool's components.

Usage::

    py-spy record -r 1000 -f raw -o spy.txt -- python benchmarks/pool_profile.py [...]
    python benchmarks/spy_budget.py spy.txt

Reads py-spy's raw (collapsed) stacks. Samples of the pre-fill, the purge, imports and threads
waiting for work (py-spy's idle detection misses threads blocked in a queue's ``get``) are
dropped; the rest are split into the event loop's components and the other threads' (the
writer thread, the driver's threads), each stack going to the first rule it matches. Multiply a
share by ``pool_profile.py``'s CPU per job to get microseconds per job.
"""

from __future__ import annotations

import sys
from collections import Counter

# Stacks of work other than the drain, or of threads waiting: not counted.
SKIP = (
    "_prefill (",
    "_purge (",
    "purge (",
    "PutOp",
    "put_many",
    "delete_ids",
    "_find_and_load",
    "EpollSelector.select",
)
# Leaf frames of threads blocked waiting for work (their stack ends there).
IDLE_LEAVES = (
    "_connection_worker_thread (aiosqlite/core.py:59)",
    "writer.py:374)",
)

# Event-loop components, first match wins (the more specific first).
LOOP_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("logging", ("log_event", "logging/__init__")),
    ("events", ("metrics.py",)),
    ("join() (the benchmark's waiter)", ("Queue.join",)),
    ("handler-step timing", ("_steps.py",)),
    ("outcome write submit (settle/ack)", ("Pool._settle", "settle (persistq_async/_execution")),
    ("executor start", ("Pool._start",)),
    ("claim loop (claim + wait)", ("Pool._claim_loop", "Pool._wait", "Queue.claim")),
    ("executor (scopes, bookkeeping)", ("Pool._execute", "Pool._slot")),
    ("writer hand-back on the loop", ("ThreadWriter", "writer.py", "_read_from_self")),
    ("task start/finish (anyio, asyncio)", ("TaskHandle._run_coro", "Task.__step", "_spawn")),
)


def classify(stack: str) -> str | None:
    """The component a collapsed stack belongs to; None when it is not counted."""
    if any(s in stack for s in SKIP):
        return None
    leaf = stack.rsplit(";", 1)[-1]
    if any(leaf.endswith(s) for s in IDLE_LEAVES):
        return None
    if stack.startswith("Thread._bootstrap"):
        return "other threads (writer, driver)"
    if "pool_profile.py" not in stack:
        return None
    for label, needles in LOOP_RULES:
        if any(n in stack for n in needles):
            return label
    return "event loop (other)"


def main() -> int:
    """Print the share of each component."""
    counts: Counter[str] = Counter()
    with open(sys.argv[1]) as raw:
        for line in raw:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            label = classify(stack)
            if label is not None and count.isdigit():
                counts[label] += int(count)
    loop = sum(n for label, n in counts.items() if not label.startswith("other threads"))
    total = sum(counts.values())
    print(f"{total} samples counted, {loop} on the event loop")
    for label, n in counts.most_common():
        share = f"{n / max(loop, 1):6.1%} of loop" if not label.startswith("other") else ""
        print(f"  {label:40s} {n:6d}  {n / total:6.1%} of all  {share}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
