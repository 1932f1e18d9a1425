"""The team store against MLflow's PostgreSQL backend, on the same local server.

    python benchmarks/team_store.py [--url postgresql://...] [--runs 10000]

Starts a throwaway PostgreSQL (or uses `--url`, a superuser URL) and two databases
on it, one for trainspect and one for MLflow (`postgresql+psycopg://`, its
SQLAlchemy store). Measures, for both:

- sync throughput: points/s from the training side into the server (trainspect:
  `trainspect sync` of a 1,000,000-point spool, 50 metrics x 20,000 steps;
  MLflow: `log_batch` of 1,000 points at a time, one 20,000-point metric);
- reading one 20,000-point series (`view.series(key)` / `get_metric_history`);
- downsampling a 1,000,000-point series to 2,000 min/max buckets (trainspect: one
  server query; MLflow has none: `get_metric_history` then numpy);
- listing 10,000 runs (`ts.open(url).runs()` / `search_runs`);
- the UI's run list with 10,000 runs over HTTP (the dashboard's /api/runs /
  MLflow's server's runs/search, both answering with all 10,000);
- and, as a yardstick of how busy the machine is during the run, the same read and
  downsampling from trainspect's local SQLite file (docs/benchmarks.md has its
  figures on a quiet machine).

The 10,000 runs of each tool are copies, made in SQL, of one run written through
that tool's own API; MLflow's 1,000,000 points are copied into its `metrics` table
with COPY (its `log_batch` writes ~1,500 points/s here: a million would take 11
minutes). Both databases get a VACUUM ANALYZE after their bulk writes (autovacuum's
work, done at once); medians of repeated timings, the first call of each a warm-up.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = 20_000
KEYS = 50
MILLION = 1_000_000
BUCKETS = 2_000
TARGETS = {"sync points/s": 500_000, "list 10k runs (ms)": 300, "read 20k series (ms)": 20,
           "downsample 1M -> 2k (ms)": 100}


def timed(fn, repeat: int) -> float:
    """Median seconds of `repeat` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def database(admin_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_url.rsplit("/", 1)[0] + "/" + name


def buckets_of(steps: np.ndarray, vals: np.ndarray, buckets: int) -> list:
    from trainspect.store.chunks import downsample

    return downsample(steps, vals, buckets)


# ---- trainspect ----------------------------------------------------------------------------

def trainspect_side(url: str, work: Path, runs: int) -> dict:
    import psycopg

    import trainspect as ts
    from trainspect.store.server.sync import sync_file

    out = {}
    config = {f"param_{i}": i * 0.1 for i in range(10)}
    with ts.init(project="bench", name="wide", dir=work, alerts=False, config=config) as run:
        for step in range(STEPS):
            run.log({f"metric_{k:02d}": step * 1e-3 + k for k in range(KEYS)}, step=step)
        run.log({"loss": 0.5, "text/acc": 0.9}, step=STEPS)
        run.alert("a template alert", step=STEPS)
    wide = run
    start = time.perf_counter()
    done = sync_file(wide.path, url)
    out["sync points/s"] = done.points / (time.perf_counter() - start)
    rng = np.random.default_rng(0)
    million = rng.standard_normal(MILLION)
    with ts.init(project="bench", name="long", dir=work, alerts=False) as run:
        for step, v in enumerate(million.tolist()):
            run.log({"loss": v}, step=step)
    sync_file(run.path, url)
    settle(url)
    reader = ts.open(url)
    view = reader.run(wide.id)
    assert len(view.series("metric_07")) == STEPS
    out["read 20k series (ms)"] = 1e3 * timed(lambda: view.series("metric_07"), 20)
    wide_local = ts.open(work).run(wide.id)  # the same reads of the local file: how loaded
    out["local: read 20k series (ms)"] = 1e3 * timed(  # this machine is, in this run
        lambda: wide_local.series("metric_07"), 20)
    long_view = reader.run(run.id)
    local = ts.open(work).run(run.id)
    assert long_view.series("loss", buckets=BUCKETS) == local.series("loss", buckets=BUCKETS)
    out["downsample 1M -> 2k (ms)"] = 1e3 * timed(
        lambda: long_view.series("loss", buckets=BUCKETS), 10)
    out["local: downsample 1M -> 2k (ms)"] = 1e3 * timed(
        lambda: local.series("loss", buckets=BUCKETS), 10)
    clone_trainspect_runs(url, wide.id, runs - 2)
    assert len(reader.runs()) == runs
    out["list 10k runs (ms)"] = 1e3 * timed(reader.runs, 5)
    reader.close()
    from trainspect.dashboard.server import start

    server = start(url, port=0)
    try:
        def ui_list() -> None:
            with urllib.request.urlopen(server.url + "api/runs", timeout=120) as response:
                assert len(json.loads(response.read())["runs"]) == runs

        out["UI run list 10k (ms)"] = 1e3 * timed(ui_list, 3)
    finally:
        server.stop()
    with psycopg.connect(url) as conn:
        out["server bytes"] = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'trainspect' AND c.relkind = 'r'"
        ).fetchone()[0]
    return out


def settle(url: str) -> None:
    """VACUUM ANALYZE, as autovacuum does within a minute of a bulk write: freshly written
    rows are read without their visibility hint bits and before the planner has stats."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def clone_trainspect_runs(url: str, run_id: str, copies: int) -> None:
    """`copies` runs like `run_id` (row, metrics' latest values, alerts), in SQL."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO trainspect.runs (project, run_id, name, status, started_at, ended_at, "
            "heartbeat_at, attempt, host, pid, tags, config, config_text, meta, last_step, "
            "alert_count) SELECT project, run_id || '-' || i, name || '-' || i, status, "
            "started_at - i, ended_at - i, heartbeat_at, attempt, host, pid, tags, config, "
            "config_text, meta, last_step, alert_count FROM trainspect.runs, "
            "generate_series(1, %s) i WHERE run_id = %s", (copies, run_id))
        conn.execute(
            "INSERT INTO trainspect.spools (run_uid, token, first_attempt) SELECT run_uid, "
            "'copy', 1 FROM trainspect.runs WHERE run_id LIKE %s", (run_id + "-%",))
        conn.execute(
            "INSERT INTO trainspect.keys (run_uid, name, vlast, last_order, step_max) "
            "SELECT n.run_uid, k.name, k.vlast, k.last_order, k.step_max FROM trainspect.keys k "
            "JOIN trainspect.runs t ON t.run_uid = k.run_uid AND t.run_id = %s "
            "CROSS JOIN trainspect.runs n WHERE n.run_id LIKE %s", (run_id, run_id + "-%"))
        conn.execute(
            "INSERT INTO trainspect.alerts (spool_uid, seq, run_uid, step, rule, level, message,"
            " action, state, wall_time) SELECT s.spool_uid, a.seq, s.run_uid, a.step, a.rule, "
            "a.level, a.message, a.action, a.state, a.wall_time FROM trainspect.alerts a "
            "JOIN trainspect.runs t ON t.run_uid = a.run_uid AND t.run_id = %s "
            "CROSS JOIN trainspect.spools s WHERE s.token = 'copy'", (run_id,))
    settle(url)


# ---- MLflow --------------------------------------------------------------------------------

def mlflow_side(url: str, work: Path, runs: int) -> dict:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = url.replace("postgresql://", "postgresql+psycopg://", 1)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("bench", artifact_location=str(work / "artifacts"))
    out = {}
    run = client.create_run(experiment, run_name="wide")
    rid = run.info.run_id
    client.log_batch(rid, params=[Param(f"param_{i}", str(i * 0.1)) for i in range(10)])
    now = int(time.time() * 1000)
    start = time.perf_counter()
    for first in range(0, STEPS, 1000):
        client.log_batch(rid, metrics=[Metric("metric_07", s * 1e-3 + 7, now, s)
                                       for s in range(first, first + 1000)])
    out["sync points/s"] = STEPS / (time.perf_counter() - start)
    client.log_batch(rid, metrics=[Metric("loss", 0.5, now, STEPS),
                                   Metric("text_acc", 0.9, now, STEPS)])
    client.set_terminated(rid)
    assert len(client.get_metric_history(rid, "metric_07")) == STEPS
    out["read 20k series (ms)"] = 1e3 * timed(lambda: client.get_metric_history(rid, "metric_07"),
                                              5)
    long = client.create_run(experiment, run_name="long").info.run_id
    copy_mlflow_million(url, long, now)
    settle(url)

    def downsample() -> list:
        history = client.get_metric_history(long, "loss")
        steps = np.fromiter((m.step for m in history), np.int64, len(history))
        vals = np.fromiter((m.value for m in history), np.float64, len(history))
        order = np.argsort(steps, kind="stable")
        return buckets_of(steps[order], vals[order], BUCKETS)

    out["downsample 1M -> 2k (ms)"] = 1e3 * timed(downsample, 1)
    clone_mlflow_runs(url, rid, runs - 2)
    listed = client.search_runs([experiment], max_results=50_000)
    assert len(listed) == runs, len(listed)
    out["list 10k runs (ms)"] = 1e3 * timed(
        lambda: client.search_runs([experiment], max_results=50_000), 3)
    out["UI run list 10k (ms)"] = mlflow_ui_list(uri, work, experiment, runs)
    import psycopg

    with psycopg.connect(url) as conn:
        out["server bytes"] = conn.execute(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'"
        ).fetchone()[0]
    return out


def copy_mlflow_million(url: str, run_uuid: str, now: int) -> None:
    """1,000,000 points of `loss` into MLflow's tables, as log_batch would store them."""
    import psycopg

    values = np.random.default_rng(0).standard_normal(MILLION)
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy("COPY metrics (key, value, timestamp, run_uuid, step, is_nan) "
                      "FROM STDIN") as copy:
            for step, v in enumerate(values.tolist()):
                copy.write_row(("loss", v, now, run_uuid, step, False))
        cur.execute("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
                    "VALUES ('loss', %s, %s, %s, false, %s)",
                    (float(values[-1]), now, MILLION - 1, run_uuid))


def clone_mlflow_runs(url: str, run_uuid: str, copies: int) -> None:
    """`copies` runs like `run_uuid` (row, params, tags, latest metrics), in SQL."""
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(
            "CREATE TEMP TABLE ids AS SELECT i, md5(%s || i::text) AS uuid "
            "FROM generate_series(1, %s) i", (run_uuid, copies))
        columns = [r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'runs' "
            "AND table_schema = 'public' ORDER BY ordinal_position")]
        picked = ", ".join("ids.uuid" if c == "run_uuid" else
                           "r.name || '-' || ids.i" if c == "name" else
                           "r.start_time - ids.i" if c == "start_time" else f"r.{c}"
                           for c in columns)
        conn.execute(f"INSERT INTO runs ({', '.join(columns)}) SELECT {picked} FROM runs r, ids "
                     "WHERE r.run_uuid = %s", (run_uuid,))
        for table in ("params", "tags", "latest_metrics"):
            cols = [r[0] for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "AND table_schema = 'public' ORDER BY ordinal_position", (table,))]
            picked = ", ".join("ids.uuid" if c == "run_uuid" else f"t.{c}" for c in cols)
            conn.execute(f"INSERT INTO {table} ({', '.join(cols)}) SELECT {picked} "
                         f"FROM {table} t, ids WHERE t.run_uuid = %s", (run_uuid,))
    settle(url)


def mlflow_ui_list(uri: str, work: Path, experiment: str, runs: int) -> float | None:
    """MLflow's tracking server (its FastAPI app under uvicorn, as `mlflow server` runs it,
    without the job runner) answering the UI's runs/search for every run."""
    from trainspect.store.server.cluster import free_port

    port = free_port()
    env = {**os.environ, "_MLFLOW_SERVER_FILE_STORE": uri,
           "_MLFLOW_SERVER_ARTIFACT_ROOT": str(work / "artifacts")}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--log-level", "warning", "mlflow.server.fastapi_app:app"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5):
                    break
            except OSError:
                time.sleep(1)
        else:
            return None
        body = json.dumps({"experiment_ids": [experiment], "max_results": 50_000}).encode()

        def search() -> None:
            request = urllib.request.Request(base + "/ajax-api/2.0/mlflow/runs/search", body,
                                             {"content-type": "application/json"})
            with urllib.request.urlopen(request, timeout=600) as response:
                assert len(json.loads(response.read())["runs"]) == runs

        return 1e3 * timed(search, 3)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)


# ---- the table -----------------------------------------------------------------------------

def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


def _number(key: str, value: float) -> str:
    return f"{value:,.0f}" if key in ("sync points/s", "server bytes") else f"{value:,.1f}"


def table(ours: dict, theirs: dict) -> str:
    """Markdown: each figure for both, MLflow's over ours (>1: trainspect ahead), the target."""
    rows = ["| metric | trainspect | MLflow | MLflow / trainspect | target | met |",
            "|---|---|---|---|---|---|"]
    for key, a in ours.items():
        b = theirs.get(key)
        higher_better = key == "sync points/s"
        ratio = "-" if b is None else f"{(a / b if higher_better else b / a):.1f}x"
        target = TARGETS.get(key)
        if target is None:
            goal = met = "-"
        else:
            goal = f"{'>=' if higher_better else '<='} {target:,}"
            met = "yes" if (a >= target if higher_better else a <= target) else "no"
        rows.append(f"| {key} | {_number(key, a)} | {'-' if b is None else _number(key, b)} | "
                    f"{ratio} | {goal} | {met} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a superuser URL (default: start a server)")
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args()
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    from trainspect.store.server.cluster import LocalCluster

    cluster = None if args.url else LocalCluster().start()
    admin = args.url or cluster.url
    suffix = secrets.token_hex(3)
    import psycopg

    with psycopg.connect(admin) as conn:
        server_version = conn.execute("SHOW server_version").fetchone()[0]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            ours = trainspect_side(database(admin, f"ts_bench_{suffix}"), work / "ts", args.runs)
            theirs = mlflow_side(database(admin, f"mlflow_bench_{suffix}"), work / "mlflow",
                                 args.runs)
    finally:
        if cluster is not None:
            cluster.remove()
    print(f"machine: {machine()}; PostgreSQL {server_version}; runs {args.runs:,}")
    print(table(ours, theirs))
    if args.out:
        Path(args.out).write_text(json.dumps({"trainspect": ours, "mlflow": theirs}, indent=2,
                                             default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
