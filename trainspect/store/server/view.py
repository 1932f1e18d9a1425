"""One run read from the team store, with the same methods as a local `RunView`.

A view holds the run's row (status, times, last step, alert count) as read by
its reader; `refresh()` re-reads it unless it was read within FRESH_S. A list
read in bulk (`ServerReader.runs`) hands each view its row, headline values and
(for the dashboard) alerts; the first `refresh()` of such a view counts the bulk
read as its own, so a list of 10,000 runs refreshed once per request is three
queries, not 10,000.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from trainspect.errors import TrainspectError
from trainspect.store.reader import derive_status, latest_eval_examples
from trainspect.store.server import queries
from trainspect.store.server.rows import (
    PartialLatest,
    alert,
    block_steps,
    chunks_of,
    newest_per_step,
    one_block_steps,
    sample,
)

FRESH_S = 1.0  # a view's row, headline values and alerts are re-read after this long
BULK_GRACE_S = 60.0  # a bulk read this recent stands in for a view's first refresh()


class ServerRunView:
    """One run in the team store (`ServerReader.run(ref)`); cheap to create."""

    def __init__(self, reader: Any, row: Any, headline: dict[str, float] | None = None,
                 alerts: list[dict] | None = None, bulk: bool = False) -> None:
        self.reader = reader
        self._set_row(row, headline, alerts)
        self._bulk = bulk  # read with a list: the first refresh() need not read again

    def _set_row(self, row: Any, headline: dict[str, float] | None = None,
                 alerts: list[dict] | None = None) -> None:
        self._row = row  # a named tuple of queries.RUN_COLUMNS
        self._row_at = time.monotonic()
        self._meta: dict[str, Any] | None = None
        self._config: dict[str, Any] | None = None
        self._headline = headline
        self._alerts = alerts

    def _fresh(self) -> bool:
        return time.monotonic() - self._row_at < FRESH_S

    # ---- identity and metadata ---------------------------------------------------------

    @property
    def run_uid(self) -> int:
        return int(self._row.run_uid)

    @property
    def project(self) -> str:
        return str(self._row.project)

    @property
    def id(self) -> str:
        return str(self._row.run_id)

    @property
    def name(self) -> str:
        return str(self._row.name or self.id)

    @property
    def path(self) -> str:
        """Where the run lives: the store (without password) and project/run id."""
        return f"{self.reader.where}#{self.project}/{self.id}"

    @property
    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            text = self.reader.pool.run(lambda conn: conn.execute(
                "SELECT meta FROM trainspect.runs WHERE run_uid = %s", (self.run_uid,)
            ).fetchone())
            self._meta = json.loads(text[0]) if text else {}
        return self._meta

    @property
    def status(self) -> str:
        r = self._row
        return derive_status({"status": r.status, "heartbeat_at": r.heartbeat_at,
                              "started_at": r.started_at, "host": r.host, "pid": r.pid})

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            self._config = json.loads(self._row.config or "{}")
        return dict(self._config)

    @property
    def tags(self) -> list[str]:
        return list(self._row.tags or [])

    @property
    def started_at(self) -> float | None:
        return self._row.started_at

    @property
    def ended_at(self) -> float | None:
        return self._row.ended_at

    def __repr__(self) -> str:
        return f"ServerRunView({self.project}/{self.id}, status={self.status})"

    def refresh(self) -> ServerRunView:
        """Re-read the run's row (status, heartbeat, last step), unless read within FRESH_S."""
        if self._bulk and time.monotonic() - self._row_at < BULK_GRACE_S:
            self._bulk = False  # the list this view came with was the read
            self._row_at = time.monotonic()
        elif not self._fresh():
            row = self.reader.run_row(self.run_uid)
            if row is None:
                raise TrainspectError(f"run {self.project}/{self.id} is no longer in "
                                      f"{self.reader.where}")
            self._set_row(row)
        return self

    def close(self) -> None:
        """Nothing to release: views borrow their reader's connections."""

    def _query(self, sql: str, args: Any = None, binary: bool = False) -> list[tuple]:
        return self.reader.pool.run(
            lambda conn: conn.execute(sql, args, binary=binary).fetchall())

    # ---- scalars -------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Metric names that have at least one point, sorted (byte order, as locally)."""
        return [r[0] for r in self._query(
            "SELECT name FROM trainspect.keys WHERE run_uid = %s AND step_max IS NOT NULL "
            "ORDER BY name COLLATE \"C\"", (self.run_uid,))]

    def _blocks(self, key: str) -> list[tuple]:
        return self._query(queries.BLOCKS, (self.run_uid, key), binary=True)

    def arrays(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) as numpy arrays, one value per step, newest write winning."""
        rows = self._blocks(key)
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.float64)
        steps = block_steps([r[1] for r in rows], [r[3] for r in rows], [r[4] for r in rows],
                            [r[5] for r in rows])
        vals = np.concatenate([r[2] for r in rows])
        if not rows[0][6]:  # no step written twice: write order is step order
            return steps, vals
        return newest_per_step(steps, vals)

    def history(self, key: str) -> list[tuple[int, int, float]]:
        """Every point ever written for `key`, superseded ones too: (attempt, step, value)."""
        out = []
        for attempt, steps, vals, n, first, stride, _ in self._blocks(key):
            s = one_block_steps(steps, n, first, stride).tolist()
            out.extend((attempt, a, b) for a, b in zip(s, vals.tolist()))
        return out

    def series(self, key: str, buckets: int | None = None) -> list[tuple]:
        """[(step, value), ...], or with `buckets` [(step, min, max), ...] computed by the
        server in one query (min/max per bucket of equal step width)."""
        if buckets is None:
            steps, vals = self.arrays(key)
            return list(zip(steps.tolist(), vals.tolist()))
        if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 1:
            raise TrainspectError(f"expected `buckets` to be a positive int, got {buckets!r}")
        rows = self._query(queries.DOWNSAMPLE,
                           {"run": self.run_uid, "key": key, "buckets": buckets})
        return [(int(s), float(lo), float(hi)) for s, lo, hi in rows]

    def latest(self, key: str) -> tuple[int, float] | None:
        """(step, value) of the highest step logged for `key`, or None."""
        steps, vals = self.arrays(key)
        if steps.size == 0:
            return None
        return int(steps[-1]), float(vals[-1])

    def latest_values(self) -> Mapping[str, float]:
        """The last value written for every key (kept by the sync; no points are read)."""
        if self._headline is not None and self._fresh():
            return PartialLatest(self._headline, self.reader.headline_keys, self._all_latest)
        return self._all_latest()

    def _all_latest(self) -> dict[str, float]:
        return {name: (float("nan") if v is None else v) for name, v in self._query(
            "SELECT name, vlast FROM trainspect.keys WHERE run_uid = %s "
            "AND step_max IS NOT NULL", (self.run_uid,))}

    def last_step(self) -> int | None:
        if not self._fresh():
            self.refresh()
        value = self._row.last_step
        return None if value is None else int(value)

    # ---- live following ----------------------------------------------------------------

    def rows_after(self, cursor: int = 0, keys: list[str] | None = None) -> dict[str, Any]:
        """Everything the server received after `cursor` (an `ord`), and the next cursor.

        Scalars come as {key: [(step, value), ...]}; a chunk merged on the trainer's
        disk is sent again as new rows, repeating points the caller may already
        have with the same values, so merge by step (as with a local run).
        """
        run = self.run_uid
        nothing = {"cursor": cursor, "scalars": {}, "samples": [], "alerts": [], "matrices": []}

        def read(conn: Any) -> tuple | None:
            last = conn.execute("SELECT last_ord FROM trainspect.runs WHERE run_uid = %s",
                                (run,)).fetchone()
            if last is None or last[0] <= cursor:
                return None  # an idle run costs a poller one index lookup
            blocks = conn.execute(queries.BLOCKS_AFTER, (run, cursor), binary=True).fetchall()
            samples = self._records(conn, "samples", queries.SAMPLE_COLUMNS, "t.ord > %s",
                                    (cursor,))
            alerts = self._records(conn, "alerts", queries.ALERT_COLUMNS, "t.ord > %s",
                                   (cursor,))
            matrices = conn.execute(
                "SELECT ord, name, step FROM trainspect.matrices WHERE run_uid = %s AND ord > %s"
                " ORDER BY ord", (run, cursor)).fetchall()
            evals = conn.execute(
                "SELECT max(ord) FROM trainspect.eval_examples WHERE run_uid = %s AND ord > %s",
                (run, cursor)).fetchone()[0]
            return blocks, samples, alerts, matrices, evals

        found = self.reader.pool.run(read)
        if found is None:
            return nothing
        blocks, samples, alerts, matrices, evals = found
        wanted = set(keys) if keys is not None else None
        new_cursor = max([cursor, evals or 0] + [r[0] for r in blocks] + [m[0] for m in matrices]
                         + [s[0] for s in samples] + [a[0] for a in alerts])
        scalars: dict[str, list[tuple[int, float]]] = {}
        for name, steps, vals in chunks_of(blocks):
            if wanted is None or name in wanted:
                s, v = newest_per_step(steps, vals)
                scalars.setdefault(name, []).extend(zip(s.tolist(), v.tolist()))
        return {
            "cursor": new_cursor,
            "scalars": scalars,
            "samples": [sample(r) for r in samples],
            "alerts": [alert(r) for r in alerts],
            "matrices": [{"name": n, "step": s} for _, n, s in matrices],
        }

    def cursor(self) -> int:
        """The newest `ord` of the run: `rows_after(cursor())` returns only what comes next."""
        row = self._query("SELECT last_ord FROM trainspect.runs WHERE run_uid = %s",
                          (self.run_uid,))
        return int(row[0][0]) if row else 0

    # ---- samples, matrices, alerts, eval ------------------------------------------------

    def _records(self, conn: Any, table: str, columns: str, where: str,
                 args: tuple) -> list[tuple]:
        return conn.execute(
            f"SELECT {columns} FROM trainspect.{table} t JOIN trainspect.spools sp "
            f"ON sp.spool_uid = t.spool_uid WHERE t.run_uid = %s AND {where} "
            f"ORDER BY {queries.SPOOL_ORDER}", (self.run_uid, *args)).fetchall()

    def samples(self, step: int | None = None, stream: str | None = None) -> list[dict]:
        """Prediction sample rows as dicts (all steps, or one step), oldest first."""
        where, args = ["TRUE"], []
        if step is not None:
            where.append("t.step = %s")
            args.append(int(step))
        if stream is not None:
            where.append("t.stream = %s")
            args.append(stream)
        rows = self.reader.pool.run(lambda conn: self._records(
            conn, "samples", queries.SAMPLE_COLUMNS, " AND ".join(where), tuple(args)))
        return [sample(r) for r in rows]

    def sample_steps(self) -> list[int]:
        return [r[0] for r in self._query(
            "SELECT DISTINCT step FROM trainspect.samples WHERE run_uid = %s ORDER BY step",
            (self.run_uid,))]

    def matrix_names(self) -> list[str]:
        return [r[0] for r in self._query(
            "SELECT DISTINCT name COLLATE \"C\" FROM trainspect.matrices WHERE run_uid = %s "
            "ORDER BY 1", (self.run_uid,))]

    def matrix(self, name: str, step: int | None = None) -> dict[str, Any] | None:
        """The matrix `name` at `step` (the latest at or before it; the newest if None)."""
        from trainspect.store.matrices import unpack_matrix

        rows = self._query(
            "SELECT t.step, t.n_rows, t.n_cols, t.vals, t.row_labels, t.col_labels "
            "FROM trainspect.matrices t JOIN trainspect.spools sp ON sp.spool_uid = t.spool_uid"
            " WHERE t.run_uid = %s AND t.name = %s AND (%s::int8 IS NULL OR t.step <= %s) "
            "ORDER BY t.step DESC, sp.first_attempt DESC, t.spool_uid DESC, t.seq DESC LIMIT 1",
            (self.run_uid, name, step, step))
        if not rows:
            return None
        r = rows[0]
        return {"name": name, "step": r[0], "values": unpack_matrix(r[1], r[2], bytes(r[3])),
                "row_labels": json.loads(r[4]), "col_labels": json.loads(r[5])}

    def matrix_steps(self, name: str) -> list[int]:
        return [r[0] for r in self._query(
            "SELECT DISTINCT step FROM trainspect.matrices WHERE run_uid = %s AND name = %s "
            "ORDER BY step", (self.run_uid, name))]

    def eval_steps(self, eval_name: str = "eval") -> list[int]:
        """Steps with per-example fixed-eval results, oldest first."""
        return [r[0] for r in self._query(
            "SELECT DISTINCT step FROM trainspect.eval_examples WHERE run_uid = %s "
            "AND eval_name = %s ORDER BY step", (self.run_uid, eval_name))]

    def eval_examples(self, step: int | None = None, eval_name: str = "eval") -> list[dict]:
        """Per-example fixed-eval results at `step` (default: the latest evaluated step),
        one dict per example (the newest write wins), with its prompt and reference."""
        rows = self._query(
            "SELECT t.ord, t.step, t.example_id, t.em, t.ce, t.tokens, t.correct_tokens, "
            "t.output, t.checkpoint, t.wall_time, s.prompt, s.reference, s.pattern, "
            "s.length_bin, s.ref_tokens FROM trainspect.eval_examples t "
            "JOIN trainspect.spools sp ON sp.spool_uid = t.spool_uid "
            "LEFT JOIN trainspect.eval_set s ON s.run_uid = t.run_uid "
            "AND s.eval_name = t.eval_name AND s.example_id = t.example_id "
            "WHERE t.run_uid = %s AND t.eval_name = %s AND t.step = COALESCE(%s::int8, ("
            "SELECT max(step) FROM trainspect.eval_examples WHERE run_uid = %s "
            "AND eval_name = %s)) ORDER BY " + queries.SPOOL_ORDER,
            (self.run_uid, eval_name, step, self.run_uid, eval_name))
        return latest_eval_examples(rows)

    def alerts(self) -> list[dict]:
        """Alerts as dicts with step, rule, level, message, action, state, oldest first."""
        if self._alerts is not None and self._fresh():
            return list(self._alerts)
        rows = self.reader.pool.run(
            lambda conn: self._records(conn, "alerts", queries.ALERT_COLUMNS, "TRUE", ()))
        return [alert(r) for r in rows]
