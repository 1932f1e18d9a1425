"""One reader contract, two backends: a runs directory (SQLite) and a team store (PostgreSQL).

Every test writes through `ts.init` (with `store=` for the server, whose live sync
streams the local spool) and checks what the reader returns against values
computed here, independently of the store: the same assertions for both.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

import trainspect as ts
from trainspect.errors import TrainspectError
from trainspect.records import EvalExample, Matrix, SampleRow
from trainspect.store.protocol import RunData, RunSource
from trainspect.store.writer import MERGE_FANOUT


class Backend:
    """Where runs go and how they are read back, for one backend."""

    def __init__(self, kind: str, dir, url: str | None) -> None:
        self.kind, self.dir, self.url = kind, dir, url

    def init(self, **kwargs) -> ts.Run:
        kwargs.setdefault("alerts", False)
        return ts.init(dir=self.dir, store=self.url, **kwargs)

    def settle(self, run: ts.Run) -> None:
        """Make what the run logged readable: flushed locally, and on the server."""
        assert run.flush()
        if self.url:
            assert run.sync.wait(30)

    def reader(self):
        return ts.open(self.url or self.dir)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINSPECT_STORE", raising=False)
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else None
    return Backend(request.param, tmp_path / "runs", url)


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def reference_buckets(steps: list[int], vals: list[float], buckets: int) -> list[tuple]:
    """Min/max per bucket of equal step width, by a plain loop over float64 values."""
    if len(steps) <= buckets:
        return [(s, v, v) for s, v in zip(steps, vals)]
    lo, hi = steps[0], steps[-1]
    out: dict[int, list] = {}
    for s, v in zip(steps, vals):
        b = min((s - lo) * buckets // max(hi - lo, 1), buckets - 1)
        first, mn, mx = out.get(b, (s, math.nan, math.nan))
        if not math.isnan(v):
            mn = v if math.isnan(mn) else min(mn, v)
            mx = v if math.isnan(mx) else max(mx, v)
        out[b] = (first, mn, mx)
    return [tuple(out[b]) for b in sorted(out)]


def test_views_satisfy_the_protocol(backend):
    with backend.init(project="p") as run:
        run.log({"x": 1.0}, step=1)
    reader = backend.reader()
    assert isinstance(reader, RunSource)
    assert isinstance(reader.run(run.id), RunData)


def test_series_round_trip_exactly_through_merges(backend):
    """Hundreds of writes per key (so the writer merges chunks) while the sync streams."""
    rng = np.random.default_rng(0)
    n = MERGE_FANOUT * MERGE_FANOUT + 37  # two levels of merges, and a tail of small chunks
    values = rng.standard_normal(n)
    values[[5, 6, 7, 200]] = [math.nan, math.inf, -math.inf, math.nan]
    with backend.init(project="p", config={"lr": 0.5, "layers": [1, 2]}) as run:
        for step in range(n):
            run.log({"x": float(values[step]), "y": float(step) * 2}, step=step * 3)
            run.flush()  # one write per step: one chunk per key per step
            if backend.url and step % 97 == 0:
                run.sync.wait(30)  # the sync reads parts before they are merged
    view = backend.reader().run(run.id)
    steps, vals = view.arrays("x")
    assert steps.tolist() == [3 * s for s in range(n)]
    assert all(same(a, b) for a, b in zip(vals.tolist(), values.tolist()))
    assert view.series("y")[-1] == (3 * (n - 1), 2.0 * (n - 1))
    assert view.keys() == ["x", "y"]
    assert view.latest("x") == (3 * (n - 1), values[-1])
    assert same(view.latest_values()["x"], values[-1]) and view.latest_values()["y"] == 2.0 * (
        n - 1)
    assert view.last_step() == 3 * (n - 1)
    assert len(view.history("x")) == n  # merging never duplicated a point
    assert view.config == {"lr": 0.5, "layers": [1, 2]}
    assert view.status == "finished" and view.meta["attempt"] == 1


@pytest.mark.parametrize("buckets", [1, 7, 500, 2_999, 3_000, 10_000])
def test_downsampled_series_match_a_plain_loop(backend, buckets):
    rng = np.random.default_rng(buckets)
    steps = np.cumsum(rng.integers(1, 4, size=3_000)).tolist()
    vals = rng.standard_normal(3_000)
    vals[1234] = 50.0  # a spike that must survive
    vals[100:140] = math.nan  # a bucket (or more) of nothing but NaN
    vals[2000] = -math.inf
    with backend.init(project="p") as run:
        for i, (s, v) in enumerate(zip(steps, vals.tolist())):
            run.log({"v": v}, step=s)
            if i % 50 == 0:
                run.flush()
    got = backend.reader().run(run.id).series("v", buckets=buckets)
    want = reference_buckets(steps, vals.tolist(), buckets)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g[0] == w[0] and same(g[1], w[1]) and same(g[2], w[2])


def test_resumed_run_going_back_keeps_every_point_and_newer_wins(backend):
    with backend.init(project="p") as run:
        for step in range(100):
            run.log({"loss": 1.0, "other": 5.0}, step=step)
            if step % 10 == 0:
                run.flush()
    with backend.init(project="p", resume=run.id) as again:
        for step in range(60, 130):
            again.log({"loss": 2.0}, step=step)
            if step % 10 == 0:
                again.flush()
    view = backend.reader().run(run.id)
    series = dict(view.series("loss"))
    assert sorted(series) == list(range(130))
    assert all(series[s] == (1.0 if s < 60 else 2.0) for s in range(130))
    history = view.history("loss")
    assert len(history) == 170
    assert {a for a, _, _ in history} == {1, 2}
    assert view.series("loss", buckets=1) == [(0, 1.0, 2.0)]
    assert view.series("loss", buckets=1000) == [(s, series[s], series[s]) for s in range(130)]
    assert view.meta["attempt"] == 2 and view.status == "finished"


def test_rows_after_a_cursor_returns_what_came_next(backend):
    run = backend.init(project="p")
    for step in range(10):
        run.log({"a": float(step)}, step=step)
    run.alert("first", step=3)
    backend.settle(run)
    view = backend.reader().run(run.id)
    start = view.rows_after(0)
    assert [s for s, _ in start["scalars"]["a"]] == list(range(10))
    assert [a["message"] for a in start["alerts"]] == ["first"]
    cursor = view.cursor()
    assert cursor == start["cursor"] and view.rows_after(cursor)["scalars"] == {}
    for step in range(10, 25):
        run.log({"a": float(step), "b": -1.0}, step=step)
        run.flush()
    run.emit(Matrix("m", 24, [[1.0, 2.0]], ["r"], ["c1", "c2"], time.time()))
    run.alert("second", step=24)
    backend.settle(run)
    new = view.rows_after(cursor)
    points = dict(new["scalars"]["a"])  # merged chunks may repeat points: merge by step
    assert set(range(10, 25)) <= set(points) <= set(range(25))
    assert all(v == float(s) for s, v in points.items())
    assert [a["message"] for a in new["alerts"]] == ["second"]
    assert new["matrices"] == [{"name": "m", "step": 24}]
    assert new["cursor"] > cursor
    only_b = view.rows_after(cursor, keys=["b"])
    assert set(only_b["scalars"]) == {"b"} and only_b["cursor"] == new["cursor"]
    run.finish()


def test_samples_matrices_alerts_and_eval_examples(backend):
    positions = [{"pos": 0, "pred": "a", "label": "b", "p": 0.25}]
    with backend.init(project="p") as run:
        for step in (10, 20):
            for stream in ("text", "audio"):
                run.emit(SampleRow(step, stream, 0, f"s{step}", f"ctx {stream}", positions,
                                   1.0))
            run.emit(Matrix("calib", step, [[0.1 * step, 0.2], [0.3, 0.4]], ["a", "b"],
                            ["x", "y"], 2.0))
        run.emit(Matrix("lora", 20, [[1.0]], ["l0"], ["q"], 2.0))
        run.alert("watch out", level="critical", action="do this", step=15)
        for step, em in ((100, True), (200, False), (200, True)):  # re-evaluated: newest wins
            run.emit(EvalExample(step, "eval", "q1", "factual", "0-100", 3, 3, 2 + em, 0.5,
                                 em, f"out{step}", "prompt?", "ref!", f"ckpt-{step}", 3.0))
    view = backend.reader().run(run.id)
    assert [(r["step"], r["stream"]) for r in view.samples()] == [
        (10, "text"), (10, "audio"), (20, "text"), (20, "audio")]
    rows = view.samples(step=20, stream="audio")
    assert len(rows) == 1 and rows[0]["positions"] == positions
    assert rows[0]["context"] == "ctx audio" and rows[0]["group"] == 0
    assert view.sample_steps() == [10, 20]
    assert view.matrix_names() == ["calib", "lora"]
    assert view.matrix_steps("calib") == [10, 20]
    assert view.matrix("calib")["values"] == [[2.0, 0.2], [0.3, 0.4]]
    at_15 = view.matrix("calib", step=15)
    assert at_15["step"] == 10 and at_15["values"][0][0] == 1.0
    assert at_15["row_labels"] == ["a", "b"] and at_15["col_labels"] == ["x", "y"]
    assert view.matrix("nope") is None
    alert = [a for a in view.alerts() if a["rule"] == "user"]
    assert [(a["step"], a["level"], a["message"], a["action"], a["state"]) for a in alert] == [
        (15, "critical", "watch out", "do this", "fired")]
    assert view.eval_steps() == [100, 200]
    latest = view.eval_examples()
    assert len(latest) == 1 and latest[0]["step"] == 200 and latest[0]["em"] is True
    assert latest[0]["prompt"] == "prompt?" and latest[0]["checkpoint"] == "ckpt-200"
    assert view.eval_examples(step=100)[0]["output"] == "out100"
    assert view.eval_examples(eval_name="other") == []


def test_runs_are_listed_newest_first_and_found_by_reference(backend):
    made = []
    for i, name in enumerate(("alpha", "beta", "gamma")):
        with backend.init(project="one" if i < 2 else "two", name=name,
                          config={"i": i}) as run:
            run.log({"x": float(i)}, step=i)
        made.append(run)
        time.sleep(0.01)
    failing = backend.init(project="two", name="delta")
    failing.log({"x": 9.0}, step=1)
    failing.finish("failed")
    reader = backend.reader()
    listed = reader.runs()
    assert [v.name for v in listed] == ["delta", "gamma", "beta", "alpha"]
    assert [v.status for v in listed] == ["failed", "finished", "finished", "finished"]
    assert [v.name for v in reader.runs("one")] == ["beta", "alpha"]
    assert reader.projects() == ["one", "two"]
    assert reader.run(made[0].id).name == "alpha"
    assert reader.run(f"one/{made[1].id}").config == {"i": 1}
    with pytest.raises(TrainspectError, match="no run"):
        reader.run("one/nope")
    with pytest.raises(TrainspectError, match=r"matches \d\+? runs"):
        reader.run(made[0].id[:8])  # the shared date prefix
    assert reader.run(made[2].id[-4:]).id == made[2].id  # a suffix: the random digits
    assert reader.run("gamma").id == made[2].id  # a name
    first = listed[-1]
    assert first.started_at <= first.ended_at and first.id == made[0].id
