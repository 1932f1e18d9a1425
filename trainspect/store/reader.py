"""The read side: list runs, read series, samples, matrices and alerts, follow live runs.

Used by the CLI, the dashboard and notebooks (`ts.open(dir)`). It opens run files
read-only, so it can read while a trainer writes, and never imports torch.
"""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

import numpy as np

from trainspect.errors import TrainspectError
from trainspect.paths import RUN_SUFFIX, run_files, runs_dir
from trainspect.store import schema
from trainspect.store.chunks import decode, decode_steps, downsample
from trainspect.store.liveness import STALE_HEARTBEAT_S, derive_status
from trainspect.store.lookup import find_run
from trainspect.store.matrices import unpack_matrix
from trainspect.store.runfile import RunFile, Unreadable

__all__ = ["STALE_HEARTBEAT_S", "Reader", "RunView", "Unreadable", "derive_status",
           "open"]


class RunView(RunFile):
    """One run, read from its file: identity, series, samples, matrices, alerts.

    Creating one reads the run's meta (TrainspectError naming the file if it cannot);
    its read connection then opens and closes as the process's open limit needs.
    """

    # ---- identity and metadata ---------------------------------------------------------

    @property
    def id(self) -> str:
        return str(self.meta.get("id") or self.path.name[: -len(RUN_SUFFIX)])

    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.id)

    @property
    def status(self) -> str:
        return derive_status(self.meta)

    @property
    def config(self) -> dict[str, Any]:
        return dict(self.meta.get("config") or {})

    @property
    def started_at(self) -> float | None:
        return self.meta.get("started_at")

    @property
    def ended_at(self) -> float | None:
        return self.meta.get("ended_at")

    def __repr__(self) -> str:
        return f"RunView({self.project}/{self.id}, status={self.status})"

    # ---- scalars -------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Metric names that have at least one point, sorted."""
        with self._query() as conn:
            rows = conn.execute(
                "SELECT name FROM keys WHERE id IN (SELECT DISTINCT key_id FROM scalar_chunks) "
                "ORDER BY name"
            ).fetchall()
        return [r[0] for r in rows]

    def arrays(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) as numpy arrays, one value per step, newest write winning."""
        with self._query() as conn:
            rows = conn.execute(
                "SELECT c.steps, c.vals, c.n, c.step_min, c.step_max FROM scalar_chunks c "
                "JOIN keys k ON k.id = c.key_id WHERE k.name = ? ORDER BY c.seq",
                (key,),
            ).fetchall()
        return decode(rows)

    def history(self, key: str) -> list[tuple[int, int, float]]:
        """Every point ever written for `key`, superseded ones too: (attempt, step, value)."""
        with self._query() as conn:
            rows = conn.execute(
                "SELECT c.attempt, c.steps, c.vals, c.n, c.step_min, c.step_max "
                "FROM scalar_chunks c JOIN keys k ON k.id = c.key_id WHERE k.name = ? "
                "ORDER BY c.seq",
                (key,),
            ).fetchall()
        points = []
        for attempt, steps, vals, n, lo, hi in rows:
            s = decode_steps(steps, n, lo, hi).tolist()
            v = np.frombuffer(vals, "<f8").tolist()
            points.extend((attempt, a, b) for a, b in zip(s, v))
        return points

    def series(self, key: str, buckets: int | None = None) -> list[tuple]:
        """[(step, value), ...] at full resolution, or with `buckets` a chart-sized
        [(step, min, max), ...] (min/max per bucket of equal step width)."""
        steps, vals = self.arrays(key)
        if buckets is None:
            return list(zip(steps.tolist(), vals.tolist()))
        if not isinstance(buckets, int) or buckets < 1:
            raise TrainspectError(f"expected `buckets` to be a positive int, got {buckets!r}")
        return downsample(steps, vals, buckets)

    def latest(self, key: str) -> tuple[int, float] | None:
        """(step, value) of the highest step logged for `key`, or None."""
        steps, vals = self.arrays(key)
        if steps.size == 0:
            return None
        return int(steps[-1]), float(vals[-1])

    def latest_values(self) -> dict[str, float]:
        """The last value written for every key, from chunk summaries (no decoding)."""
        with self._query() as conn:
            rows = conn.execute(
                "SELECT k.name, c.vlast FROM scalar_chunks c JOIN keys k ON k.id = c.key_id "
                "WHERE c.seq IN (SELECT MAX(seq) FROM scalar_chunks GROUP BY key_id)"
            ).fetchall()
        return {name: (float("nan") if v is None else v) for name, v in rows}

    def last_step(self) -> int | None:
        with self._query() as conn:
            row = conn.execute("SELECT MAX(step_max) FROM scalar_chunks").fetchone()
        return None if row[0] is None else int(row[0])

    # ---- live following ----------------------------------------------------------------

    def rows_after(self, cursor: int = 0, keys: list[str] | None = None) -> dict[str, Any]:
        """Everything written after `cursor` (a seq), and the cursor to ask with next.

        Scalars come as {key: [(step, value), ...]}; a merged chunk may repeat points
        the caller already has, with the same values, so merge by step.
        """
        with self._query() as conn:
            chunk_rows = conn.execute(
                "SELECT c.seq, k.name, c.steps, c.vals, c.n, c.step_min, c.step_max "
                "FROM scalar_chunks c JOIN keys k ON k.id = c.key_id WHERE c.seq > ? "
                "ORDER BY c.seq",
                (cursor,),
            ).fetchall()
            sample_rows = self._sample_rows(conn, "seq > ?", (cursor,))
            alert_rows = self._alert_rows(conn, "seq > ?", (cursor,))
            matrix_rows = conn.execute(
                "SELECT seq, name, step FROM matrices WHERE seq > ? ORDER BY seq", (cursor,)
            ).fetchall()
        wanted = set(keys) if keys is not None else None
        scalars: dict[str, list[tuple[int, float]]] = {}
        new_cursor = cursor
        for seq, name, *chunk in chunk_rows:
            new_cursor = max(new_cursor, seq)
            if wanted is not None and name not in wanted:
                continue
            s, v = decode([tuple(chunk)])
            scalars.setdefault(name, []).extend(zip(s.tolist(), v.tolist()))
        for row in sample_rows:
            new_cursor = max(new_cursor, row["seq"])
        for row in alert_rows:
            new_cursor = max(new_cursor, row["seq"])
        for seq, _, _ in matrix_rows:
            new_cursor = max(new_cursor, seq)
        return {
            "cursor": new_cursor,
            "scalars": scalars,
            "samples": sample_rows,
            "alerts": alert_rows,
            "matrices": [{"name": n, "step": s} for _, n, s in matrix_rows],
        }

    def cursor(self) -> int:
        """The newest seq in the file: `rows_after(cursor())` returns only what comes next."""
        with self._query() as conn:
            return schema.max_seq(conn)

    # ---- samples, matrices, alerts -----------------------------------------------------

    def samples(self, step: int | None = None, stream: str | None = None) -> list[dict]:
        """Prediction sample rows as dicts (all steps, or one step), oldest first."""
        where, args = ["1 = 1"], []
        if step is not None:
            where.append("step = ?")
            args.append(int(step))
        if stream is not None:
            where.append("stream = ?")
            args.append(stream)
        with self._query() as conn:
            return self._sample_rows(conn, " AND ".join(where), tuple(args))

    def sample_steps(self) -> list[int]:
        with self._query() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT step FROM samples ORDER BY step")]

    @staticmethod
    def _sample_rows(conn: sqlite3.Connection, where: str, args: tuple) -> list[dict]:
        rows = conn.execute(
            "SELECT seq, step, stream, grp, sample_id, context, positions, wall_time "
            f"FROM samples WHERE {where} ORDER BY seq",
            args,
        ).fetchall()
        return [
            {"seq": r[0], "step": r[1], "stream": r[2], "group": r[3], "sample_id": r[4],
             "context": r[5], "positions": json.loads(r[6]), "wall_time": r[7]}
            for r in rows
        ]

    def matrix_names(self) -> list[str]:
        with self._query() as conn:
            return [r[0] for r in conn.execute("SELECT DISTINCT name FROM matrices ORDER BY name")]

    def matrix(self, name: str, step: int | None = None) -> dict[str, Any] | None:
        """The matrix `name` at `step` (the latest at or before it; the newest if None)."""
        query = ("SELECT step, n_rows, n_cols, vals, row_labels, col_labels FROM matrices "
                 "WHERE name = ?")
        args: tuple = (name,)
        if step is not None:
            query += " AND step <= ?"
            args = (name, int(step))
        with self._query() as conn:
            row = conn.execute(query + " ORDER BY step DESC, seq DESC LIMIT 1", args).fetchone()
        if row is None:
            return None
        return {"name": name, "step": row[0], "values": unpack_matrix(row[1], row[2], row[3]),
                "row_labels": json.loads(row[4]), "col_labels": json.loads(row[5])}

    def matrix_steps(self, name: str) -> list[int]:
        with self._query() as conn:
            return [r[0] for r in conn.execute(
                "SELECT DISTINCT step FROM matrices WHERE name = ? ORDER BY step", (name,))]

    def eval_steps(self, eval_name: str = "eval") -> list[int]:
        """Steps with per-example fixed-eval results, oldest first."""
        with self._query() as conn:
            if not self._has(conn, "eval_examples"):
                return []
            return [r[0] for r in conn.execute(
                "SELECT DISTINCT step FROM eval_examples WHERE eval_name = ? ORDER BY step",
                (eval_name,))]

    def eval_examples(self, step: int | None = None, eval_name: str = "eval") -> list[dict]:
        """Per-example fixed-eval results at `step` (default: the latest evaluated step),
        one dict per example (the newest write wins), with its prompt and reference."""
        with self._query() as conn:
            if not self._has(conn, "eval_examples"):
                return []
            if step is None:
                step = conn.execute("SELECT MAX(step) FROM eval_examples WHERE eval_name = ?",
                                    (eval_name,)).fetchone()[0]
                if step is None:
                    return []
            rows = conn.execute(
                "SELECT e.seq, e.step, e.example_id, e.em, e.ce, e.tokens, e.correct_tokens, "
                "e.output, e.checkpoint, e.wall_time, s.prompt, s.reference, s.pattern, "
                "s.length_bin, s.ref_tokens FROM eval_examples e LEFT JOIN eval_set s "
                "ON s.eval_name = e.eval_name AND s.example_id = e.example_id "
                "WHERE e.eval_name = ? AND e.step = ? ORDER BY e.seq",
                (eval_name, int(step)),
            ).fetchall()
        return latest_eval_examples(rows)

    def alerts(self) -> list[dict]:
        """Alerts as dicts with step, rule, level, message, action, state, oldest first."""
        with self._query() as conn:
            return self._alert_rows(conn, "1 = 1", ())

    @staticmethod
    def _alert_rows(conn: sqlite3.Connection, where: str, args: tuple) -> list[dict]:
        rows = conn.execute(
            "SELECT seq, step, rule, level, message, action, state, wall_time "
            f"FROM alerts WHERE {where} ORDER BY seq",
            args,
        ).fetchall()
        return [
            {"seq": r[0], "step": r[1], "rule": r[2], "level": r[3], "message": r[4],
             "action": r[5], "state": r[6], "wall_time": r[7]}
            for r in rows
        ]


class Reader:
    """All runs under one runs directory (`ts.open(dir)`)."""

    def __new__(cls, dir: str | os.PathLike | None = None):
        from trainspect.store.server.connect import is_store_url

        if cls is Reader and is_store_url(dir):  # a team store: `--store URL`
            from trainspect.store.server.reader import ServerReader

            return ServerReader(str(dir))
        return super().__new__(cls)

    def __init__(self, dir: str | os.PathLike | None = None) -> None:
        self.root = runs_dir(dir)
        if not self.root.is_dir():
            raise TrainspectError(f"no runs directory at {self.root}")

    def __repr__(self) -> str:
        return f"Reader({str(self.root)!r})"

    def projects(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def runs(self, project: str | None = None) -> list[RunView]:
        """Every readable run, newest first; `scan` also says which files are not."""
        return self.scan(project)[0]

    def scan(self, project: str | None = None) -> tuple[list[RunView], list[Unreadable]]:
        """(readable runs newest first, files that are not: one line each on why)."""
        views, bad = [], []
        for path in run_files(self.root, project):
            try:
                views.append(RunView(path).check())
            except TrainspectError as err:
                bad.append(Unreadable.of(path, err))
        views.sort(key=lambda v: (v.started_at or 0.0, v.id), reverse=True)
        return views, sorted(bad)

    def run(self, ref: str) -> RunView:
        """The run `ref` names: its id, a unique prefix or suffix of it, or its name, each
        optionally as `project/ref` (see `trainspect.store.lookup`)."""
        return RunView(find_run(self.root, ref))


def open(dir: str | os.PathLike | None = None) -> Reader:  # noqa: A001 - mirrors `ts.open`
    """Open the runs directory for reading (`dir`, else $TRAINSPECT_DIR, else ./trainspect-runs)."""
    return Reader(dir)


def latest_eval_examples(rows: list[tuple]) -> list[dict]:
    """Eval example rows (seq, step, example_id, em, ce, tokens, correct_tokens, output,
    checkpoint, wall_time, prompt, reference, pattern, length_bin, ref_tokens), in
    write order, as dicts: the last row of each example wins (a resumed run re-writes)."""
    latest: dict[str, dict] = {}
    for r in rows:
        latest[r[2]] = {
            "seq": r[0], "step": r[1], "example_id": r[2], "em": bool(r[3]),
            "ce": float("nan") if r[4] is None else r[4], "tokens": r[5],
            "correct_tokens": r[6], "output": r[7], "checkpoint": r[8], "wall_time": r[9],
            "prompt": r[10], "reference": r[11], "pattern": r[12], "length_bin": r[13],
            "ref_tokens": r[14],
        }
    return list(latest.values())
