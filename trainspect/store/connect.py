"""Opening run files: one write connection per run, read-only ones under an open limit."""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from trainspect.errors import TrainspectError

BUSY_TIMEOUT_MS = 10_000
# Large pages: a series is a few large blobs, read 5-10x faster than through 4 KiB pages.
PAGE_SIZE = 65_536


def connect_for_write(path: Path) -> sqlite3.Connection:
    """Create or open a run file for the writer thread (WAL, synchronous=NORMAL).

    WAL keeps readers and the writer out of each other's way; NORMAL makes every
    commit survive a killed process (not a power cut), at a fraction of FULL's cost.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.isolation_level = "DEFERRED"  # `with conn:` opens and commits a transaction
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # only takes effect on a new file
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        conn.close()
        raise TrainspectError(f"{path}: the file system does not support SQLite's WAL mode")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


def connect_for_read(path: Path, immutable: bool = False) -> sqlite3.Connection:
    """Open a run file read-only; works while its writer is writing.

    `immutable` is for a file no one can be writing: a WAL-mode file in a folder
    where its -shm cannot be created (a read-only share) opens only that way.
    """
    if not path.is_file():
        raise TrainspectError(f"no run file at {path}")
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro{'&immutable=1' if immutable else ''}", uri=True,
        check_same_thread=False,
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


def cannot_share(err: sqlite3.Error, path: Path) -> bool:
    """True when a read failed only because the WAL's shared files cannot be created (a
    read-only folder) and no writer has them: such a file can be opened immutable."""
    text = str(err).lower()
    return ("readonly" in text or "unable to open" in text) and not path.with_name(
        path.name + "-wal").exists()


class OpenLimit:
    """Keeps at most `limit` read connections open; the least recently used one closes.

    A read connection to a WAL file holds three file descriptors (the file, its
    -wal and -shm), so listing a thousand runs with every view left open runs out
    of descriptors. Views register here when they open and are told to close when
    others have been used since; they reopen on their next query.
    """

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit or default_open_limit()
        self._order: OrderedDict[int, Any] = OrderedDict()  # id(view) -> view
        self._lock = threading.Lock()

    def used(self, view: Any) -> None:
        """`view` has a connection open and just used it; close the oldest beyond the limit."""
        with self._lock:
            self._order[id(view)] = view
            self._order.move_to_end(id(view))
            victims = []
            while len(self._order) > self.limit:
                _, victim = self._order.popitem(last=False)
                victims.append(victim)
        for victim in victims:  # outside our lock: a victim may be mid-query in a thread
            victim.close()

    def closed(self, view: Any) -> None:
        with self._lock:
            self._order.pop(id(view), None)

    def __len__(self) -> int:
        return len(self._order)


def default_open_limit() -> int:
    """About a twelfth of the descriptor limit (3 per connection), between 4 and 128."""
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 64
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return 128
    return max(4, min(128, soft // 12))


READ_CONNECTIONS = OpenLimit()  # shared by every RunView of the process
