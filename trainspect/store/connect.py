"""Opening run files: one write connection per run, any number of read-only ones."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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


def connect_for_read(path: Path) -> sqlite3.Connection:
    """Open a run file read-only; works while its writer is writing."""
    if not path.is_file():
        raise TrainspectError(f"no run file at {path}")
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn
