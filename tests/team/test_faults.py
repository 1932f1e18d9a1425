"""Faults: the server killed and restarted mid-run, refused at start, two writers and a reader
at once, a run resumed on another machine, a trainer killed mid-sync. In every case the
training loop never waits or raises, and the server ends with every point exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import trainspect as ts
from trainspect.cli import main
from trainspect.store.server import live
from trainspect.store.server.cluster import LocalCluster, free_port, server_bindir

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def quick_sync(monkeypatch):
    """Retry fast and alert after 1 s behind, so faults show within a test's time."""
    monkeypatch.setattr(live, "MAX_BACKOFF_S", 0.3)
    monkeypatch.setattr(live, "LAG_ALERT_S", 1.0)
    monkeypatch.setattr(live, "INTERVAL_S", 0.2)
    monkeypatch.setattr(live, "FINAL_SYNC_S", 5.0)


def expected(n: int) -> dict[str, list[tuple[int, float]]]:
    return {"x": [(s, s * 0.5) for s in range(n)], "y": [(s, float(-s)) for s in range(n)]}


def assert_complete(url: str, dir: Path, run_id: str, n: int) -> None:
    """Server and spool both hold every point once, as logged."""
    server = ts.open(url).run(run_id)
    local = ts.open(dir).run(run_id)
    for key, want in expected(n).items():
        assert server.series(key) == local.series(key) == want
        assert len(server.history(key)) == len(local.history(key))  # nothing stored twice


def sync_alerts(view) -> list[tuple[str, str]]:
    return [(a["level"], a["state"]) for a in view.alerts() if a["rule"] == "store_sync"]


def test_server_killed_and_restarted_mid_run_loses_nothing(tmp_path, own_cluster, quick_sync):
    own_cluster.start()
    run = ts.init(project="p", dir=tmp_path, store=own_cluster.url, alerts=False)
    slowest = 0.0
    n = 3000
    for step in range(n):
        started = time.perf_counter()
        run.log({"x": step * 0.5, "y": float(-step)}, step=step)
        if step % 50 == 0:
            assert run.flush()  # the local spool stays durable throughout
        slowest = max(slowest, time.perf_counter() - started)
        if step == 1000:
            assert run.sync.wait(30)
            own_cluster.kill()  # a crash: connections reset, WAL recovery on start
        if step == 2000:
            time.sleep(1.5)  # long enough behind for the alert
            own_cluster.start()
    run.finish()
    assert slowest < 1.0  # never blocked on the server (its connect timeout alone is 5 s)
    assert run.sync.errors >= 1
    assert_complete(own_cluster.url, tmp_path, run.id, n)
    server = ts.open(own_cluster.url).run(run.id)
    assert sync_alerts(server) == [("warning", "fired"), ("info", "cleared")]
    assert server.status == "finished"


def test_server_refusing_connections_at_start_then_appearing(tmp_path, quick_sync):
    if server_bindir() is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    cluster = LocalCluster(port=free_port())  # not started: connections are refused
    try:
        started = time.monotonic()
        run = ts.init(project="p", dir=tmp_path, store=cluster.url, alerts=False)
        assert time.monotonic() - started < 2.0  # ts.init does not wait for the server
        for step in range(500):
            run.log({"x": step * 0.5, "y": float(-step)}, step=step)
        assert run.flush()
        deadline = time.monotonic() + 20
        local = ts.open(tmp_path).run(run.id)
        while not sync_alerts(local) and time.monotonic() < deadline:
            time.sleep(0.1)
            run.flush()
        alert = [a for a in local.alerts() if a["rule"] == "store_sync"]
        assert alert and "behind" in alert[0]["message"] and "points" in alert[0]["message"]
        assert "Nothing is lost" in alert[0]["action"]
        cluster.start()
        for step in range(500, 800):
            run.log({"x": step * 0.5, "y": float(-step)}, step=step)
        run.finish()
        assert_complete(cluster.url, tmp_path, run.id, 800)
        assert sync_alerts(ts.open(cluster.url).run(run.id)) == [("warning", "fired"),
                                                                 ("info", "cleared")]
    finally:
        cluster.remove()


TRAINER = """
import sys, time, trainspect as ts
url, folder, name, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
with ts.init(project="ranks", name=name, dir=folder, store=url, alerts=False) as run:
    print(run.id, flush=True)
    for step in range(n):
        run.log({"x": step * 0.5, "y": float(-step)}, step=step)
        if step % 25 == 0:
            run.flush()
            time.sleep(0.005)
"""


def start_trainer(url: str, folder: Path, name: str, n: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("TRAINSPECT_STORE", None)
    return subprocess.Popen([sys.executable, "-c", TRAINER, url, str(folder), name, str(n)],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def test_two_trainers_and_a_live_reader_at_once(tmp_path, pg_url):
    n = 2000
    trainers = [start_trainer(pg_url, tmp_path / f"rank{r}", f"rank{r}", n) for r in (0, 1)]
    ids = [p.stdout.readline().strip() for p in trainers]
    seen: dict[str, dict[int, float]] = {i: {} for i in ids}
    errors: list[BaseException] = []

    def follow() -> None:  # the dashboard's way: rows after a cursor, merged by step
        try:
            deadline = time.monotonic() + 120
            reader = None
            while reader is None:
                try:
                    reader = ts.open(pg_url)
                except ts.TrainspectError:  # the first sync has not created the store yet
                    time.sleep(0.1)
            cursors = dict.fromkeys(ids, 0)
            while time.monotonic() < deadline:
                done = True
                for run_id in ids:
                    try:
                        view = reader.run(run_id)
                    except ts.TrainspectError:
                        done = False
                        continue
                    new = view.rows_after(cursors[run_id], keys=["x"])
                    cursors[run_id] = new["cursor"]
                    seen[run_id].update(new["scalars"].get("x", []))
                    done &= view.refresh().status == "finished" and not new["scalars"]
                if done:
                    return
                time.sleep(0.05)
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    reader = threading.Thread(target=follow)
    reader.start()
    for p in trainers:
        assert p.wait(120) == 0
    reader.join(150)
    assert errors == []
    for r, run_id in enumerate(ids):
        assert sorted(seen[run_id].items()) == expected(n)["x"]
        assert_complete(pg_url, tmp_path / f"rank{r}", run_id, n)


def test_run_resumed_on_another_machine_continues_on_the_server(tmp_path, pg_url):
    machine_a, machine_b = tmp_path / "a", tmp_path / "b"
    with ts.init(project="p", dir=machine_a, store=pg_url, alerts=False) as run:
        for step in range(100):
            run.log({"loss": 1.0}, step=step)
    with ts.init(project="p", dir=machine_b, store=pg_url, alerts=False,
                 resume=run.id) as again:  # b has no file of this run: the server has it
        assert again.id == run.id
        for step in range(80, 150):
            again.log({"loss": 2.0}, step=step)
    view = ts.open(pg_url).run(run.id)
    assert view.series("loss") == [(s, 1.0 if s < 80 else 2.0) for s in range(150)]
    assert sorted({a for a, _, _ in view.history("loss")}) == [1, 2]
    assert view.meta["attempt"] == 2 and view.name == run.name
    assert ts.open(machine_b).run(run.id).series("loss") == [(s, 2.0) for s in range(80, 150)]
    with ts.init(project="p", dir=machine_a, store=pg_url, alerts=False,
                 resume=run.id) as third:  # back on a: attempt 3, after b's 2
        third.log({"loss": 3.0}, step=150)
    view = ts.open(pg_url).run(run.id)
    assert view.meta["attempt"] == 3 and view.series("loss")[-1] == (150, 3.0)
    assert sorted({a for a, _, _ in view.history("loss")}) == [1, 2, 3]
    assert view.series("loss")[79:81] == [(79, 1.0), (80, 2.0)]


def test_trainer_killed_mid_sync_then_trainspect_sync_sends_the_rest(tmp_path, pg_url):
    trainer = start_trainer(pg_url, tmp_path, "doomed", 10**9)
    run_id = trainer.stdout.readline().strip()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the server has some of it
        try:
            if ts.open(pg_url).run(run_id).last_step():
                break
        except ts.TrainspectError:
            pass
        time.sleep(0.2)
    time.sleep(0.5)
    trainer.send_signal(signal.SIGKILL)
    trainer.wait(10)
    local = ts.open(tmp_path).run(run_id)
    n = local.last_step() + 1
    assert local.series("x") == expected(n)["x"]  # the spool has all that was committed
    assert main(["sync", str(tmp_path), "--to", pg_url]) == 0
    assert_complete(pg_url, tmp_path, run_id, n)
    assert ts.open(pg_url).run(run_id).status == "crashed"  # same host, process gone


def test_resuming_while_the_server_is_away_resumes_from_the_local_file(tmp_path, caplog,
                                                                        quick_sync):
    url = f"postgresql://nobody@127.0.0.1:{free_port()}/none"  # nothing listens there
    with ts.init(project="p", dir=tmp_path, alerts=False) as run:
        run.log({"x": 1.0}, step=1)
    with ts.init(project="p", dir=tmp_path, store=url, alerts=False, resume=run.id) as again:
        again.log({"x": 2.0}, step=2)
    assert "without the team store" in caplog.text
    view = ts.open(tmp_path).run(run.id)
    assert view.meta["attempt"] == 2 and view.series("x") == [(1, 1.0), (2, 2.0)]
    with pytest.raises(ts.TrainspectError, match="cannot resume"):
        ts.init(project="p", dir=tmp_path / "elsewhere", store=url, resume=run.id)
