"""A bad record costs only itself: the writer never misfiles points and never drops a batch.

Errors that are not SQLite's (a value json cannot encode, a step outside int64) used
to abort the whole transaction: the batch was lost, and the key ids handed out
inside it stayed cached, so the next new key inherited orphaned points.
"""

from __future__ import annotations

import logging
import time

import trainspect as ts
from trainspect.records import Alert, Matrix, Scalar


def test_circular_meta_does_not_misfile_points_or_drop_the_batch(runs, caplog):
    circular: dict = {}
    circular["self"] = circular
    run = ts.init(project="p")
    with caplog.at_level(logging.WARNING, logger="trainspect"):
        run.log({"b": 1.0}, step=1)
        run.log({"b": 2.0}, step=2)
        run.set_meta(loop=circular, fine=3)  # committed in the same tick as b's first points
        assert run.flush()
        run.log({"c": 3.0}, step=3)
        assert run.flush()
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("b") == [(1, 1.0), (2, 2.0)]
    assert view.series("c") == [(3, 3.0)]
    assert view.meta["fine"] == 3
    assert "self" in view.meta["loop"]  # kept as its repr, with one warning naming the key
    lines = [r.getMessage() for r in caplog.records if "loop" in r.getMessage()]
    assert len(lines) == 1 and "repr" in lines[0]


def test_out_of_range_alert_is_dropped_alone(runs, caplog):
    run = ts.init(project="p")
    with caplog.at_level(logging.WARNING, logger="trainspect"):
        run.log({"b": 1.0}, step=1)
        run.emit(Alert(step=2**63, rule="user", level="warning", message="too far"),
                 Alert(step=1, rule="user", level="warning", message="kept"))
        assert run.flush()
        run.log({"c": 2.0}, step=2)
        assert run.flush()
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("b") == [(1, 1.0)] and view.series("c") == [(2, 2.0)]
    assert [a["message"] for a in view.alerts()] == ["kept"]
    assert view.meta["dropped_records"] == 1
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert dropped and "2**63" not in dropped[0] and "9223372036854775808" in dropped[0]


def test_step_beyond_int64_costs_one_point_not_the_batch(runs):
    """Twenty good points around one whose step cannot be stored: twenty are stored."""
    run = ts.init(project="p")
    writer, now = run._writer, time.time()
    for step in range(10):
        writer.scalars.append((step, now, {"x": float(step)}))
    writer.scalars.append((2**64, now, {"x": -1.0}))  # past the run's own step check
    for step in range(10, 20):
        writer.scalars.append((step, now, {"x": float(step)}))
    run.emit(Scalar("y", 2**64, 1.0, now), Scalar("y", 5, 5.0, now),
             Matrix("m", -(2**64), [[1.0]]), Matrix("m", 3, [[2.0]]))
    assert run.flush()
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("x") == [(s, float(s)) for s in range(20)]
    assert view.series("y") == [(5, 5.0)]
    assert view.matrix_steps("m") == [3]
    assert view.meta["dropped_points"] == 2 and view.meta["dropped_records"] == 1



def test_an_item_the_database_refuses_is_isolated_in_a_savepoint(runs, caplog):
    """An error the checks cannot foresee (here a trigger) costs only its own item."""
    import sqlite3

    run = ts.init(project="p")
    run.log({"a": 0.0}, step=0)
    assert run.flush()
    with sqlite3.connect(run.path) as conn:
        conn.execute("CREATE TRIGGER poison BEFORE INSERT ON alerts WHEN NEW.message = "
                     "'poison' BEGIN SELECT RAISE(ABORT, 'refused'); END")
    with caplog.at_level(logging.WARNING, logger="trainspect"):
        run.log({"a": 1.0, "new": 5.0}, step=1)
        run.emit(Alert(step=1, rule="user", level="warning", message="first"),
                 Alert(step=1, rule="user", level="warning", message="poison"),
                 Alert(step=1, rule="user", level="warning", message="last"))
        assert run.flush()
        run.log({"later": 2.0}, step=2)
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("a") == [(0, 0.0), (1, 1.0)]
    assert view.series("new") == [(1, 5.0)] and view.series("later") == [(2, 2.0)]
    assert [a["message"] for a in view.alerts()] == ["first", "last"]
    assert view.meta["dropped_records"] == 1
    assert any("refused" in r.getMessage() for r in caplog.records)
