"""The writer thread: everything the training thread enqueues is committed here.

The training thread only appends to deques (a few hundred nanoseconds). This thread
wakes every `interval_s`, or at once when asked to flush, runs the pending jobs
(flush resolutions that turn device buffers into records), packs scalar points into
one chunk per key, and commits the batch in one transaction.

What can go wrong, and what happens (docs/architecture.md, "Faults"):
- a bad record (a step outside int64, a value json cannot encode) is dropped alone,
  before the transaction, and counted in the run's meta; the rest is written;
- SQLite cannot write (full disk, read-only file, I/O error): the batch is kept in
  memory (bounded) and retried; one log line says so;
- any other error inside the transaction: the batch is written again one item at a
  time, each in its own savepoint, so only the item that fails is dropped;
- key ids are cached only once their transaction has committed, so a rollback can
  never hand one key's id to another.
The training thread never sees any of it.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainspect.records import Scalar
from trainspect.store import schema
from trainspect.store.chunks import pack
from trainspect.store.connect import connect_for_write
from trainspect.store.lock import WriterLock
from trainspect.store.merge import INSERT_CHUNK, MERGE_FANOUT, ChunkMerger
from trainspect.store.rows import (
    Columns,
    Dropped,
    Row,
    add_entries,
    count_points,
    merge_columns,
    meta_rows,
    real,
    record_rows,
    scalar_entries,
)

__all__ = ["MAX_HELD_POINTS", "MAX_HELD_RECORDS", "MERGE_FANOUT", "StoreWriter"]

log = logging.getLogger("trainspect.store")

MAX_HELD_POINTS = 5_000_000  # what a failing disk may hold in memory before dropping
MAX_HELD_RECORDS = 10_000

Job = Callable[[], Iterable[Any]]
# Sees each committed batch once (new scalar columns, other records); may add records.
Observer = Callable[[Columns, list[Any]], Iterable[Any]]

_UPSERT_META = ("INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value")


@dataclass
class Batch:
    """One tick's worth of data: scalar columns, other records, meta updates."""

    columns: Columns = field(default_factory=dict)
    records: list[Any] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.columns or self.records or self.meta)

    def add(self, later: Batch) -> Batch:
        merge_columns(self.columns, later.columns)
        self.records.extend(later.records)
        self.meta.update(later.meta)
        return self


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
        lock: WriterLock | None = None,
    ) -> None:
        self.path = path
        self.lock = lock  # released when the writer stops
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
        self._meta_warned: set[str] = set()
        self.write_errors = 0
        self.dropped = Dropped()
        self._dropped_stored = self._dropped_in_batch = (0, 0)
        self._held = Batch()  # kept after a failed write, retried first on the next tick
        self._merger = ChunkMerger(attempt)

        self._conn = connect_for_write(path)
        try:
            schema.migrate(self._conn, path)
            self._seq = schema.max_seq(self._conn)
            self._key_ids = self._read_key_ids()
        except BaseException:
            self._conn.close()
            raise
        self._last_heartbeat = 0.0
        self._thread = threading.Thread(target=self._loop, name="trainspect-writer", daemon=True)
        self._thread.start()

    @property
    def dropped_points(self) -> int:
        return self.dropped.points

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
            except Exception as err:  # a bug: the loop must survive it, and say what it cost
                self._report("the writer's tick failed", err,
                             "what it had taken was kept and is retried")
                self._last_ok = False
            for barrier in barriers:
                barrier.set()
            if stopping:
                self._shutdown()
                for barrier in _drain(self._barriers):
                    barrier.set()
                return

    def _tick(self, final: bool = False) -> None:
        batch, self._held = self._held, Batch()
        fresh = self._take_fresh()
        batch.add(fresh)
        now = time.time()
        if final or now - self._last_heartbeat >= self.heartbeat_s:
            batch.meta["heartbeat_at"] = now
        if (self.dropped.points, self.dropped.records) != self._dropped_stored:
            batch.meta["heartbeat_at"] = now  # a drop since the last commit: store its count
        if not batch:
            return
        if self._commit(batch) and batch.meta.get("heartbeat_at") == now:
            self._last_heartbeat = now

    def _take_fresh(self) -> Batch:
        """Everything enqueued since the last tick; observers see it here, once."""
        records: list[Any] = []
        for job in _drain(self.jobs):
            try:
                records.extend(job() or ())
            except Exception as err:
                self._report("a flush job failed", err, "its records are lost")
        records.extend(_drain(self.records))
        fresh = Batch()
        add_entries(fresh.columns, _drain(self.scalars), self.dropped)
        add_entries(fresh.columns, scalar_entries(
            [r for r in records if isinstance(r, Scalar)], self.dropped), self.dropped)
        fresh.records = [r for r in records if not isinstance(r, Scalar)]
        for observer in self.observers:  # e.g. alert rules: they see each batch once
            try:
                fresh.records.extend(observer(fresh.columns, fresh.records) or ())
            except Exception as err:
                self._report("an observer failed", err, "the batch is stored without it")
        for update in _drain(self._meta):
            fresh.meta.update(update)
        return fresh

    # ---- one transaction ----------------------------------------------------------------

    def _commit(self, batch: Batch) -> bool:
        """Write `batch`; True once it is committed. Bad items are dropped and counted."""
        rows, batch.records = self._record_rows(batch.records)
        try:
            written = self._write(batch, rows)
        except sqlite3.OperationalError as err:  # full disk, read-only, I/O error, locked
            self._hold(batch)
            self._report(f"could not write to {self.path}", err,
                         "what was not written is kept in memory and retried")
            self._last_ok = False
            return False
        except Exception as err:  # the same error would come back: isolate the bad item
            log.debug("trainspect: batch failed, writing item by item", exc_info=err)
            try:
                written = self._write_one_by_one(batch, rows)
            except sqlite3.OperationalError as again:
                self._hold(batch)
                self._report(f"could not write to {self.path}", again,
                             "what was not written is kept in memory and retried")
                self._last_ok = False
                return False
        self._last_ok = True
        try:
            self._merger.after_write(self._conn, written)
        except sqlite3.Error as err:
            self._report(f"could not merge chunks in {self.path}", err,
                         "the small chunks stay as they are")
        return True

    def _record_rows(self, records: list[Any]) -> tuple[list[list[Row]], list[Any]]:
        """Each record's rows; a record that cannot become rows is dropped here, alone."""
        rows, kept = [], []
        for record in records:
            try:
                rows.append(record_rows(record, self._next_seq))
                kept.append(record)
            except Exception as err:  # any bad value: drop this record, count it, say it once
                self.dropped.record(record, err)
        return rows, kept

    def _meta_rows(self, batch: Batch) -> list[tuple[str, str]]:
        self._dropped_in_batch = (self.dropped.points, self.dropped.records)
        if self._dropped_in_batch != self._dropped_stored:
            batch.meta.update(dropped_points=self.dropped.points,
                              dropped_records=self.dropped.records)
        return meta_rows(batch.meta, self._meta_warned)

    def _chunk_rows(self, columns: Columns) -> list[tuple[str, tuple]]:
        out = []
        for name, segments in columns.items():
            if len(segments) == 1:
                steps, vals, times = segments[0]
            else:
                steps, vals, times = (np.concatenate(parts) for parts in zip(*segments))
            chunk = pack(steps, vals, times)
            out.append((name, (
                self._next_seq(), None, self.attempt, 0 if chunk.ordered else -1, chunk.n,
                chunk.step_min, chunk.step_max, chunk.vmin, chunk.vmax, real(chunk.vlast),
                chunk.steps, chunk.vals, chunk.times)))
        return out

    def _write(self, batch: Batch, rows: list[list[Row]]) -> list[int]:
        """One transaction; key ids it creates are cached only after the commit."""
        chunks, meta = self._chunk_rows(batch.columns), self._meta_rows(batch)
        new_keys: dict[str, int] = {}
        with self._conn:
            chunk_rows = [(p[0], self._key_id(name, new_keys), *p[2:]) for name, p in chunks]
            self._conn.executemany(INSERT_CHUNK, chunk_rows)
            for record in rows:
                for sql, params in record:
                    self._conn.execute(sql, params)
            self._conn.executemany(_UPSERT_META, meta)
        self._committed(new_keys)
        return [row[1] for row in chunk_rows if row[3] == 0]

    def _write_one_by_one(self, batch: Batch, rows: list[list[Row]]) -> list[int]:
        """The same batch, each key's chunk, record and meta value in its own savepoint."""
        chunks, meta = self._chunk_rows(batch.columns), self._meta_rows(batch)
        new_keys: dict[str, int] = {}
        written: list[int] = []
        with self._conn:
            self._conn.execute("BEGIN")
            for name, params in chunks:
                item_keys: dict[str, int] = {}
                try:
                    self._savepoint(lambda n=name, p=params, k=item_keys: self._conn.execute(
                        INSERT_CHUNK, (p[0], self._key_id(n, {**new_keys, **k}, k), *p[2:])))
                except _ItemFailed as failed:
                    self.dropped.point(failed.err, f"chunk of {name!r}", params[4])
                    continue
                new_keys.update(item_keys)
                if params[3] == 0:
                    written.append(self._key_id(name, new_keys))
            for record, record_rows_ in zip(batch.records, rows):
                try:
                    self._savepoint(lambda r=record_rows_: [self._conn.execute(*x) for x in r])
                except _ItemFailed as failed:
                    self.dropped.record(record, failed.err)
            for key, value in meta:
                try:
                    self._savepoint(lambda k=key, v=value: self._conn.execute(
                        _UPSERT_META, (k, v)))
                except _ItemFailed as failed:
                    log.warning("trainspect: could not store meta %r: %s", key, failed.err)
        self._committed(new_keys)
        return written

    def _savepoint(self, write: Callable[[], Any]) -> None:
        """Run `write` in a savepoint; roll only it back (and raise _ItemFailed) if it fails."""
        self._conn.execute("SAVEPOINT item")
        try:
            write()
        except sqlite3.OperationalError:
            raise  # the disk, not the item: the whole batch is held
        except Exception as err:
            self._conn.execute("ROLLBACK TO item")
            self._conn.execute("RELEASE item")
            raise _ItemFailed(err) from err
        self._conn.execute("RELEASE item")

    def _committed(self, new_keys: dict[str, int]) -> None:
        self._key_ids.update(new_keys)
        self._dropped_stored = self._dropped_in_batch  # later drops go in the next batch

    def _key_id(self, name: str, known: dict[str, int],
                new: dict[str, int] | None = None) -> int:
        """The key's id; a new key is inserted and recorded in `new` (default: `known`),
        to join the cache only once the transaction commits."""
        key_id = self._key_ids.get(name) or known.get(name)
        if key_id is None:
            key_id = self._conn.execute("INSERT INTO keys (name) VALUES (?)", (name,)).lastrowid
            (known if new is None else new)[name] = key_id
        return key_id

    def _read_key_ids(self) -> dict[str, int]:
        return {name: key_id for key_id, name in self._conn.execute("SELECT id, name FROM keys")}

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    # ---- failures ---------------------------------------------------------------------

    def _hold(self, batch: Batch) -> None:
        """Keep a batch that could not be written, up to MAX_HELD_POINTS points."""
        held = count_points(batch.columns)
        if held > MAX_HELD_POINTS:
            self.dropped.point(MemoryError(f"over {MAX_HELD_POINTS:,} points held while the "
                                           "store could not be written"), "held", held)
            batch.columns = {}
        if len(batch.records) > MAX_HELD_RECORDS:
            for record in batch.records[:-MAX_HELD_RECORDS]:
                self.dropped.record(record, MemoryError(
                    f"over {MAX_HELD_RECORDS:,} records held while the store could not be "
                    "written"))
            batch.records = batch.records[-MAX_HELD_RECORDS:]
        self._held = batch.add(self._held)

    def _report(self, what: str, err: BaseException, consequence: str) -> None:
        self.write_errors += 1
        message = f"{what}: {err}"
        if message in self._failed_messages:
            return
        self._failed_messages.add(message)
        log.error("trainspect: %s. Training goes on; %s (check free space and permissions "
                  "of %s).", message, consequence, self.path.parent)

    def _shutdown(self) -> None:
        try:
            if self._last_ok:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as err:
            self._report("could not checkpoint the WAL", err, "the WAL file stays beside it")
        finally:
            self._conn.close()
            if self.lock is not None:
                self.lock.release()


class _ItemFailed(Exception):
    def __init__(self, err: Exception) -> None:
        super().__init__(str(err))
        self.err = err


def _drain(queue: deque) -> list:
    out = []
    while True:
        try:
            out.append(queue.popleft())
        except IndexError:
            return out
