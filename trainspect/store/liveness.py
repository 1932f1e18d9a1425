"""Is a run's writer still there? Status as written, or `crashed` when the writer is gone.

The writer beats every few seconds (`heartbeat_at` in the run's meta). A run whose
process died (SIGKILL, OOM, a lost node) stops beating: it reads as crashed once
its heartbeat is older than STALE_HEARTBEAT_S, or at once when it ran on this host
and its process no longer exists.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

# A run still marked running whose heartbeat is older than this has crashed.
STALE_HEARTBEAT_S = 60.0


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or an id we cannot ask about: assume alive
    return True


def heartbeat_age_s(meta: dict[str, Any], now: float | None = None) -> float:
    now = time.time() if now is None else now
    beat = meta.get("heartbeat_at") or meta.get("started_at") or 0.0
    try:
        return now - float(beat)
    except (TypeError, ValueError):
        return float("inf")


def derive_status(meta: dict[str, Any], now: float | None = None) -> str:
    """running / finished / failed as written, or crashed when the writer is gone."""
    status = str(meta.get("status", "unknown"))
    if status != "running":
        return status
    if heartbeat_age_s(meta, now) > STALE_HEARTBEAT_S:
        return "crashed"
    pid = meta.get("pid")
    if meta.get("host") == this_host() and isinstance(pid, int) and not pid_alive(pid):
        return "crashed"
    return status
