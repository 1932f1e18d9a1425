"""The dashboard and the read commands over a team store: the run list, every panel,
live updates by cursor, and `--store` for ls, show, doctor, export and report."""

from __future__ import annotations

import json

import pytest

import trainspect as ts
from tests.dashboard.conftest import get_json, http, wait_for
from tests.dashboard.test_app import SSE
from trainspect.cli import main
from trainspect.dashboard.panels import PANELS
from trainspect.dashboard.server import start
from trainspect.records import Matrix, SampleRow


@pytest.fixture
def team(tmp_path, pg_url):
    """A finished run and a live one, both streamed to the store; the live run stays open."""
    with ts.init(project="nlp", name="done", dir=tmp_path, store=pg_url,
                 config={"lr": 0.01, "rank": 16}) as done:
        for step in range(1, 101):
            done.log({"loss": 1.0 / step, "text/acc": step / 100}, step=step)
        position = {"t": 0, "pred": "a", "label": "a", "match": True, "pred_prob": 0.9,
                    "label_prob": 0.9, "top": [["a", 0.9]]}
        done.emit(SampleRow(100, "text", 0, "s1", "ctx", [position], 1.0))
        done.emit(Matrix("text/calibration", 100, [[0.1, 0.2, 5.0]], ["b0"],
                         ["conf", "acc", "count"], 1.0))
        done.alert("check the data", step=50, action="look at batch 7")
    live = ts.init(project="nlp", name="live", dir=tmp_path, store=pg_url)
    for step in range(1, 11):
        live.log({"loss": 2.0 / step}, step=step)
    live.flush()
    assert live.sync.wait(30)
    yield pg_url, done, live
    live.finish()


def test_run_list_panels_and_live_updates_over_the_store(team):
    url, done, live = team
    server = start(url, port=0, poll_s=0.1)
    try:
        listing = get_json(server.url, "/api/runs")
        rows = {r["name"]: r for r in listing["runs"]}
        assert [r["name"] for r in listing["runs"]] == ["live", "done"]
        assert rows["done"]["status"] == "finished" and rows["done"]["step"] == 100
        assert rows["done"]["headline"]["loss"] == 0.01 and rows["done"]["alerts"] == 1
        assert rows["live"]["status"] == "running" and rows["live"]["step"] == 10
        assert rows["done"]["config"] == {"lr": "0.01", "rank": "16"}
        assert [r["name"] for r in get_json(server.url, "/api/runs?q=rank%3D16")["runs"]] == [
            "done"]
        ref = f"nlp/{done.id}"
        for name in PANELS:
            get_json(server.url, f"/api/runs/{ref}/panels/{name}")
        loss = get_json(server.url, f"/api/runs/{ref}/panels/loss?buckets=all")
        points = [p for c in loss["charts"] for s in c["series"] if s["key"] == "loss"
                  for p in s["points"]]
        assert [p[0] for p in points] == list(range(1, 101))
        zoom = get_json(server.url, f"/api/runs/{ref}/series?key=loss&lo=10&hi=19")
        assert [p[0] for p in zoom["points"]] == list(range(10, 20))
        status, _, body = http(server.url + "api/runs/nlp/..%2Fx/panels/loss")
        assert status in (400, 404)
        status, _, _ = http(server.url + f"api/runs/nlp/{done.id[:8]}/panels/loss")
        assert status == 404  # URLs name runs exactly
        live_ref = f"nlp/{live.id}"
        events = SSE(server.url + f"api/events?run={live_ref}")
        try:
            name, _, hello = events.next()
            assert name == "hello" and hello["status"][live_ref] == "running"
            for step in range(11, 21):
                live.log({"loss": 2.0 / step}, step=step)
            live.flush()
            assert live.sync.wait(30)
            got: dict[int, float] = {}

            def update_arrived() -> bool:
                name, _, data = events.next()
                if name == "update":
                    got.update({p[0]: p[1] for p in data.get("scalars", {}).get("loss", [])})
                return set(range(11, 21)) <= set(got)

            assert wait_for(update_arrived, timeout=15)
            assert all(got[s] == 2.0 / s for s in range(11, 21))
        finally:
            events.close()
    finally:
        server.stop()


def test_read_commands_take_a_store_url(team, tmp_path, capsys):
    url, done, live = team
    assert main(["ls", "--store", url]) == 0
    out = capsys.readouterr().out
    assert done.id in out and live.id in out and "finished" in out and "loss=0.01" in out
    assert main(["show", done.id, "--store", url, "--samples"]) == 0
    out = capsys.readouterr().out
    assert "status   finished" in out and "check the data" in out and url.split("@")[1] in out
    assert "predicted a" in out
    assert main(["doctor", done.id, "--store", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    target = tmp_path / "out.csv"
    assert main(["export", done.id, "--store", url, "--format", "csv", "-o", str(target)]) == 0
    assert len(target.read_text().splitlines()) == 1 + 200
    report = tmp_path / "report.html"
    assert main(["report", done.id, "--store", url, "-o", str(report)]) == 0
    assert report.stat().st_size > 10_000
    assert main(["show", "nope", "--store", url]) == 2
    assert "no run 'nope'" in capsys.readouterr().err
