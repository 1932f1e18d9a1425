"""One batch into one run file: rows built before the transaction, key ids cached after.

`Committer.commit(batch)` writes a batch in one transaction. Bad records were
already turned away by `rows.record_rows` (dropped alone, counted). An error SQLite
raises about the disk (sqlite3.OperationalError: full, read-only, I/O) leaves the
batch to the caller to hold and retry; any other error writes the batch again item
by item, each in its own savepoint, so only the item that fails is dropped. Key ids
a transaction creates join the cache only after it commits: a rollback can never
hand one key's id to another.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainspect.store import schema
from trainspect.store.chunks import pack_many
from trainspect.store.merge import INSERT_CHUNK, ChunkMerger
from trainspect.store.rows import (
    Columns,
    Dropped,
    Row,
    count_points,
    merge_columns,
    meta_rows,
    record_rows,
)

log = logging.getLogger("trainspect.store")

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


class Committer:
    """Writes batches through one write connection; knows the file's seqs and key ids."""

    def __init__(self, conn: sqlite3.Connection, attempt: int, dropped: Dropped) -> None:
        self.conn = conn
        self.attempt = attempt
        self.dropped = dropped
        self.points = self.records = 0  # committed to this file by this writer
        self._seq = schema.max_seq(conn)
        self._key_ids = {name: key_id for key_id, name in conn.execute(
            "SELECT id, name FROM keys")}
        self._merger = ChunkMerger(attempt)
        self._meta_warned: set[str] = set()
        self._dropped_stored = self._dropped_in_batch = (0, 0)

    @property
    def drops_unstored(self) -> bool:
        """Points or records were dropped since the counts last reached the file."""
        return (self.dropped.points, self.dropped.records) != self._dropped_stored

    def commit(self, batch: Batch) -> list[int]:
        """Write `batch` in one transaction; the keys that got a level-0 chunk.

        sqlite3.OperationalError: nothing was written (hold the batch and retry)."""
        rows, batch.records = self._record_rows(batch.records)
        try:
            return self._write(batch, rows)
        except sqlite3.OperationalError:
            raise
        except Exception as err:  # the same error would come back: isolate the bad item
            log.debug("trainspect: batch failed, writing item by item", exc_info=err)
            return self._write_one_by_one(batch, rows)

    def uncount(self, batch: Batch) -> None:
        """`batch` went to a file that was removed as it was written: it is not in the file."""
        self.points -= count_points(batch.columns)
        self.records -= len(batch.records)

    def merge(self, written: list[int]) -> None:
        """Fold small chunks of the keys just written; raises sqlite3.Error."""
        self._merger.after_write(self.conn, written)

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
        """One level-0 chunk row per key (its key id filled in later), all keys packed
        in one pass (`pack_many`)."""
        points = [segments[0] if len(segments) == 1 else
                  tuple(np.concatenate(parts) for parts in zip(*segments))
                  for segments in columns.values()]
        p = pack_many(points)
        first = self._seq + 1
        self._seq += len(points)
        return [(name, (seq, None, self.attempt, 0 if ordered else -1, *row))
                for name, seq, ordered, *row in zip(
                    columns, range(first, self._seq + 1), p.ordered, p.n, p.step_min,
                    p.step_max, p.vmin, p.vmax, p.vlast, p.steps, p.vals, p.times)]

    def _write(self, batch: Batch, rows: list[list[Row]]) -> list[int]:
        """One transaction; key ids it creates are cached only after the commit."""
        chunks, meta = self._chunk_rows(batch.columns), self._meta_rows(batch)
        new_keys: dict[str, int] = {}
        with self.conn:
            chunk_rows = [(p[0], self._key_id(name, new_keys), *p[2:]) for name, p in chunks]
            self.conn.executemany(INSERT_CHUNK, chunk_rows)
            for record in rows:
                for sql, params in record:
                    self.conn.execute(sql, params)
            self.conn.executemany(_UPSERT_META, meta)
        self._committed(new_keys, count_points(batch.columns), len(rows))
        return [row[1] for row in chunk_rows if row[3] == 0]

    def _write_one_by_one(self, batch: Batch, rows: list[list[Row]]) -> list[int]:
        """The same batch, each key's chunk, record and meta value in its own savepoint."""
        chunks, meta = self._chunk_rows(batch.columns), self._meta_rows(batch)
        new_keys: dict[str, int] = {}
        written: list[int] = []
        points = records = 0
        with self.conn:
            self.conn.execute("BEGIN")
            for name, params in chunks:
                item_keys: dict[str, int] = {}
                try:
                    self._savepoint(lambda n=name, p=params, k=item_keys: self.conn.execute(
                        INSERT_CHUNK, (p[0], self._key_id(n, {**new_keys, **k}, k), *p[2:])))
                except _ItemFailed as failed:
                    self.dropped.point(failed.err, f"chunk of {name!r}", params[4])
                    continue
                new_keys.update(item_keys)
                points += params[4]
                if params[3] == 0:
                    written.append(self._key_id(name, new_keys))
            for record, record_rows_ in zip(batch.records, rows):
                try:
                    self._savepoint(lambda r=record_rows_: [self.conn.execute(*x) for x in r])
                    records += 1
                except _ItemFailed as failed:
                    self.dropped.record(record, failed.err)
            for key, value in meta:
                try:
                    self._savepoint(lambda k=key, v=value: self.conn.execute(
                        _UPSERT_META, (k, v)))
                except _ItemFailed as failed:
                    log.warning("trainspect: could not store meta %r: %s", key, failed.err)
        self._committed(new_keys, points, records)
        return written

    def _savepoint(self, write: Callable[[], Any]) -> None:
        """Run `write` in a savepoint; roll only it back (and raise _ItemFailed) if it fails."""
        self.conn.execute("SAVEPOINT item")
        try:
            write()
        except sqlite3.OperationalError:
            raise  # the disk, not the item: the whole batch is held
        except Exception as err:
            self.conn.execute("ROLLBACK TO item")
            self.conn.execute("RELEASE item")
            raise _ItemFailed(err) from err
        self.conn.execute("RELEASE item")

    def _committed(self, new_keys: dict[str, int], points: int, records: int) -> None:
        self._key_ids.update(new_keys)
        self.points += points
        self.records += records
        self._dropped_stored = self._dropped_in_batch  # later drops go in the next batch

    def _key_id(self, name: str, known: dict[str, int],
                new: dict[str, int] | None = None) -> int:
        """The key's id; a new key is inserted and recorded in `new` (default: `known`),
        to join the cache only once the transaction commits."""
        key_id = self._key_ids.get(name) or known.get(name)
        if key_id is None:
            key_id = self.conn.execute("INSERT INTO keys (name) VALUES (?)", (name,)).lastrowid
            (known if new is None else new)[name] = key_id
        return key_id

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq


class _ItemFailed(Exception):
    def __init__(self, err: Exception) -> None:
        super().__init__(str(err))
        self.err = err
