"""The writer thread: everything the training thread enqueues is committed here.

The training thread only appends to deques (a few hundred nanoseconds). This thread
wakes every `interval_s`, or at once when asked to flush, runs the pending jobs
(flush resolutions that turn device buffers into records), packs scalar points into
one chunk per key, and commits the batch in one transaction. A failed write (full
disk, read-only file) is logged once, kept in memory and retried; the training
thread never sees it.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from trainspect.records import Alert, EvalExample, Matrix, SampleRow, Scalar
from trainspect.store import schema
from trainspect.store.chunks import decode_steps, pack
from trainspect.store.connect import connect_for_write
from trainspect.store.matrices import pack_matrix

log = logging.getLogger("trainspect.store")

MERGE_FANOUT = 16  # merge a key's chunks once this many of one level have piled up
MAX_LEVEL = 4  # 16**4 writes per chunk at most: chunks stay a few MB
MAX_HELD_POINTS = 5_000_000  # what a failing disk may hold in memory before dropping

Job = Callable[[], Iterable[Any]]
# Per key, segments of (int64 steps, float64 values, float64 wall times) arrays.
Columns = dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]
# Sees each committed batch once (new scalar columns, other records); may add records.
Observer = Callable[[Columns, list[Any]], Iterable[Any]]


_INSERT_CHUNK = (
    "INSERT INTO scalar_chunks (seq, key_id, attempt, level, n, step_min, step_max,"
    " vmin, vmax, vlast, steps, vals, times) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)


def _json(value: Any) -> str:
    return json.dumps(value, default=repr, allow_nan=True)


class StoreWriter:
    """Owns the run file's one write connection and the thread that uses it."""

    def __init__(
        self,
        path: Path,
        *,
        attempt: int = 1,
        interval_s: float = 0.25,
        heartbeat_s: float = 5.0,
        observers: list[Observer] | None = None,
    ) -> None:
        self.path = path
        self.attempt = attempt
        self.interval_s = interval_s
        self.heartbeat_s = heartbeat_s
        self.observers = observers if observers is not None else []
        # What the training thread appends to. deque.append/popleft are thread-safe.
        self.scalars: deque[tuple[int, float, dict[str, float]]] = deque()
        self.records: deque[Any] = deque()
        self.jobs: deque[Job] = deque()
        self._meta: deque[dict[str, Any]] = deque()
        self._barriers: deque[threading.Event] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._last_ok = True
        self._failed_messages: set[str] = set()
        self.write_errors = 0
        self.dropped_points = 0
        # Held after a failed write, retried first on the next tick.
        self._held_columns: Columns = {}
        self._held_records: list[Any] = []
        self._held_meta: dict[str, Any] = {}

        self._conn = connect_for_write(path)
        schema.migrate(self._conn, path)
        self._seq = schema.max_seq(self._conn)
        self._key_ids: dict[str, int] = dict(
            (name, key_id) for key_id, name in self._conn.execute("SELECT id, name FROM keys")
        )
        self._level_counts: dict[tuple[int, int], int] = {}
        self._last_heartbeat = 0.0
        self._thread = threading.Thread(target=self._loop, name="trainspect-writer", daemon=True)
        self._thread.start()

    # ---- called from the training thread -------------------------------------------

    def set_meta(self, **values: Any) -> None:
        self._meta.append(values)
        self._wake.set()

    def flush(self, timeout: float = 60.0) -> bool:
        """Block until everything enqueued so far is committed; False if it could not be."""
        if not self._thread.is_alive():
            return False
        done = threading.Event()
        self._barriers.append(done)
        self._wake.set()
        return done.wait(timeout) and self._last_ok

    def close(self, timeout: float = 60.0) -> bool:
        """Write what is left, checkpoint the WAL into the main file and stop."""
        if not self._thread.is_alive():
            return self._last_ok
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        return self._last_ok and not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ---- the writer thread ------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval_s)
            self._wake.clear()
            stopping = self._stopping
            barriers = _drain(self._barriers)  # data enqueued before a barrier is in the deques
            try:
                self._tick(final=stopping)
            except Exception as err:  # the loop must survive anything a tick throws
                self._report("writer tick failed", err)
                self._last_ok = False
            for barrier in barriers:
                barrier.set()
            if stopping:
                self._shutdown()
                for barrier in _drain(self._barriers):
                    barrier.set()
                return

    def _tick(self, final: bool = False) -> None:
        records: list[Any] = []
        for job in _drain(self.jobs):
            try:
                records.extend(job() or ())
            except Exception as err:
                self._report("a flush job failed", err)
        records.extend(_drain(self.records))
        fresh: Columns = {}
        _add_entries(fresh, _drain(self.scalars))
        _add_entries(fresh, [(r.step, r.wall_time, {r.key: r.value}) for r in records
                             if isinstance(r, Scalar)])
        others = [r for r in records if not isinstance(r, Scalar)]
        for observer in self.observers:  # e.g. alert rules: they see each batch once
            try:
                others.extend(observer(fresh, others) or ())
            except Exception as err:
                self._report("an observer failed", err)
        columns = _merge_columns(self._held_columns, fresh)
        self._held_columns = {}
        others = self._held_records + others
        self._held_records = []
        meta = self._held_meta
        self._held_meta = {}
        for update in _drain(self._meta):
            meta.update(update)
        now = time.time()
        if final or now - self._last_heartbeat >= self.heartbeat_s:
            meta["heartbeat_at"] = now
        if not columns and not others and not meta:
            return
        try:
            with self._conn:
                written = self._write_columns(columns)
                self._write_records(others)
                self._write_meta(meta)
            if meta.get("heartbeat_at") == now:
                self._last_heartbeat = now
            self._last_ok = True
        except sqlite3.Error as err:
            self._resync_after_rollback()
            self._hold(columns, others, meta)
            self._report(f"could not write to {self.path}", err)
            self._last_ok = False
            return
        self._merge_small_chunks(written)

    def _resync_after_rollback(self) -> None:
        """Forget ids and seqs handed out inside a transaction that was rolled back."""
        try:
            self._seq = max(self._seq, schema.max_seq(self._conn))
            self._key_ids = dict(
                (name, key_id) for key_id, name in self._conn.execute("SELECT id, name FROM keys")
            )
        except sqlite3.Error:
            self._key_ids = {}  # re-read lazily once the file answers again

    def _key_id(self, name: str) -> int:
        key_id = self._key_ids.get(name)
        if key_id is None:
            key_id = self._conn.execute("INSERT INTO keys (name) VALUES (?)", (name,)).lastrowid
            self._key_ids[name] = key_id
        return key_id

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _write_columns(self, columns: Columns) -> list[int]:
        rows = []
        for name, segments in columns.items():
            if len(segments) == 1:
                steps, vals, times = segments[0]
            else:
                steps, vals, times = (np.concatenate(parts) for parts in zip(*segments))
            chunk = pack(steps, vals, times)
            rows.append((
                self._next_seq(), self._key_id(name), self.attempt, 0 if chunk.ordered else -1,
                chunk.n, chunk.step_min, chunk.step_max, chunk.vmin, chunk.vmax,
                _real(chunk.vlast), chunk.steps, chunk.vals, chunk.times,
            ))
        self._conn.executemany(_INSERT_CHUNK, rows)
        return [row[1] for row in rows if row[3] == 0]

    def _write_records(self, records: list[Any]) -> None:
        for r in records:
            if isinstance(r, SampleRow):
                self._conn.execute(
                    "INSERT INTO samples VALUES (?,?,?,?,?,?,?,?)",
                    (self._next_seq(), r.step, r.stream, r.group, r.sample_id, r.context,
                     _json(r.positions), r.wall_time or time.time()),
                )
            elif isinstance(r, Matrix):
                n_rows, n_cols, blob = pack_matrix(r.values)
                self._conn.execute(
                    "INSERT INTO matrices VALUES (?,?,?,?,?,?,?,?,?)",
                    (self._next_seq(), r.key, r.step, n_rows, n_cols, blob,
                     _json(list(r.row_labels)), _json(list(r.col_labels)),
                     r.wall_time or time.time()),
                )
            elif isinstance(r, EvalExample):
                self._conn.execute(
                    "INSERT OR REPLACE INTO eval_set VALUES (?,?,?,?,?,?,?)",
                    (r.eval_name, r.example_id, r.prompt, r.reference, r.pattern,
                     r.length_bin, r.ref_tokens),
                )
                self._conn.execute(
                    "INSERT INTO eval_examples VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (self._next_seq(), r.step, r.eval_name, r.example_id, int(r.em),
                     _real(r.ce), r.tokens, r.correct_tokens, r.output, r.checkpoint,
                     r.wall_time or time.time()),
                )
            elif isinstance(r, Alert):
                self._conn.execute(
                    "INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?)",
                    (self._next_seq(), r.step, r.rule, r.level, r.message, r.action, r.state,
                     r.wall_time or time.time()),
                )
            else:
                log.warning("trainspect: cannot store a record of type %s", type(r).__name__)

    def _write_meta(self, meta: dict[str, Any]) -> None:
        if meta:
            self._conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                [(k, _json(v)) for k, v in meta.items()],
            )

    def _merge_small_chunks(self, key_ids: list[int]) -> None:
        """Fold each key's level-L chunks into one level L+1 chunk every MERGE_FANOUT writes.

        Only chunks whose steps run strictly upward one after another are merged;
        the merged chunk keeps the largest seq of its parts, so live readers that
        already saw them are not sent them again and newest-wins is unchanged.
        """
        pending = [(key_id, 0) for key_id in key_ids]
        while pending:
            key_id, level = pending.pop()
            count = self._level_counts.get((key_id, level), 0) + 1
            if count < MERGE_FANOUT or level >= MAX_LEVEL:
                self._level_counts[(key_id, level)] = count
                continue
            self._level_counts[(key_id, level)] = 0
            try:
                with self._conn:
                    merged = self._merge(key_id, level)
            except sqlite3.Error as err:
                self._report(f"could not merge chunks in {self.path}", err)
                return
            if merged:
                pending.append((key_id, level + 1))

    def _merge(self, key_id: int, level: int) -> bool:
        parts = self._conn.execute(
            "SELECT seq, n, step_min, step_max, steps, vals, times FROM scalar_chunks "
            "WHERE key_id = ? AND level = ? AND attempt = ? ORDER BY seq",
            (key_id, level, self.attempt),
        ).fetchall()
        if len(parts) < 2:
            return False
        if any(b[2] <= a[3] for a, b in zip(parts, parts[1:])):
            return False  # steps went back somewhere: leave these chunks as written
        steps = np.concatenate([decode_steps(p[4], p[1], p[2], p[3]) for p in parts])
        vals = np.concatenate([np.frombuffer(p[5], "<f8") for p in parts])
        times = np.concatenate([np.frombuffer(p[6], "<f8") for p in parts])
        chunk = pack(steps, vals, times)
        self._conn.executemany("DELETE FROM scalar_chunks WHERE seq = ?", [(p[0],) for p in parts])
        self._conn.execute(_INSERT_CHUNK, (
            parts[-1][0], key_id, self.attempt, level + 1, chunk.n, chunk.step_min,
            chunk.step_max, chunk.vmin, chunk.vmax, _real(chunk.vlast), chunk.steps,
            chunk.vals, chunk.times,
        ))
        return True

    def _hold(self, columns: Columns, records: list[Any], meta: dict[str, Any]) -> None:
        """Keep a batch that could not be written, up to MAX_HELD_POINTS points."""
        held = sum(seg[0].size for segments in columns.values() for seg in segments)
        if held > MAX_HELD_POINTS:
            self.dropped_points += held
            columns = {}
        self._held_columns = columns
        self._held_records = records[-10_000:]
        self._held_meta = meta

    def _report(self, what: str, err: BaseException) -> None:
        self.write_errors += 1
        message = f"{what}: {err}"
        if message in self._failed_messages:
            return
        self._failed_messages.add(message)
        log.error(
            "trainspect: %s. Training goes on; what was not written is kept in memory "
            "and retried (check free space and permissions of %s).",
            message, self.path.parent,
        )

    def _shutdown(self) -> None:
        try:
            if self._last_ok:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as err:
            self._report("could not checkpoint the WAL", err)
        finally:
            self._conn.close()


def _drain(queue: deque) -> list:
    out = []
    while True:
        try:
            out.append(queue.popleft())
        except IndexError:
            return out


def _add_entries(columns: Columns, entries: list[tuple[int, float, dict[str, float]]]) -> None:
    """Turn logged dicts into per-key arrays, a run of same-keyed dicts at a time."""
    i, n = 0, len(entries)
    while i < n:
        keys = tuple(entries[i][2])
        j = i + 1
        while j < n and tuple(entries[j][2]) == keys:
            j += 1
        block = entries[i:j]
        steps = np.fromiter((e[0] for e in block), np.int64, len(block))
        times = np.fromiter((e[1] for e in block), np.float64, len(block))
        vals = np.array([list(e[2].values()) for e in block], np.float64).reshape(
            len(block), len(keys))  # (entries, keys)
        for column, key in enumerate(keys):
            columns.setdefault(key, []).append((steps, vals[:, column], times))
        i = j


def _merge_columns(first: Columns, second: Columns) -> Columns:
    for key, segments in second.items():
        first.setdefault(key, []).extend(segments)
    return first


def _real(value: float) -> float | None:
    return value if not math.isnan(value) else None

