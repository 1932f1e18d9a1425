"""One run file opened for reading: its connection, its checks, its errors.

A `RunFile` opens its read-only connection on first use, under the process's open
limit (`connect.READ_CONNECTIONS`: the least recently used file closes when too
many are open, and reopens when asked again). Before a file is opened, its header
is checked (`filecheck`) and its tables are looked for; every SQLite error on the
way becomes one TrainspectError, "unreadable run file <path>: <why>", so a CLI
command prints one line and a listing names the file and carries on.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from trainspect.errors import TrainspectError
from trainspect.store import filecheck, schema
from trainspect.store.connect import READ_CONNECTIONS, cannot_share, connect_for_read
from trainspect.store.lock import lock_path, read_lock


class RunFile:
    """A run file's read connection and meta; `RunView` adds the queries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.project = path.parent.name
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._checked: tuple | None = None
        self.meta: dict[str, Any] = {}
        self.refresh()

    def refresh(self) -> RunFile:
        """Re-read the run's metadata (status, heartbeat, end time)."""
        with self._query() as conn:
            rows = conn.execute("SELECT key, value FROM meta").fetchall()
        try:
            self.meta = {key: json.loads(value) for key, value in rows}
        except ValueError as err:
            raise unreadable(self.path, f"its meta is not JSON ({err})") from None
        self._take_last_word()
        return self

    def _take_last_word(self) -> None:
        """A writer that could not write the file at the end left how the run ended in its
        lock file (`store/lock.py`); it counts when the file still says running, or when
        it is a later attempt's."""
        lock = lock_path(self.path)
        if not lock.exists():
            return
        word = read_lock(lock)
        if "status" in word and (self.meta.get("status") == "running" or int(
                word.get("attempt") or 0) > int(self.meta.get("attempt") or 0)):
            self.meta.update({k: v for k, v in word.items() if k != "since"})

    def check(self) -> RunFile:
        """Read what a run list reads (meta, chunk summaries, alerts); TrainspectError if
        the file cannot serve it. Cached until the file or its WAL changes."""
        state = _file_state(self.path)
        if state != self._checked:
            self.refresh()
            with self._query() as conn:
                conn.execute("SELECT COUNT(*), MAX(step_max), MAX(seq) FROM scalar_chunks")
                conn.execute("SELECT COUNT(*), MAX(seq) FROM alerts")
                conn.execute("SELECT COUNT(*) FROM keys")
            self._checked = state
        return self

    @contextmanager
    def _query(self) -> Iterator[sqlite3.Connection]:
        """The view's read connection (opened on first use, under the process's open
        limit); SQLite errors become one TrainspectError naming the file."""
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._open()
                yield self._conn
            except sqlite3.DatabaseError as err:
                raise unreadable(self.path, str(err)) from None
        READ_CONNECTIONS.used(self)  # may close the least recently used other views

    def _open(self) -> sqlite3.Connection:
        why = filecheck.problem(self.path)
        if why is not None:
            raise unreadable(self.path, why)
        conn = connect_for_read(self.path)
        try:
            try:
                tables = self._tables(conn)
            except sqlite3.OperationalError as err:
                if not cannot_share(err, self.path):
                    raise
                conn.close()
                conn = connect_for_read(self.path, immutable=True)  # a read-only folder
                tables = self._tables(conn)
        except BaseException:
            conn.close()
            raise
        missing = sorted(set(schema.CORE_TABLES) - tables)
        if missing:
            conn.close()
            raise unreadable(self.path, (
                "a header and no tables: a run that could not write its first commit (e.g. "
                "on a full disk); delete it") if not tables else (
                f"tables {', '.join(missing)} are missing: not a trainspect run file"))
        return conn

    def _tables(self, conn: sqlite3.Connection) -> set[str]:
        schema.check_readable(conn, self.path)
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    @staticmethod
    def _has(conn: sqlite3.Connection, table: str) -> bool:
        return conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone() is not None

    def close(self) -> None:
        """Close the read connection (the view reopens it when asked again)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        READ_CONNECTIONS.closed(self)


class Unreadable(NamedTuple):
    """A file in the runs directory that cannot be read as a run, and why (one line)."""

    path: Path
    reason: str

    @classmethod
    def of(cls, path: Path, err: TrainspectError) -> Unreadable:
        return cls(path, str(err).removeprefix(f"{_PREFIX} {path}: "))

    def __str__(self) -> str:
        return f"{_PREFIX} {self.path}: {self.reason}"


_PREFIX = "unreadable run file"


def unreadable(path: Path, why: str) -> TrainspectError:
    return TrainspectError(f"{_PREFIX} {path}: {why}")


def _file_state(path: Path) -> tuple:
    """What changes when a writer commits: the file's and its WAL's size and mtime."""
    out = []
    for p in (path, path.with_name(path.name + "-wal")):
        try:
            st = p.stat()
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)
