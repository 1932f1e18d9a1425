"""What the run hands the writer, checked and turned into rows, one record at a time.

Everything that can fail outside SQLite fails here, before a transaction opens: a
step outside int64, a matrix that is not 2-D, a value json cannot encode. A bad
record is dropped alone and counted (`Dropped`); the rest of its batch is written.
Nothing here touches the database.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainspect.errors import safe_repr
from trainspect.records import Alert, EvalExample, Matrix, SampleRow, Scalar
from trainspect.store.matrices import pack_matrix

log = logging.getLogger("trainspect.store")

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

# Per key, segments of (int64 steps, float64 values, float64 wall times) arrays.
Columns = dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]
Entry = tuple[int, float, dict[str, float]]  # (step, wall time, {key: value}) from Run.log
Row = tuple[str, tuple]  # (SQL statement, parameters)


@dataclass
class Dropped:
    """Points and records the writer could not store, with one log line per kind of problem."""

    points: int = 0
    records: int = 0
    _said: set[tuple[str, str]] = field(default_factory=set)

    def point(self, err: BaseException, detail: str, n: int = 1) -> None:
        self.points += n
        self._say(("point", type(err).__name__), f"{n} point(s) ({detail}): {err}")

    def record(self, record: Any, err: BaseException) -> None:
        self.records += 1
        kind = type(record).__name__
        self._say((kind, type(err).__name__),
                  f"a {kind} record (step={safe_repr(getattr(record, 'step', '?'), 40)}): "
                  f"{type(err).__name__}: {err}")

    def _say(self, kind: tuple[str, str], what: str) -> None:
        if kind in self._said:
            return
        self._said.add(kind)
        log.warning("trainspect: dropped %s; the rest of its batch is stored, and drops like "
                    "this one are counted in the run's meta (dropped_points, dropped_records)",
                    what)


def check_step(step: Any) -> int:
    """`step` as an int the store can hold (int64), else ValueError naming it."""
    step = operator.index(step)  # ints and numpy integers; floats raise TypeError
    if not INT64_MIN <= step <= INT64_MAX:
        raise ValueError(f"step {step} is outside the int64 range the store holds")
    return step


def add_entries(columns: Columns, entries: list[Entry], dropped: Dropped) -> None:
    """Turn logged dicts into per-key arrays, a run of same-keyed dicts at a time."""
    i, n = 0, len(entries)
    while i < n:
        keys = tuple(entries[i][2])
        j = i + 1
        while j < n and tuple(entries[j][2]) == keys:
            j += 1
        block = entries[i:j]
        try:
            steps = np.fromiter((e[0] for e in block), np.int64, len(block))
            times = np.fromiter((e[1] for e in block), np.float64, len(block))
            vals = np.array([list(e[2].values()) for e in block], np.float64).reshape(
                len(block), len(keys))  # (entries, keys)
        except Exception:  # any value that will not convert: find the bad ones one by one
            block = _good_entries(block, dropped)
            if not block:
                i = j
                continue
            steps = np.array([e[0] for e in block], np.int64)
            times = np.array([e[1] for e in block], np.float64)
            vals = np.array([list(e[2].values()) for e in block], np.float64)
        for column, key in enumerate(keys):
            columns.setdefault(key, []).append((steps, vals[:, column], times))
        i = j


def _good_entries(block: list[Entry], dropped: Dropped) -> list[Entry]:
    good = []
    for step, wall_time, values in block:
        try:
            good.append((check_step(step), float(wall_time),
                         {k: float(v) for k, v in values.items()}))
        except Exception as err:  # a point that will not convert: drop it, count it
            dropped.point(err, f"step={safe_repr(step)}", len(values))
    return good


def add_scalars(columns: Columns, records: list[Any], dropped: Dropped) -> None:
    """Scalar records into per-key arrays, all records in one pass.

    A flush brings a few hundred records, mostly one per key. When every step is an
    int and every value and wall time a float (what the probes make), three arrays
    hold them all and each key gets slices of them; otherwise, or when a step is
    outside int64, each record is checked on its own (`scalar_entries`) and a bad one
    is dropped alone. Either way a key's points keep their order.
    """
    if not records:
        return
    try:
        if not all(type(r.step) is int and type(r.value) is float and type(r.wall_time) is float
                   and type(r.key) is str for r in records):
            raise TypeError("not plain ints and floats")
        steps = np.array([r.step for r in records], np.int64)  # OverflowError outside int64
        vals = np.array([r.value for r in records], np.float64)
        times = np.array([r.wall_time for r in records], np.float64)
    except (TypeError, OverflowError, AttributeError):
        add_entries(columns, scalar_entries(records, dropped), dropped)
        return
    rows: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        rows.setdefault(r.key, []).append(i)
    for key, index in rows.items():
        if len(index) == 1:
            i = index[0]
            columns.setdefault(key, []).append((steps[i:i + 1], vals[i:i + 1], times[i:i + 1]))
        else:
            take = np.array(index)
            columns.setdefault(key, []).append((steps[take], vals[take], times[take]))


def scalar_entries(records: list[Any], dropped: Dropped) -> list[Entry]:
    """Scalar records as log entries; a bad step or value drops that one point."""
    entries = []
    for r in records:
        try:
            entries.append((check_step(r.step), float(r.wall_time), {str(r.key): float(r.value)}))
        except Exception as err:  # a point that will not convert: drop it, count it
            dropped.point(err, f"key={safe_repr(r.key)}, step={safe_repr(r.step)}")
    return entries


def merge_columns(first: Columns, second: Columns) -> Columns:
    for key, segments in second.items():
        first.setdefault(key, []).extend(segments)
    return first


def count_points(columns: Columns) -> int:
    return sum(seg[0].size for segments in columns.values() for seg in segments)


def to_json(value: Any) -> str:
    return json.dumps(value, default=repr, allow_nan=True)


def meta_rows(meta: dict[str, Any], warned: set[str]) -> list[tuple[str, str]]:
    """(key, JSON) per meta value; a value json cannot encode is stored as its repr."""
    rows = []
    for key, value in meta.items():
        try:
            rows.append((str(key), to_json(value)))
        except Exception as err:  # json's own errors, or a __repr__ that raises
            rows.append((str(key), json.dumps(safe_repr(value))))
            if key not in warned:
                warned.add(key)
                log.warning("trainspect: meta %r cannot be stored as JSON (%s); its repr is "
                            "stored instead: pass plain dicts, lists, numbers and strings",
                            key, err)
    return rows


def record_rows(record: Any, next_seq: Callable[[], int]) -> list[Row]:
    """The rows one record becomes; raises (ValueError, TypeError, ...) for a bad record."""
    now = time.time()
    if isinstance(record, Alert):
        return [("INSERT INTO alerts VALUES (?,?,?,?,?,?,?,?)",
                 (next_seq(), check_step(record.step), str(record.rule), str(record.level),
                  str(record.message), str(record.action), str(record.state),
                  _time(record.wall_time, now)))]
    if isinstance(record, SampleRow):
        return [("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?)",
                 (next_seq(), check_step(record.step), str(record.stream),
                  operator.index(record.group), str(record.sample_id), str(record.context),
                  json.dumps(record.positions, default=repr, allow_nan=True),
                  _time(record.wall_time, now)))]
    if isinstance(record, Matrix):
        n_rows, n_cols, blob = pack_matrix(record.values)
        return [("INSERT INTO matrices VALUES (?,?,?,?,?,?,?,?,?)",
                 (next_seq(), str(record.key), check_step(record.step), n_rows, n_cols, blob,
                  to_json([str(x) for x in record.row_labels]),
                  to_json([str(x) for x in record.col_labels]), _time(record.wall_time, now)))]
    if isinstance(record, EvalExample):
        step = check_step(record.step)
        return [
            ("INSERT OR REPLACE INTO eval_set VALUES (?,?,?,?,?,?,?)",
             (str(record.eval_name), str(record.example_id), str(record.prompt),
              str(record.reference), str(record.pattern), str(record.length_bin),
              operator.index(record.ref_tokens))),
            ("INSERT INTO eval_examples VALUES (?,?,?,?,?,?,?,?,?,?,?)",
             (next_seq(), step, str(record.eval_name), str(record.example_id),
              int(bool(record.em)), real(float(record.ce)), operator.index(record.tokens),
              operator.index(record.correct_tokens), str(record.output),
              None if record.checkpoint is None else str(record.checkpoint),
              _time(record.wall_time, now))),
        ]
    if isinstance(record, Scalar):
        raise TypeError("Scalar records are stored as chunks, not rows")
    raise TypeError(f"the store has no table for records of type {type(record).__name__}")


def _time(wall_time: Any, now: float) -> float:
    value = float(wall_time or now)
    return value if math.isfinite(value) else now


def real(value: float) -> float | None:
    """SQLite turns NaN into NULL anyway: say so explicitly."""
    return value if not math.isnan(value) else None
