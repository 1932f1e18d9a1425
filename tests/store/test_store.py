"""The store round-trips exactly what was logged, downsamples honestly, and never loses
points: not on resume, not while a reader follows it, not when the disk fills."""

from __future__ import annotations

import logging
import math
import sqlite3

import numpy as np
import pytest

import trainspect as ts
from trainspect.store import schema
from trainspect.store.chunks import downsample
from trainspect.store.writer import MERGE_FANOUT


def test_series_round_trips_every_value_exactly(runs):
    rng = np.random.default_rng(0)
    values = rng.standard_normal(500).tolist()
    values[7], values[8], values[9] = math.nan, math.inf, -math.inf
    with ts.init(project="p", log_every=5) as run:
        for step, v in enumerate(values):
            run.log({"x": v, "k": step * 2}, step=step)
            if step % 100 == 0:
                run.flush()
    view = ts.open(runs).run(run.id)
    got = view.series("x")
    assert [s for s, _ in got] == list(range(500))
    for (_, g), want in zip(got, values):
        assert (math.isnan(g) and math.isnan(want)) or g == want
    assert view.series("k")[-1] == (499, 998.0)
    assert view.keys() == ["k", "x"]
    assert view.latest("x") == (499, values[-1])


def _reference_buckets(steps, vals, buckets):
    lo, hi = steps[0], steps[-1]
    width = (hi - lo) / buckets
    out = {}
    for s, v in zip(steps, vals):
        b = min(int((s - lo) / width), buckets - 1)
        first, mn, mx = out.get(b, (s, math.inf, -math.inf))
        out[b] = (first, min(mn, v), max(mx, v))
    return [out[b] for b in sorted(out)]


def test_downsample_keeps_min_and_max_of_each_bucket():
    rng = np.random.default_rng(1)
    steps = np.cumsum(rng.integers(1, 4, size=10_000))
    vals = rng.standard_normal(10_000)
    vals[1234] = 50.0  # a spike must survive
    got = downsample(steps, vals, 300)
    assert got == _reference_buckets(steps.tolist(), vals.tolist(), 300)
    assert max(m for _, _, m in got) == 50.0
    few = downsample(steps[:5], vals[:5], 300)
    assert few == [(int(s), float(v), float(v)) for s, v in zip(steps[:5], vals[:5])]


def test_series_with_buckets_through_the_reader(runs):
    with ts.init(project="p") as run:
        for step in range(3000):
            run.log({"y": math.sin(step / 50)}, step=step)
    view = ts.open(runs).run(run.id)
    steps, vals = view.arrays("y")
    assert view.series("y", buckets=100) == _reference_buckets(steps.tolist(), vals.tolist(), 100)
    with pytest.raises(ts.TrainspectError, match="buckets"):
        view.series("y", buckets=0)


def test_small_chunks_are_merged_and_series_stay_exact(runs):
    with ts.init(project="p") as run:
        for step in range(MERGE_FANOUT * 3):
            run.log({"a": float(step)}, step=step)
            run.flush()  # one chunk per flush
    view = ts.open(runs).run(run.id)
    assert view.series("a") == [(s, float(s)) for s in range(MERGE_FANOUT * 3)]
    with sqlite3.connect(view.path) as conn:
        chunks = conn.execute("SELECT COUNT(*) FROM scalar_chunks").fetchone()[0]
    assert chunks < MERGE_FANOUT  # 48 writes folded into a few chunks


def test_resume_going_back_in_steps_keeps_everything_and_newer_wins(runs):
    run = ts.init(project="p", config={"lr": 1.0})
    for step in range(100):
        run.log({"loss": 1.0}, step=step)
    run.finish()
    resumed = ts.init(project="p", resume=run.id[:12], config={"epochs": 3})
    assert resumed.id == run.id
    for step in range(60, 150):
        resumed.log({"loss": 2.0}, step=step)
    resumed.finish()
    view = ts.open(runs).run(run.id)
    assert view.meta["attempt"] == 2
    assert view.config == {"lr": 1.0, "epochs": 3}
    assert view.series("loss") == [(s, 1.0 if s < 60 else 2.0) for s in range(150)]
    history = view.history("loss")
    assert len(history) == 100 + 90  # superseded points are kept
    assert sorted({a for a, _, _ in history}) == [1, 2]


def test_resume_unknown_run_names_the_argument(runs):
    ts.init(project="p").finish()
    with pytest.raises(ts.TrainspectError, match="resume"):
        ts.init(project="p", resume="nope")


def test_rows_after_cursor_returns_only_new_rows(runs):
    run = ts.init(project="p")
    run.log({"a": 1.0}, step=1)
    run.flush()
    view = ts.open(runs).run(run.id)
    first = view.rows_after(0)
    assert first["scalars"] == {"a": [(1, 1.0)]}
    run.log({"a": 2.0, "b": 3.0}, step=2)
    run.alert("look", action="act")
    run.flush()
    second = view.rows_after(first["cursor"])
    assert second["scalars"] == {"a": [(2, 2.0)], "b": [(2, 3.0)]}
    assert [a["message"] for a in second["alerts"]] == ["look"]
    assert view.rows_after(second["cursor"])["scalars"] == {}
    assert view.rows_after(first["cursor"], keys=["b"])["scalars"] == {"b": [(2, 3.0)]}
    run.finish()


def test_schema_version_and_newer_files_are_refused(runs):
    run = ts.init(project="p")
    run.log({"a": 1.0}, step=0)
    run.finish()
    with sqlite3.connect(run.path) as conn:
        assert schema.schema_version(conn) == schema.SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")
    with pytest.raises(ts.TrainspectError, match="newer"):
        ts.open(runs).run(run.id).keys()


def test_migration_brings_an_empty_file_forward(tmp_path):
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()
    conn = sqlite3.connect(path)
    schema.migrate(conn, path)
    assert schema.schema_version(conn) == schema.SCHEMA_VERSION
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"meta", "keys", "scalar_chunks", "samples", "matrices", "alerts"} <= tables


def test_full_disk_is_reported_once_and_nothing_is_lost(runs, caplog):
    run = ts.init(project="p")
    run.log({"a": 0.0}, step=0)
    assert run.flush()
    pages = run._writer._conn.execute("PRAGMA page_count").fetchone()[0]
    run._writer._conn.execute(f"PRAGMA max_page_count = {pages}")  # the "disk" is now full
    with caplog.at_level(logging.ERROR, logger="trainspect"):
        for step in range(1, 3001):
            run.log({f"k{i}": float(step + i) for i in range(50)}, step=step)  # must not raise
        assert run.flush(timeout=5) is False
        assert run.flush(timeout=5) is False
    errors = [r for r in caplog.records if "full" in r.getMessage()]
    assert len(errors) == 1, [r.getMessage() for r in caplog.records]
    assert "Training goes on" in errors[0].getMessage()
    run._writer._conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    assert run.flush()
    run.finish()
    view = ts.open(runs).run(run.id)
    assert sum(len(view.series(k)) for k in view.keys()) == 3000 * 50 + 1
    assert view.series("k7") == [(s, float(s + 7)) for s in range(1, 3001)]


def test_unwritable_directory_gives_one_error_and_training_goes_on(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the runs directory should be")
    with caplog.at_level(logging.ERROR, logger="trainspect"):
        run = ts.init(project="p", dir=blocker)
        for step in range(20):
            run.log({"loss": 1.0}, step=step)
        assert run.flush() is False
        run.finish()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(blocker) in errors[0] and "Training goes on" in errors[0]
