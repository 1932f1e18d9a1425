"""The sync's writes to the team store, each inside the caller's transaction.

Rows go in with COPY (binary) where there are many (chunks, blocks, samples) and
with one statement per batch elsewhere. Nothing here decides what to send: that
is `trainspect.store.server.sync`; this module only knows the tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainspect.store.chunks import decode_steps
from trainspect.store.server.arrays import split_blocks
from trainspect.store.server.schema import BLOCK_POINTS, SUB_POINTS
from trainspect.store.server.spool import ChunkRow

_RUN_COLUMNS = ("name", "status", "started_at", "ended_at", "heartbeat_at", "attempt", "host",
                "pid", "tags", "config", "config_text", "meta")
_BLOCK_COLUMNS = ("key_uid", "attempt", "spool_uid", "seq", "block", "run_uid", "n",
                  "step_first", "stride", "steps", "vals", "sub_min", "sub_max")
_BLOCK_TYPES = ["int8", "int4", "int8", "int8", "int4", "int8", "int4", "int8", "int8",
                "int8[]", "float8[]", "float8[]", "float8[]"]
_CHUNK_COLUMNS = ("spool_uid", "seq", "key_uid", "attempt", "level", "n", "step_min",
                  "step_max", "stride", "block_first", "block_last", "block_min", "block_max",
                  "times")
_CHUNK_TYPES = ["int8", "int8", "int8", "int4", "int4", "int4", "int8", "int8", "int8",
                "int8[]", "int8[]", "float8[]", "float8[]", "bytea"]


@dataclass
class KeyState:
    """What the server knows of one metric of a run, kept current by every push."""

    key_uid: int
    step_max: int | None
    overlapping: bool
    last_order: tuple[int, int, int] | None  # (attempt, spool_uid, seq) of the newest chunk
    vlast: float | None
    touched: bool = False


def lock_run(conn: Any, project: str, run_id: str, name: str) -> int:
    """The run's uid, creating its row if needed, locked until the transaction ends.

    The row lock serialises every writer of one run (two spools, a live sync and
    `trainspect sync`), so the run's rows are committed in `ord` order.
    """
    conn.execute(
        "INSERT INTO trainspect.runs (project, run_id, name) VALUES (%s, %s, %s) "
        "ON CONFLICT (project, run_id) DO NOTHING", (project, run_id, name))
    row = conn.execute(
        "SELECT run_uid FROM trainspect.runs WHERE project = %s AND run_id = %s FOR UPDATE",
        (project, run_id)).fetchone()
    return int(row[0])


def spool(conn: Any, run_uid: int, token: str, first_attempt: int, host: str | None,
          path: str) -> tuple[int, int]:
    """(spool_uid, synced_seq) of this spool of the run, registering it on first sight."""
    conn.execute(
        "INSERT INTO trainspect.spools (run_uid, token, first_attempt, host, path) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_uid, token) DO NOTHING",
        (run_uid, token, first_attempt, host, path))
    row = conn.execute(
        "SELECT spool_uid, synced_seq FROM trainspect.spools WHERE run_uid = %s AND token = %s",
        (run_uid, token)).fetchone()
    return int(row[0]), int(row[1])


def set_cursor(conn: Any, spool_uid: int, synced_seq: int) -> None:
    conn.execute("UPDATE trainspect.spools SET synced_seq = %s, synced_at = now() "
                 "WHERE spool_uid = %s", (synced_seq, spool_uid))


def key_states(conn: Any, run_uid: int, names: Iterable[str]) -> dict[str, KeyState]:
    """Each metric's state, creating the metrics the server does not know yet."""
    names = sorted(set(names))
    if not names:
        return {}
    conn.execute(
        "INSERT INTO trainspect.keys (run_uid, name) SELECT %s, unnest(%s::text[]) "
        "ON CONFLICT (run_uid, name) DO NOTHING", (run_uid, names))
    rows = conn.execute(
        "SELECT name, key_uid, step_max, overlapping, last_order, vlast FROM trainspect.keys "
        "WHERE run_uid = %s AND name = ANY(%s)", (run_uid, names)).fetchall()
    return {name: KeyState(uid, step_max, overlapping,
                           tuple(order) if order is not None else None, vlast)
            for name, uid, step_max, overlapping, order, vlast in rows}


def server_signatures(conn: Any, spool_uid: int,
                      key_uids: list[int]) -> dict[int, set[tuple[int, int, int]]]:
    """Per metric, the (seq, level, n) of each chunk of this spool the server holds."""
    out: dict[int, set[tuple[int, int, int]]] = {k: set() for k in key_uids}
    for key_uid, seq, level, n in conn.execute(
            "SELECT key_uid, seq, level, n FROM trainspect.chunks "
            "WHERE spool_uid = %s AND key_uid = ANY(%s)", (spool_uid, key_uids)):
        out[key_uid].add((seq, level, n))
    return out


def delete_chunks(conn: Any, spool_uid: int, stale: list[tuple[int, int]]) -> None:
    """Remove chunks (key_uid, seq) of this spool and their blocks: merged away locally."""
    if not stale:
        return
    key_uids = [k for k, _ in stale]
    seqs = [s for _, s in stale]
    conn.execute(
        "DELETE FROM trainspect.blocks b USING unnest(%s::int8[], %s::int8[]) AS d(key_uid, seq)"
        " WHERE b.key_uid = d.key_uid AND b.spool_uid = %s AND b.seq = d.seq",
        (key_uids, seqs, spool_uid))
    conn.execute(
        "DELETE FROM trainspect.chunks c USING unnest(%s::int8[]) AS d(seq) "
        "WHERE c.spool_uid = %s AND c.seq = d.seq", (seqs, spool_uid))


def copy_chunks(conn: Any, run_uid: int, spool_uid: int,
                chunks: list[tuple[int, ChunkRow]]) -> int:
    """Insert chunks (key_uid, local chunk row) and their points as blocks; returns points."""
    if not chunks:
        return 0
    blocks = []
    for _, c in chunks:
        steps = decode_steps(c.steps, c.n, c.step_min, c.step_max)
        blocks.append(split_blocks(steps, np.frombuffer(c.vals, "<f8"), BLOCK_POINTS,
                                   SUB_POINTS))
    with conn.cursor() as cur:
        with cur.copy(f"COPY trainspect.chunks ({', '.join(_CHUNK_COLUMNS)}) "
                      "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_CHUNK_TYPES)
            for (key_uid, c), b in zip(chunks, blocks):
                copy.write_row((spool_uid, c.seq, key_uid, c.attempt, c.level, c.n, c.step_min,
                                c.step_max, chunk_stride(c), *b.summary, c.times))
        with cur.copy(f"COPY trainspect.blocks ({', '.join(_BLOCK_COLUMNS)}) "
                      "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(_BLOCK_TYPES)
            for (key_uid, c), b in zip(chunks, blocks):
                for i, (n, first, stride) in enumerate(zip(b.n.tolist(), b.first.tolist(),
                                                           b.stride.tolist())):
                    copy.write_row((key_uid, c.attempt, spool_uid, c.seq, i, run_uid, n, first,
                                    stride, b.steps[i], b.vals[i], b.sub_min[i], b.sub_max[i]))
    return sum(c.n for _, c in chunks)


def chunk_stride(c: ChunkRow) -> int:
    """The steps' stride when the chunk's steps rise evenly (not stored locally), else 0."""
    if c.steps or c.n < 2:
        return 0
    return (c.step_max - c.step_min) // (c.n - 1)


def overlapping_keys(conn: Any, key_uids: list[int]) -> set[int]:
    """Metrics whose steps do not simply rise in write order (a chunk unordered inside, or
    starting at or below a step written before it): reads must sort and dedupe them."""
    if not key_uids:
        return set()
    rows = conn.execute(
        "SELECT key_uid FROM (SELECT key_uid, level, step_min, max(step_max) OVER ("
        "  PARTITION BY key_uid ORDER BY attempt, spool_uid, seq"
        "  ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before_max"
        " FROM trainspect.chunks WHERE key_uid = ANY(%s)) w "
        "GROUP BY key_uid HAVING bool_or(level < 0 OR step_min <= before_max)",
        (key_uids,)).fetchall()
    return {r[0] for r in rows}


def save_keys(conn: Any, states: Iterable[KeyState]) -> None:
    rows = [(s.step_max, s.overlapping, list(s.last_order) if s.last_order else None, s.vlast,
             s.key_uid) for s in states if s.touched]
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                "UPDATE trainspect.keys SET step_max = %s, overlapping = %s, last_order = %s,"
                " vlast = %s WHERE key_uid = %s", rows)


def insert_records(conn: Any, run_uid: int, spool_uid: int,
                   records: dict[str, list[tuple]]) -> None:
    """Samples, matrices, alerts and eval examples, as read from the spool (seq first)."""
    with conn.cursor() as cur:
        samples = records.get("samples") or []
        if samples:
            with cur.copy("COPY trainspect.samples (spool_uid, run_uid, seq, step, stream, grp, "
                          "sample_id, context, positions, wall_time) FROM STDIN") as copy:
                for row in samples:
                    copy.write_row((spool_uid, run_uid, *row))
        statements = {
            "matrices": "INSERT INTO trainspect.matrices (spool_uid, run_uid, seq, name, step, "
                        "n_rows, n_cols, vals, row_labels, col_labels, wall_time) VALUES "
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            "alerts": "INSERT INTO trainspect.alerts (spool_uid, run_uid, seq, step, rule, level, "
                      "message, action, state, wall_time) VALUES "
                      "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            "eval_examples": "INSERT INTO trainspect.eval_examples (spool_uid, run_uid, seq, "
                             "step, eval_name, example_id, em, ce, tokens, correct_tokens, "
                             "output, checkpoint, wall_time) VALUES "
                             "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        }
        for table, sql in statements.items():
            rows = records.get(table) or []
            if table == "eval_examples":
                rows = [(*r[:4], bool(r[4]), *r[5:]) for r in rows]
            if rows:
                cur.executemany(sql, [(spool_uid, run_uid, *row) for row in rows])


def upsert_eval_set(conn: Any, run_uid: int, rows: list[tuple]) -> None:
    if rows:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO trainspect.eval_set (run_uid, eval_name, example_id, prompt, "
                "reference, pattern, length_bin, ref_tokens) VALUES "
                "(%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (run_uid, eval_name, example_id) "
                "DO UPDATE SET prompt = EXCLUDED.prompt, reference = EXCLUDED.reference, "
                "pattern = EXCLUDED.pattern, length_bin = EXCLUDED.length_bin, "
                "ref_tokens = EXCLUDED.ref_tokens", [(run_uid, *row) for row in rows])


def update_run(conn: Any, run_uid: int, meta: dict[str, Any] | None, last_step: int | None,
               alerts_added: int, rows_added: bool) -> None:
    """The run's row: its metadata columns (when `meta` changed), last step, alert count,
    and `last_ord`, the newest `ord` of its rows (live readers poll it, one index lookup)."""
    if meta is not None:
        values = run_columns(meta)
        sets = ", ".join(f"{c} = %s" for c in _RUN_COLUMNS)
        conn.execute(f"UPDATE trainspect.runs SET {sets}, updated_at = now() WHERE run_uid = %s",
                     (*[values[c] for c in _RUN_COLUMNS], run_uid))
    if rows_added:  # currval: the last ord this session drew, in this transaction
        conn.execute(
            "UPDATE trainspect.runs SET last_step = GREATEST(last_step, %s), "
            "alert_count = alert_count + %s, last_ord = currval('trainspect.ord'), "
            "updated_at = now() WHERE run_uid = %s", (last_step, alerts_added, run_uid))


def run_columns(meta: dict[str, Any]) -> dict[str, Any]:
    """The run row's searchable columns from the spool's meta table."""
    from psycopg.types.json import Jsonb

    tags = meta.get("tags")
    return {
        "name": str(meta.get("name") or meta.get("id") or ""),
        "status": str(meta.get("status") or "running"),
        "started_at": _float(meta.get("started_at")),
        "ended_at": _float(meta.get("ended_at")),
        "heartbeat_at": _float(meta.get("heartbeat_at")),
        "attempt": int(meta.get("attempt") or 1),
        "host": None if meta.get("host") is None else str(meta.get("host")),
        "pid": meta.get("pid") if isinstance(meta.get("pid"), int) else None,
        "tags": [str(t) for t in tags] if isinstance(tags, (list, tuple)) else [],
        "config": Jsonb(_strict_json(meta.get("config") or {})),  # for search
        "config_text": json.dumps(meta.get("config") or {}, allow_nan=True, default=repr),
        "meta": json.dumps(meta, allow_nan=True, default=repr),
    }


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


def _strict_json(value: Any) -> Any:
    """`value` with non-finite floats as strings: jsonb has no NaN (the text copy keeps it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {str(k): _strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict_json(v) for v in value]
    return value
