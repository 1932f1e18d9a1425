"""Many keys packed in one pass give, key by key, the chunks a plain one-key packing
gives; records become columns in one pass and bad ones still drop alone; keys written
together merge together and read back exactly."""

from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

import trainspect as ts
from trainspect.records import Scalar
from trainspect.store.chunks import decode_steps, pack_many
from trainspect.store.merge import MERGE_FANOUT
from trainspect.store.rows import Dropped, add_scalars


def reference_chunk(steps: list[int], vals: list[float], times: list[float]) -> dict:
    """One key's chunk, written out from the format's definition (docs/architecture.md)."""
    finite = [v for v in vals if math.isfinite(v)]
    n = len(steps)
    gaps = {b - a for a, b in zip(steps, steps[1:])}
    # evenly spaced and rising, with a stride int64 holds (decode_steps rebuilds them)
    even = n >= 2 and len(gaps) == 1 and 0 < next(iter(gaps)) < 2**63
    return {
        "n": n, "step_min": min(steps), "step_max": max(steps),
        "vmin": min(finite) if finite else None, "vmax": max(finite) if finite else None,
        "vlast": None if math.isnan(vals[-1]) else vals[-1],  # SQLite: NaN is NULL
        "ordered": all(b > a for a, b in zip(steps, steps[1:])),
        "steps": b"" if even else b"".join(s.to_bytes(8, "little", signed=True) for s in steps),
        "vals": np.array(vals, "<f8").tobytes(), "times": np.array(times, "<f8").tobytes(),
    }


def keys_of_every_shape() -> list[tuple[list[int], list[float], list[float]]]:
    rng = np.random.default_rng(0)
    keys = [
        ([7], [1.5], [0.1]),  # one point
        ([7], [math.nan], [0.1]),  # nothing finite
        ([1, 2, 3, 4], [1.0, -math.inf, 3.0, math.nan], [0.0] * 4),  # evenly spaced
        ([10, 20, 30], [3.0, 2.0, 1.0], [1.0, 2.0, 3.0]),  # stride 10
        ([1, 2, 4], [0.0, 0.0, 0.0], [0.0] * 3),  # rising, not even
        ([5, 3, 9], [1.0, 2.0, 3.0], [0.0] * 3),  # not ordered
        ([4, 4], [1.0, 2.0], [0.0] * 2),  # a repeated step
        ([-(2**63), 2**63 - 1], [1.0, 2.0], [0.0] * 2),  # a span int64 cannot hold
        ([-(2**63), 0, 2**63 - 1], [1.0, 2.0, 3.0], [0.0] * 3),
        ([3, 2, 1], [math.inf, -math.inf, math.inf], [0.0] * 3),
    ]
    for _ in range(40):  # and random ones, many of one point as a flush brings them
        n = int(rng.integers(1, 4))
        start = int(rng.integers(-50, 50))
        steps = (start + np.cumsum(rng.integers(0, 3, n))).tolist()
        vals = rng.choice([0.5, -2.0, math.nan, math.inf, 1e300], n).tolist()
        keys.append((steps, vals, rng.random(n).tolist()))
    return keys


def test_many_keys_packed_at_once_match_the_format_key_by_key():
    keys = keys_of_every_shape()
    packed = pack_many([(np.array(s, np.int64), np.array(v, np.float64),
                         np.array(t, np.float64)) for s, v, t in keys])
    assert all(len(column) == len(keys) for column in packed)
    for i, (steps, vals, times) in enumerate(keys):
        expected = reference_chunk(steps, vals, times)
        assert {field: getattr(packed, field)[i] for field in expected} == expected, steps
        decoded = decode_steps(packed.steps[i], len(steps), min(steps), max(steps))
        assert decoded.tolist() == steps


def test_a_key_with_no_points_is_refused():
    with pytest.raises(ValueError, match="no points"):
        pack_many([(np.array([1]), np.array([1.0]), np.array([0.0])),
                   (np.array([], np.int64), np.array([]), np.array([]))])


def test_records_become_columns_in_one_pass_and_a_bad_one_drops_alone():
    records = [Scalar("a", 1, 1.0, 0.5), Scalar("b", 1, 2.0, 0.5), Scalar("a", 2, 3.0, 0.6)]
    columns: dict = {}
    add_scalars(columns, records, Dropped())
    assert list(columns) == ["a", "b"]
    (steps, vals, times), = columns["a"]
    assert (steps.tolist(), vals.tolist(), times.tolist()) == ([1, 2], [1.0, 3.0], [0.5, 0.6])
    # a step outside int64 and a value that is not a number: the slow path, one by one
    dropped = Dropped()
    columns = {}
    add_scalars(columns, [Scalar("a", 2**70, 1.0, 0.0), Scalar("b", 3, "x", 0.0),
                          Scalar("c", 4, np.float32(2.5), 0.0)], dropped)
    assert dropped.points == 2
    assert [(k, [s.tolist() for s in seg]) for k, segs in columns.items() for seg in segs] == [
        ("c", [[4], [2.5], [0.0]])]


def test_keys_written_together_merge_together_and_read_back_exactly(runs):
    names = [f"k{i}" for i in range(30)]
    writes = MERGE_FANOUT * 2 + 3
    back = [w if w != MERGE_FANOUT // 2 else 0 for w in range(writes)]  # goes back once
    with ts.init(project="p") as run:
        for w in range(writes):
            run.log({name: float(w * 100 + i) for i, name in enumerate(names)}, step=w)
            run.emit(Scalar("back", back[w], float(w), 0.0))
            run.flush()
    view = ts.open(runs).run(run.id)
    for i, name in enumerate(names):
        assert view.series(name) == [(w, float(w * 100 + i)) for w in range(writes)]
    newest = {s: float(w) for w, s in enumerate(back)}  # the newer write wins step 0
    assert view.series("back") == sorted(newest.items())
    with sqlite3.connect(view.path) as conn:
        chunks = dict(conn.execute(
            "SELECT k.name, COUNT(*) FROM scalar_chunks c JOIN keys k ON k.id = c.key_id "
            "GROUP BY k.name"))
    assert all(chunks[name] == 2 + 3 for name in names)  # two merged chunks, three small
    assert chunks["back"] == writes  # its chunks do not run upward: left as written
