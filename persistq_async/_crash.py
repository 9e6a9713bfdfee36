"""Named crash points for the reliability suite: the process kills itself (SIGKILL) at one.

``PERSISTQ_CRASH_AT=<point>`` picks the point, ``PERSISTQ_CRASH_AFTER=<n>`` lets it pass ``n``
times first (default 0). Unset, a crash point costs one comparison. The points:

- ``after-claim-commit``: a claim committed, the jobs were not handed to the caller yet;
- ``mid-handler``: a pool's handler was started;
- ``before-ack``: an ack is about to be written;
- ``after-ack-commit``: an ack committed, ``ack()`` has not returned yet;
- ``mid-put``: a put's rows are written, its transaction not committed.
"""

from __future__ import annotations

import os
import signal

__all__ = ["POINTS", "crash_point"]

POINTS = frozenset(
    {"after-claim-commit", "mid-handler", "before-ack", "after-ack-commit", "mid-put"}
)

_target = os.environ.get("PERSISTQ_CRASH_AT") or None
_passes = int(os.environ.get("PERSISTQ_CRASH_AFTER", "0") or 0)
if _target is not None and _target not in POINTS:
    raise RuntimeError(f"PERSISTQ_CRASH_AT={_target!r} is not one of {sorted(POINTS)}")


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL if ``name`` is the configured crash point."""
    global _passes
    if _target is None or name != _target:
        return
    if _passes > 0:
        _passes -= 1
        return
    os.kill(os.getpid(), signal.SIGKILL)
