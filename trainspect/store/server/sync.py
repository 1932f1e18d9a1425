"""Pushing a spool (a local run file) to the team store, one transaction per batch.

A push reads one snapshot of the spool and, inside one server transaction that
holds the run's row lock, copies every row with `cursor < seq <= end` and moves
the spool's cursor (`spools.synced_seq`) to `end`. A push that fails anywhere is
rolled back whole and the next one starts from the same cursor, so a row is
stored once or not at all; `(spool_uid, seq)` keys make a second copy impossible.

Merged chunks. The local writer folds a metric's small chunks into one that keeps
the largest seq of its parts (and a higher level). If every part was already
pushed, the merged chunk has `seq <= cursor` and is never read: the server keeps
the parts, which hold the same points. If some part was not pushed yet, the
merged chunk has `seq > cursor` and is new to this push; its pushed parts are no
longer in the spool. For every metric with such a chunk the push reconciles: it
compares the (seq, level, n) of the metric's chunks in the snapshot with those on
the server, deletes what the spool no longer has and inserts what the server
lacks. Either way the server holds exactly the spool's points for that metric
after each push: none twice, none missing.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.store.server import push, spool
from trainspect.store.server.connect import SYNC_STATEMENT_TIMEOUT_MS, connect, redact
from trainspect.store.server.schema import migrate

log = logging.getLogger("trainspect.store.server")


@dataclass(frozen=True)
class Pushed:
    """What one push did."""

    rows: int  # rows copied (chunks, samples, matrices, alerts, eval examples)
    points: int  # scalar points in the chunks copied
    synced_seq: int  # the spool's cursor on the server after the push
    newest_seq: int  # the spool's newest seq in the snapshot

    @property
    def caught_up(self) -> bool:
        return self.synced_seq >= self.newest_seq


def spool_identity(meta: dict[str, Any], conn: sqlite3.Connection) -> tuple[str, int]:
    """(token, first attempt) naming this file among the run's spools.

    A run started here writes a random `spool_id` into its meta; a file without one
    (written before the team store existed) is named by its first attempt, which
    is what a copy of the same file has too, so syncing a copy changes nothing.
    """
    first = meta.get("first_attempt")
    if not isinstance(first, int):
        row = conn.execute("SELECT MIN(attempt) FROM scalar_chunks").fetchone()
        first = int(row[0]) if row and row[0] is not None else int(meta.get("attempt") or 1)
    token = meta.get("spool_id")
    return (str(token) if token else f"file-attempt-{first}"), first


class SpoolSync:
    """Pushes one local run file to one team store. Not thread-safe: one caller at a time.

    `push()` sends the next batch and returns what it did; it raises what it meets
    (the server down, the file gone) after rolling back. `conn` may be shared by
    several SpoolSyncs used one after another (`trainspect sync DIR`).
    """

    def __init__(self, path: Path, url: str, conn: Any = None, purpose: str = "sync") -> None:
        self.path = Path(path)
        self.url = url
        self.purpose = purpose
        self._server = conn
        self._owns_server = conn is None
        self._local: sqlite3.Connection | None = None
        self._pushed_meta: str | None = None
        self.points = 0
        self.rows = 0

    # ---- connections ---------------------------------------------------------------------

    def server(self) -> Any:
        if self._server is None or self._server.closed:
            conn = connect(self.url, self.purpose, statement_timeout_ms=SYNC_STATEMENT_TIMEOUT_MS)
            try:
                migrate(conn, redact(self.url))
            except Exception as err:  # re-raised: live sync retries, `trainspect sync` reports it
                log.debug("trainspect: migrating %s failed (%s); connection closed",
                          redact(self.url), err)
                conn.close()
                raise
            self._server = conn
            self._owns_server = True
            self._pushed_meta = None
        return self._server

    def local(self) -> sqlite3.Connection:
        if self._local is None:
            self._local = spool.open_spool(self.path)
        return self._local

    def drop_server(self) -> None:
        """Forget the server connection (after an error): the next push reconnects."""
        conn, self._server = self._server, None
        if conn is not None and self._owns_server:
            try:
                conn.close()
            except Exception as err:  # closing a dead connection may fail in any way
                log.debug("trainspect: closing a failed store connection: %s", err)

    def close(self) -> None:
        if self._owns_server:
            self.drop_server()
        if self._local is not None:
            self._local.close()
            self._local = None

    # ---- one push ------------------------------------------------------------------------

    def push(self) -> Pushed:
        """Send the next batch; returns what was sent (rows == 0 when nothing was new)."""
        server = self.server()
        local = self.local()
        with spool.snapshot(local):
            if not spool.has_tables(local):
                return Pushed(0, 0, 0, 0)
            meta = spool.read_meta(local)
            if not meta.get("id") and spool.newest_seq(local) == 0:
                return Pushed(0, 0, 0, 0)  # a run file before its writer's first tick
            try:
                with server.transaction():
                    return self._push(server, local, meta)
            except Exception as err:  # re-raised: live sync retries, `trainspect sync` reports it
                log.debug("trainspect: push of %s rolled back (%s); meta is sent again next",
                          self.path.name, err)
                self._pushed_meta = None
                raise

    def _push(self, server: Any, local: sqlite3.Connection, meta: dict[str, Any]) -> Pushed:
        project = str(meta.get("project") or self.path.parent.name)
        run_id = str(meta.get("id") or self.path.stem)
        run_uid = push.lock_run(server, project, run_id, str(meta.get("name") or run_id))
        token, first_attempt = spool_identity(meta, local)
        spool_uid, cursor = push.spool(server, run_uid, token, first_attempt,
                                       socket.gethostname(), str(self.path.resolve()))
        newest = spool.newest_seq(local)
        if newest < cursor:
            raise TrainspectError(
                f"{self.path} holds rows up to seq {newest}, but the team store already has "
                f"this file's rows up to {cursor}: the file was replaced by another one with "
                "the same spool_id, whose rows are not sent (give the new file a new "
                "`spool_id` in its meta)")
        end = spool.batch_end(local, cursor, newest) if newest > cursor else cursor
        chunks = spool.new_chunks(local, cursor, end)
        records = spool.records(local, cursor, end)
        names = spool.key_names(local)
        states = push.key_states(server, run_uid, (names[c.key_id] for c in chunks))
        points = self._push_chunks(server, local, run_uid, spool_uid, chunks, names, states, end)
        points_sent = points > 0
        push.insert_records(server, run_uid, spool_uid, records)
        examples = records.get("eval_examples") or []
        push.upsert_eval_set(server, run_uid, spool.eval_set_rows(
            local, {(r[2], r[3]) for r in examples}))
        meta_text = push.run_columns(meta)["meta"]
        changed_meta = meta if meta_text != self._pushed_meta else None
        last_step = max((c.step_max for c in chunks), default=None)
        added = bool(points_sent or any(records.values()))
        push.update_run(server, run_uid, changed_meta, last_step, len(records.get("alerts") or []),
                        added)
        push.set_cursor(server, spool_uid, end)
        self._pushed_meta = meta_text
        rows = len(chunks) + sum(len(v) for v in records.values())
        self.rows += rows
        self.points += points
        return Pushed(rows, points, end, newest)

    def _push_chunks(self, server: Any, local: sqlite3.Connection, run_uid: int,
                     spool_uid: int, chunks: list[spool.ChunkRow], names: dict[int, str],
                     states: dict[str, push.KeyState], end: int) -> int:
        merged_keys = sorted({c.key_id for c in chunks if c.level > 0})
        merged = set(merged_keys)
        to_insert = [(states[names[c.key_id]].key_uid, c) for c in chunks
                     if c.key_id not in merged]
        if merged_keys:
            local_sigs = spool.chunk_signatures(local, merged_keys, end)
            uid_of = {k: states[names[k]].key_uid for k in merged_keys}
            server_sigs = push.server_signatures(server, spool_uid, list(uid_of.values()))
            stale, wanted = [], []
            for key_id in merged_keys:
                mine, theirs = local_sigs[key_id], server_sigs[uid_of[key_id]]
                stale += [(uid_of[key_id], seq) for seq, _, _ in theirs - mine]
                wanted += [seq for seq, _, _ in mine - theirs]
            push.delete_chunks(server, spool_uid, stale)
            to_insert += [(uid_of[c.key_id], c) for c in spool.chunks_by_seq(local, wanted)]
        to_insert.sort(key=lambda item: item[1].seq)
        points = push.copy_chunks(server, run_uid, spool_uid, to_insert)
        by_uid = {s.key_uid: s for s in states.values()}
        merged_uids = {states[names[k]].key_uid for k in merged_keys}
        for key_uid, c in to_insert:  # in seq order: each chunk against what came before
            state = by_uid[key_uid]
            state.touched = True
            order = (c.attempt, spool_uid, c.seq)
            appended = state.last_order is None or order > tuple(state.last_order)
            if key_uid not in merged_uids and (c.level < 0 or not appended or (
                    state.step_max is not None and c.step_min <= state.step_max)):
                state.overlapping = True  # steps do not simply rise in write order
            state.step_max = c.step_max if state.step_max is None else max(state.step_max,
                                                                            c.step_max)
            if appended:
                state.last_order, state.vlast = order, _nan_if_none(c.vlast)
        if merged_uids:  # parts replaced: decide from the chunks the server now holds
            overlapping = push.overlapping_keys(server, sorted(merged_uids))
            for key_uid in merged_uids:
                by_uid[key_uid].touched = True
                by_uid[key_uid].overlapping |= key_uid in overlapping
        push.save_keys(server, states.values())
        return points


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def sync_file(path: Path, url: str, conn: Any = None, on_batch: Any = None) -> SpoolSync:
    """Push one run file until the server has all of it (`trainspect sync`).

    A file that cannot be read raises TrainspectError naming it; a server error
    raises TrainspectError too (what was pushed stays pushed: run it again).
    """
    from trainspect.store.server.connect import describe_error, psycopg_module

    psycopg = psycopg_module()
    syncer = SpoolSync(path, url, conn)
    try:
        while True:
            pushed = syncer.push()
            if on_batch is not None:
                on_batch(pushed)
            if pushed.caught_up:
                return syncer
    except sqlite3.Error as err:
        raise TrainspectError(f"cannot read {path}: {err}") from err
    except psycopg.Error as err:
        raise TrainspectError(f"the team store {redact(url)} failed while syncing {path}: "
                              f"{describe_error(err)}; what was sent stays sent, run the "
                              "command again to continue") from err
    finally:
        syncer.close()
