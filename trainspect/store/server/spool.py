"""Reading a local run file (the spool) for the sync: one consistent snapshot per round.

The sync never writes to the spool. It opens the file read-only (WAL lets it
read while the run's writer writes) and reads each round inside one read
transaction, so a batch, the chunk list it is checked against and the file's
newest seq all come from the same moment.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainspect.store import schema as local_schema
from trainspect.store.connect import connect_for_read

MAX_BATCH_POINTS = 2_000_000  # points per sync transaction (one chunk may exceed it)
MAX_BATCH_CHUNKS = 20_000
# The columns the sync copies, named (not `*`) so a later local migration cannot shift them.
RECORD_COLUMNS = {
    "samples": ("seq", "step", "stream", "grp", "sample_id", "context", "positions",
                "wall_time"),
    "matrices": ("seq", "name", "step", "n_rows", "n_cols", "vals", "row_labels",
                 "col_labels", "wall_time"),
    "alerts": ("seq", "step", "rule", "level", "message", "action", "state", "wall_time"),
    "eval_examples": ("seq", "step", "eval_name", "example_id", "em", "ce", "tokens",
                      "correct_tokens", "output", "checkpoint", "wall_time"),
}
EVAL_SET_COLUMNS = ("eval_name", "example_id", "prompt", "reference", "pattern", "length_bin",
                    "ref_tokens")


@dataclass(frozen=True)
class ChunkRow:
    """One `scalar_chunks` row of the spool."""

    seq: int
    key_id: int
    attempt: int
    level: int
    n: int
    step_min: int
    step_max: int
    vlast: float | None
    steps: bytes
    vals: bytes
    times: bytes

    @property
    def signature(self) -> tuple[int, int, int]:
        """What identifies a chunk's content: a merge keeps the seq but raises the level."""
        return self.seq, self.level, self.n


_CHUNK_COLUMNS = ("seq, key_id, attempt, level, n, step_min, step_max, vlast, steps, vals, "
                  "times")


def open_spool(path: Path) -> sqlite3.Connection:
    conn = connect_for_read(path)
    conn.isolation_level = None  # transactions are opened explicitly by `snapshot`
    local_schema.check_readable(conn, path)
    return conn


@contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction: every read inside sees the file as of its first read."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def has_tables(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
                        ).fetchone() is not None


def read_meta(conn: sqlite3.Connection) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in conn.execute("SELECT key, value FROM meta")}


def key_names(conn: sqlite3.Connection) -> dict[int, str]:
    return dict(conn.execute("SELECT id, name FROM keys"))


def newest_seq(conn: sqlite3.Connection) -> int:
    return local_schema.max_seq(conn)


def batch_end(conn: sqlite3.Connection, cursor: int, newest: int) -> int:
    """The seq to push up to this round: everything, or where the points budget runs out."""
    max_points, max_chunks = MAX_BATCH_POINTS, MAX_BATCH_CHUNKS
    points, previous = 0, cursor
    rows = conn.execute("SELECT seq, n FROM scalar_chunks WHERE seq > ? ORDER BY seq", (cursor,))
    for count, (seq, n) in enumerate(rows, 1):
        points += n
        if count > 1 and (points > max_points or count > max_chunks):
            return previous  # stop before the chunk that went over (never before the first)
        previous = seq
    return newest


def new_chunks(conn: sqlite3.Connection, cursor: int, end: int) -> list[ChunkRow]:
    rows = conn.execute(f"SELECT {_CHUNK_COLUMNS} FROM scalar_chunks WHERE seq > ? AND seq <= ? "
                        "ORDER BY seq", (cursor, end))
    return [ChunkRow(*row) for row in rows]


def chunk_signatures(conn: sqlite3.Connection, key_ids: list[int],
                     end: int) -> dict[int, set[tuple[int, int, int]]]:
    """Per key, the (seq, level, n) of every chunk with seq <= end."""
    out: dict[int, set[tuple[int, int, int]]] = {k: set() for k in key_ids}
    for key_id in key_ids:
        for seq, level, n in conn.execute(
                "SELECT seq, level, n FROM scalar_chunks WHERE key_id = ? AND seq <= ?",
                (key_id, end)):
            out[key_id].add((seq, level, n))
    return out


def chunks_by_seq(conn: sqlite3.Connection, seqs: list[int]) -> list[ChunkRow]:
    out = []
    for start in range(0, len(seqs), 500):
        part = seqs[start:start + 500]
        marks = ",".join("?" * len(part))
        out.extend(ChunkRow(*row) for row in conn.execute(
            f"SELECT {_CHUNK_COLUMNS} FROM scalar_chunks WHERE seq IN ({marks})", part))
    return sorted(out, key=lambda c: c.seq)


def records(conn: sqlite3.Connection, cursor: int, end: int) -> dict[str, list[tuple]]:
    """Samples, matrices, alerts and eval examples with cursor < seq <= end, in seq order."""
    out = {}
    for table, columns in RECORD_COLUMNS.items():
        if not _has_table(conn, table):  # eval tables arrived with local schema 2
            out[table] = []
            continue
        out[table] = conn.execute(
            f"SELECT {', '.join(columns)} FROM {table} WHERE seq > ? AND seq <= ? ORDER BY seq",
            (cursor, end),
        ).fetchall()
    return out


def eval_set_rows(conn: sqlite3.Connection, pairs: set[tuple[str, str]]) -> list[tuple]:
    """The eval_set rows (prompt, reference, ...) of the given (eval_name, example_id)s."""
    if not pairs or not _has_table(conn, "eval_set"):
        return []
    out = []
    for eval_name, example_id in sorted(pairs):
        row = conn.execute(
            f"SELECT {', '.join(EVAL_SET_COLUMNS)} FROM eval_set "
            "WHERE eval_name = ? AND example_id = ?", (eval_name, example_id)).fetchone()
        if row is not None:
            out.append(row)
    return out


def _has_table(conn: sqlite3.Connection, table: str) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        (table,)).fetchone() is not None
