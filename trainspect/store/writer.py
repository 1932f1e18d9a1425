"""The writer thread: everything the training thread enqueues is committed here.

The training thread only appends to deques (a few hundred nanoseconds). This thread
wakes every `interval_s`, or at once when asked to flush, runs the pending jobs
(flush resolutions that turn device buffers into records), packs scalar points into
one chunk per key, and commits the batch in one transaction (`store/commit.py`).

What can go wrong, and what happens (docs/architecture.md, "Faults"):
- a bad record (a step outside int64, a value json cannot encode) is dropped alone
  and counted in the run's meta (`dropped_points`, `dropped_records`);
- SQLite cannot write (full disk, read-only file, I/O error): the batch is kept in
  memory (bounded) and retried; one log line says so; `flush()` returns False;
- the run file or its folder is removed while the run writes: the file is made
  again with the run's meta, one critical alert and a count of what went with the
  old file (`file_recreated`, `lost_points`, `lost_records`); `flush()` returns
  False once for it. What was committed after the removal is written again.
The training thread never sees any of it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.records import Alert, Scalar
from trainspect.store import schema
from trainspect.store.commit import Batch, Committer
from trainspect.store.connect import connect_for_write
from trainspect.store.lock import Busy, WriterLock
from trainspect.store.merge import MERGE_FANOUT
from trainspect.store.rows import Columns, Dropped, add_entries, add_scalars, count_points

__all__ = ["MAX_HELD_POINTS", "MAX_HELD_RECORDS", "MERGE_FANOUT", "StoreWriter"]

log = logging.getLogger("trainspect.store")

MAX_HELD_POINTS = 5_000_000  # what a failing disk may hold in memory before dropping
MAX_HELD_RECORDS = 10_000

Job = Callable[[], Iterable[Any]]
# Sees each committed batch once (new scalar columns, other records); may add records.
Observer = Callable[[Columns, list[Any]], Iterable[Any]]


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
        self._lost_since_flush = False
        self._failed_messages: set[str] = set()
        self.write_errors = 0
        self.dropped = Dropped()
        self.lost = {"file_recreated": 0, "lost_points": 0, "lost_records": 0}
        self._held = Batch()  # kept after a failed write, retried first on the next tick
        self._meta_written: dict[str, Any] = {}  # to write again into a recreated file
        self._last_step = 0
        self._conn: sqlite3.Connection | None = None
        self._gone = (0, 0)  # points and records committed to a file that was removed
        self._open()
        self._last_heartbeat = 0.0
        self._thread = threading.Thread(target=self._loop, name="trainspect-writer", daemon=True)
        self._thread.start()

    def _open(self) -> None:
        """(Re)open the run file: create it if missing, migrate, learn its seqs and keys."""
        conn = connect_for_write(self.path)
        try:
            schema.migrate(conn, self.path)
            self._committer = Committer(conn, self.attempt, self.dropped)
            self._identity = _identity(self.path)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    @property
    def dropped_points(self) -> int:
        return self.dropped.points

    # ---- called from the training thread -------------------------------------------

    def set_meta(self, **values: Any) -> None:
        self._meta.append(values)
        self._wake.set()

    def flush(self, timeout: float = 60.0) -> bool:
        """Block until everything enqueued so far is committed; False if it could not be,
        or if the run file had to be made again since the last flush (data was lost)."""
        if not self._thread.is_alive():
            return False
        done = threading.Event()
        self._barriers.append(done)
        self._wake.set()
        ok = done.wait(timeout) and self._last_ok
        lost, self._lost_since_flush = self._lost_since_flush, False
        return ok and not lost

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
        batch = self._held.add(self._take_fresh())
        self._held = Batch()
        now = time.time()
        if final or now - self._last_heartbeat >= self.heartbeat_s or (
                self._conn is not None and self._committer.drops_unstored):
            batch.meta["heartbeat_at"] = now  # and a drop's count, when there is one
        if not batch:
            return
        try:
            if not self._file_is_ours() and not self._reopen(batch):
                self._hold(batch)
                return
        except Exception:  # a bug: keep the batch (the loop's log line says so)
            self._hold(batch)
            raise
        if not self._commit(batch):
            return
        if not self._file_is_ours():  # removed while we wrote: write the batch again
            self._committer.uncount(batch)
            self._held = batch.add(self._held)
            return
        self._meta_written.update(batch.meta)
        if batch.meta.get("heartbeat_at") == now:
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
        add_scalars(fresh.columns, [r for r in records if isinstance(r, Scalar)], self.dropped)
        fresh.records = [r for r in records if not isinstance(r, Scalar)]
        for observer in self.observers:  # e.g. alert rules: they see each batch once
            try:
                fresh.records.extend(observer(fresh.columns, fresh.records) or ())
            except Exception as err:
                self._report("an observer failed", err, "the batch is stored without it")
        for update in _drain(self._meta):
            fresh.meta.update(update)
        for segments in fresh.columns.values():
            self._last_step = max(self._last_step, int(segments[-1][0][-1]))
        return fresh

    def _commit(self, batch: Batch) -> bool:
        """Write `batch`; True once it is committed, else it is held for the next tick."""
        try:
            written = self._committer.commit(batch)
        except Exception as err:  # OperationalError: full disk, read-only, I/O; else a bug
            self._hold(batch)
            self._report(f"could not write to {self.path}", err,
                         "what was not written is kept in memory and retried")
            self._last_ok = False
            return False
        self._last_ok = True
        try:
            self._committer.merge(written)
        except sqlite3.Error as err:
            self._report(f"could not merge chunks in {self.path}", err,
                         "the small chunks stay as they are")
        return True

    # ---- the file removed under the writer ----------------------------------------------

    def _file_is_ours(self) -> bool:
        return self._conn is not None and _identity(self.path) == self._identity

    def _reopen(self, batch: Batch) -> bool:
        """Make the run file again; the batch gets the run's meta, the counts of what went
        with the old file and one critical alert. False if it cannot be made yet."""
        if self._conn is not None:  # what this writer committed went with the old file
            self._gone = (self._committer.points, self._committer.records)
            self._conn.close()
            self._conn = None
        try:
            self._open()
        except (OSError, sqlite3.Error, TrainspectError) as err:
            self._report(f"the run file {self.path} was removed and cannot be made again",
                         err, "what was not written is kept in memory and retried")
            self._last_ok = False
            return False
        self._renew_lock()
        lost, self._gone = self._gone, (0, 0)
        self.lost["file_recreated"] += 1
        self.lost["lost_points"] += lost[0]
        self.lost["lost_records"] += lost[1]
        self._lost_since_flush = True
        batch.meta = {**self._meta_written, **batch.meta, **self.lost}
        message = (f"the run file {self.path} was removed while the run was writing it; "
                   f"it was made again, but the {lost[0]:,} points and {lost[1]:,} records "
                   "written to it before are gone")
        action = ("Keep the runs directory while runs write to it; restore the old file from "
                  "a backup if you have one.")
        log.error("trainspect: %s. %s", message, action)
        batch.records.append(Alert(step=self._last_step, rule="store_lost", level="critical",
                                   message=message, action=action, wall_time=time.time()))
        return True

    def _renew_lock(self) -> None:
        if self.lock is None:
            return
        try:
            self.lock.renew(self.path)
        except (Busy, OSError) as err:
            log.warning("trainspect: could not lock the recreated %s: %s", self.path, err)

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
        keep_lock = False
        if self._held:  # the final write failed (a full disk): what is held now is lost
            keep_lock = self._give_up(self._held)
        try:
            if self._last_ok and self._conn is not None:
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as err:
            self._report("could not checkpoint the WAL", err, "the WAL file stays beside it")
        finally:
            if self._conn is not None:
                self._conn.close()
            if self.lock is not None:
                self.lock.release(keep=keep_lock)

    def _give_up(self, batch: Batch) -> bool:
        """Count what cannot be written at the end, and record how the run ended: in the
        run file if a small meta write still fits, else as the lock file's last word.
        True when the lock file holds it (and must stay)."""
        points, records = count_points(batch.columns), len(batch.records)
        self.dropped.points += points
        self.dropped.records += records
        final = {**batch.meta, "dropped_points": self.dropped.points,
                 "dropped_records": self.dropped.records,
                 "store_error": f"the store could not be written at the end: {points:,} "
                                f"points and {records:,} records were lost"}
        where, kept = self._write_final(final), False
        if where is None and self.lock is not None and self.lock.leave_word(final):
            where, kept = f"in {self.lock.path}, which readers take it from", True
        log.error("trainspect: could not write %s at the end of the run: %s points and %s "
                  "records that were waiting are lost (%s and %s in all). The run's status (%s) "
                  "is %s. Check free space and permissions there before the next run.",
                  self.path, f"{points:,}", f"{records:,}", f"{self.dropped.points:,}",
                  f"{self.dropped.records:,}", final.get("status", "?"),
                  where or "not recorded anywhere: it will read as crashed")
        return kept

    def _write_final(self, final: dict[str, Any]) -> str | None:
        """Write `final` as the run's meta, after a WAL checkpoint if the first try fails."""
        if self._conn is None:
            return None
        for attempt in range(2):
            try:
                self._committer.commit(Batch(meta=dict(final)))
                return "in the run file"
            except sqlite3.Error as err:
                log.debug("trainspect: final meta write %d failed: %s", attempt, err)
            try:  # moving the WAL into the file may free WAL space for the small write
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as err:
                log.debug("trainspect: checkpoint at the end failed: %s", err)
        return None


def _identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of what is at `path` now; None when nothing is."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _drain(queue: deque) -> list:
    out = []
    while True:
        try:
            out.append(queue.popleft())
        except IndexError:
            return out
