"""The sync: every point of the spool on the server exactly once, whatever the writer merged
and whenever a push was interrupted; `trainspect sync` for existing runs."""

from __future__ import annotations

import sqlite3
import threading

import numpy as np
import pytest

import trainspect as ts
from trainspect.cli import main
from trainspect.errors import TrainspectError
from trainspect.store.chunks import decode_steps, pack_many
from trainspect.store.server import push, spool
from trainspect.store.server.schema import SCHEMA_VERSION, current_version, migrate
from trainspect.store.server.sync import SpoolSync, sync_file


def local_chunks(path, key="x") -> list[tuple[int, int, int]]:
    """(seq, level, n) of the key's chunks in the run file."""
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT c.seq, c.level, c.n FROM scalar_chunks c JOIN keys k ON k.id = c.key_id "
            "WHERE k.name = ? ORDER BY c.seq", (key,)).fetchall()


def server_chunks(url, key="x") -> list[tuple[int, int, int]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT c.seq, c.level, c.n FROM trainspect.chunks c JOIN trainspect.keys k "
            "ON k.key_uid = c.key_uid WHERE k.name = %s ORDER BY c.seq", (key,)).fetchall()


def server_points(url, key="x") -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT COALESCE(sum(b.n), 0) FROM trainspect.blocks b JOIN trainspect.keys k "
            "ON k.key_uid = b.key_uid WHERE k.name = %s", (key,)).fetchone()[0]


def merge_like_the_writer(path, seqs: list[int]) -> None:
    """Fold chunks `seqs` into one, as the writer does: the largest seq, one level up."""
    with sqlite3.connect(path) as conn:
        marks = ",".join("?" * len(seqs))
        parts = conn.execute(
            f"SELECT seq, key_id, attempt, level, n, step_min, step_max, steps, vals, times "
            f"FROM scalar_chunks WHERE seq IN ({marks}) ORDER BY seq", seqs).fetchall()
        steps = np.concatenate([decode_steps(p[7], p[4], p[5], p[6]) for p in parts])
        vals = np.concatenate([np.frombuffer(p[8], "<f8") for p in parts])
        times = np.concatenate([np.frombuffer(p[9], "<f8") for p in parts])
        c = pack_many([(steps, vals, times)])
        conn.execute(f"DELETE FROM scalar_chunks WHERE seq IN ({marks})", seqs)
        conn.execute(
            "INSERT INTO scalar_chunks (seq, key_id, attempt, level, n, step_min, step_max, "
            "vmin, vmax, vlast, steps, vals, times) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (parts[-1][0], parts[0][1], parts[0][2], max(p[3] for p in parts) + 1, c.n[0],
             c.step_min[0], c.step_max[0], c.vmin[0], c.vmax[0], c.vlast[0], c.steps[0],
             c.vals[0], c.times[0]))


def write_chunks(run, start: int, count: int, per_chunk: int = 5) -> int:
    """`count` writes of `per_chunk` points of `x` (one chunk each); returns the next step."""
    step = start
    for _ in range(count):
        for _ in range(per_chunk):
            run.log({"x": float(step) * 0.5}, step=step)
            step += 1
        assert run.flush()
    return step


def test_merges_before_and_after_a_push_never_duplicate_or_lose_points(tmp_path, pg_url):
    # Merging by hand (as the writer does) lets the test choose when merges happen; the
    # writer itself merges after 16 writes, more than this test makes.
    run = ts.init(project="p", dir=tmp_path, alerts=False)
    syncer = SpoolSync(run.path, pg_url)
    step = write_chunks(run, 0, 6)
    syncer.push()
    seqs = [s for s, _, _ in local_chunks(run.path)]
    # (a) every part already on the server, then merged: the merged chunk is not new.
    merge_like_the_writer(run.path, seqs[:3])
    assert syncer.push().rows == 0
    assert server_points(pg_url) == 30 and len(server_chunks(pg_url)) == 6
    # (b) parts on the server merged with parts that are not: the server takes the merge.
    step = write_chunks(run, step, 3)
    seqs = [s for s, _, _ in local_chunks(run.path)]
    merge_like_the_writer(run.path, seqs[3:])  # 3 pushed parts + 3 new ones
    syncer.push()
    assert server_chunks(pg_url) == local_chunks(run.path)
    assert server_points(pg_url) == 45
    # (c) a merge of a merge the server never saw (it kept (a)'s parts) and new chunks.
    step = write_chunks(run, step, 2)
    merge_like_the_writer(run.path, [s for s, _, _ in local_chunks(run.path)])
    syncer.push()
    assert server_chunks(pg_url) == local_chunks(run.path) == [(local_chunks(run.path)[0])]
    assert server_points(pg_url) == 55
    run.finish()
    syncer.push()
    syncer.close()
    view = ts.open(pg_url).run(run.id)
    assert view.series("x") == [(s, s * 0.5) for s in range(step)]
    assert len(view.history("x")) == step


def test_live_sync_through_the_writers_own_merges(tmp_path, pg_url):
    """The real writer merging every 16 writes while the live sync pushes at random times."""
    with ts.init(project="p", dir=tmp_path, store=pg_url, alerts=False) as run:
        step = 0
        for i in range(40):
            step = write_chunks(run, step, 9, per_chunk=3)
            if i % 3 == 0:
                run.sync.wait(30)
    local = ts.open(tmp_path).run(run.id)
    view = ts.open(pg_url).run(run.id)
    assert max(level for _, level, _ in local_chunks(run.path)) >= 2  # merges did happen
    assert view.series("x") == local.series("x") == [(s, s * 0.5) for s in range(step)]
    assert server_points(pg_url) == step  # never a point twice
    assert server_chunks(pg_url) != [] and view.status == "finished"


def test_an_interrupted_sync_resumes_where_it_stopped(tmp_path, pg_url, monkeypatch):
    with ts.init(project="p", dir=tmp_path, alerts=False) as run:
        write_chunks(run, 0, 30, per_chunk=10)
        run.alert("an alert", step=3)
    monkeypatch.setattr(spool, "MAX_BATCH_POINTS", 40)  # several batches
    calls = {"n": 0}
    real = push.insert_records

    def fail_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("connection lost mid-batch")
        return real(*args, **kwargs)

    monkeypatch.setattr(push, "insert_records", fail_third)
    with pytest.raises(RuntimeError):
        sync_file(run.path, pg_url)
    half = server_points(pg_url)
    assert 0 < half < 300  # two batches landed, the third was rolled back whole
    done = sync_file(run.path, pg_url)
    assert done.points == 300 - half
    again = sync_file(run.path, pg_url)
    assert again.rows == 0 and again.points == 0  # idempotent
    view = ts.open(pg_url).run(run.id)
    assert view.series("x") == [(s, s * 0.5) for s in range(300)]
    assert [a["message"] for a in view.alerts()] == ["an alert"]


def test_trainspect_sync_uploads_a_directory(tmp_path, pg_url, capsys):
    ids = []
    for project in ("a", "a", "b"):
        with ts.init(project=project, dir=tmp_path, alerts=False, config={"p": project}) as run:
            write_chunks(run, 0, 4)
        ids.append(run.id)
    assert main(["sync", str(tmp_path), "--to", pg_url]) == 0
    out = capsys.readouterr().out
    assert "synced 3 of 3 runs" in out and "60 points" in out
    reader = ts.open(pg_url)
    assert sorted(v.id for v in reader.runs()) == sorted(ids)
    assert reader.run(f"b/{ids[2]}").series("x") == [(s, s * 0.5) for s in range(20)]
    assert main(["sync", str(tmp_path), "--to", pg_url]) == 0
    assert "0 new rows (0 points)" in capsys.readouterr().out
    assert main(["sync", str(tmp_path / "missing"), "--to", pg_url]) == 2
    assert "no runs directory" in capsys.readouterr().err
    assert main(["sync", str(tmp_path), "--to", "mysql://x"]) == 2
    assert "postgresql://" in capsys.readouterr().err


def test_schema_is_versioned_and_migrated_once(pg_url):
    from trainspect.store.server.connect import connect

    with pytest.raises(TrainspectError, match="no trainspect store yet"):
        ts.open(pg_url)
    errors = []

    def migrate_once():
        try:
            with connect(pg_url, "test") as conn:
                migrate(conn, "test")
        except Exception as err:  # collected: the assertion below names it
            errors.append(err)

    threads = [threading.Thread(target=migrate_once) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with connect(pg_url, "test") as conn:
        assert current_version(conn) == SCHEMA_VERSION
        assert conn.execute("SELECT count(*) FROM trainspect.schema_version").fetchone()[0] == (
            SCHEMA_VERSION)
        conn.execute("INSERT INTO trainspect.schema_version (version) VALUES (%s)",
                     (SCHEMA_VERSION + 1,))
    with pytest.raises(TrainspectError, match="newer than this trainspect"):
        ts.open(pg_url)


def test_store_urls_are_checked_and_the_environment_is_used(tmp_path, pg_url, monkeypatch):
    with pytest.raises(TrainspectError, match="`store`"):
        ts.init(project="p", dir=tmp_path, store="sqlite:///x.db")
    monkeypatch.setenv("TRAINSPECT_STORE", "http://example.com")
    with pytest.raises(TrainspectError, match=r"\$TRAINSPECT_STORE"):
        ts.init(project="p", dir=tmp_path)
    monkeypatch.setenv("TRAINSPECT_STORE", pg_url)
    with ts.init(project="p", dir=tmp_path, alerts=False) as run:
        run.log({"x": 1.0}, step=1)
    assert ts.open(pg_url).run(run.id).series("x") == [(1, 1.0)]


def test_runs_are_searchable_by_project_name_tag_config_and_status(tmp_path, pg_url):
    specs = [("nlp", "bert-base", ["baseline"], {"lr": 0.001, "opt": "adam"}, "finished"),
             ("nlp", "bert-large", ["big"], {"lr": 0.01, "opt": "adam"}, "failed"),
             ("vision", "vit-small", ["baseline", "big"], {"lr": 0.001, "opt": "sgd"}, None)]
    ids = {}
    for project, name, tags, config, status in specs:
        run = ts.init(project=project, name=name, dir=tmp_path, store=pg_url, alerts=False,
                      config=config)
        run.set_meta(tags=tags)
        run.log({"x": 1.0}, step=1)
        if status is None:
            run.flush()
            assert run.sync.wait(30)
        else:
            run.finish(status)
        ids[name] = run
    reader = ts.open(pg_url)

    def names(**filters) -> list[str]:
        return sorted(v.name for v in reader.runs(**filters))

    assert names(project="nlp") == ["bert-base", "bert-large"]
    assert names(name="BERT") == ["bert-base", "bert-large"]
    assert names(name="vit") == ["vit-small"]
    assert names(tag="baseline") == ["bert-base", "vit-small"]
    assert names(tag="big", project="vision") == ["vit-small"]
    assert names(config={"lr": 0.001}) == ["bert-base", "vit-small"]
    assert names(config={"lr": 0.001, "opt": "adam"}) == ["bert-base"]
    assert names(status="finished") == ["bert-base"]
    assert names(status="failed") == ["bert-large"]
    assert names(status="running") == ["vit-small"]
    assert names(status="crashed") == []
    assert reader.run("vit-small").tags == ["baseline", "big"]
    with pytest.raises(TrainspectError, match="`status`"):
        reader.runs(status="done")
    ids["vit-small"].finish()


def test_the_run_list_and_one_series_stay_on_indexes_as_tables_grow(tmp_path, pg_url):
    """With 20,000 runs and 200,000 blocks of other metrics, every hot query uses an index."""
    import psycopg

    with ts.init(project="p", dir=tmp_path, store=pg_url, alerts=False) as run:
        write_chunks(run, 0, 3)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("INSERT INTO trainspect.runs (project, run_id, name, started_at) "
                     "SELECT 'bulk', 'r' || i, 'n' || i, i FROM generate_series(1, 20000) i")
        conn.execute("INSERT INTO trainspect.keys (run_uid, name) SELECT run_uid, 'k' "
                     "FROM trainspect.runs WHERE project = 'bulk'")
        conn.execute(
            "INSERT INTO trainspect.blocks (key_uid, attempt, spool_uid, seq, block, run_uid, n,"
            " step_first, stride, vals, sub_min, sub_max) SELECT k.key_uid, 1, 0, s, 0, "
            "k.run_uid, 1, s, 1, ARRAY[1.0], ARRAY[1.0], ARRAY[1.0] FROM trainspect.keys k, "
            "generate_series(1, 10) s WHERE k.name = 'k'")
        conn.execute("ANALYZE")
        uid = conn.execute("SELECT run_uid FROM trainspect.runs WHERE run_id = %s",
                           (run.id,)).fetchone()[0]

        def plan(sql: str, args: tuple) -> str:
            return "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, args).fetchall())

        from trainspect.store.server import queries

        assert "runs_started" in plan(f"SELECT {queries.RUN_COLUMNS} FROM trainspect.runs "
                                      "ORDER BY started_at DESC NULLS LAST, run_id DESC "
                                      "LIMIT 50", ())
        assert "runs_project" in plan(f"SELECT {queries.RUN_COLUMNS} FROM trainspect.runs "
                                      "WHERE project = %s ORDER BY started_at DESC NULLS LAST, "
                                      "run_id DESC", ("p",))
        series = plan(queries.BLOCKS, (uid, "x"))
        assert "blocks_pkey" in series and "Seq Scan on blocks" not in series
        assert "blocks_ord" in plan(queries.BLOCKS_AFTER, (uid, 0))
        lookup = plan("SELECT run_uid FROM trainspect.runs WHERE project = %s AND run_id = %s",
                      ("p", run.id))
        assert "Index" in lookup and "Seq Scan" not in lookup


@pytest.mark.parametrize("spacing", ["even", "uneven"])
def test_server_downsampling_matches_a_plain_loop_on_a_long_series(tmp_path, pg_url, spacing):
    """Long enough for whole blocks, whole sub-blocks and edges, with NaN runs and inf."""
    from tests.contract.test_reader_contract import reference_buckets, same

    rng = np.random.default_rng(7)
    n = 40_000
    steps = (np.arange(n) * 3 if spacing == "even" else np.cumsum(rng.integers(1, 5, n)))
    vals = rng.standard_normal(n)
    vals[640:704] = np.nan  # a whole block of NaN (blocks are 64 points from the start)
    vals[1000:1013] = np.nan  # a sub-block and a half
    vals[20_000] = np.inf
    vals[30_001] = -np.inf
    with ts.init(project="p", dir=tmp_path, store=pg_url, alerts=False) as run:
        for i, (s, v) in enumerate(zip(steps.tolist(), vals.tolist())):
            run.log({"v": v}, step=s)
            if i % 7_000 == 0:
                run.flush()
    view = ts.open(pg_url).run(run.id)
    for buckets in (1, 13, 100, 997, 2_000, 39_999):
        got = view.series("v", buckets=buckets)
        want = reference_buckets(steps.tolist(), vals.tolist(), buckets)
        assert len(got) == len(want), buckets
        assert all(g[0] == w[0] and same(g[1], w[1]) and same(g[2], w[2])
                   for g, w in zip(got, want)), buckets


def test_roles_from_docs_team_md_a_writer_syncs_and_a_reader_only_reads(tmp_path, pg_url):
    """The grants docs/team.md gives: the admin creates the schema, a writer role syncs
    without DDL rights, a reader role reads (the dashboard's role) and cannot write."""
    import psycopg

    db = pg_url.rsplit("/", 1)[1]
    w, r = f"w_{db}", f"r_{db}"  # roles are per cluster: names of this test's own
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {w} LOGIN")
        conn.execute(f"CREATE ROLE {r} LOGIN")
        conn.execute(f'GRANT CONNECT ON DATABASE "{db}" TO {w}, {r}')
    with ts.init(project="p", dir=tmp_path, store=pg_url, alerts=False) as first:  # admin
        first.log({"x": 1.0}, step=1)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"GRANT USAGE ON SCHEMA trainspect TO {w}, {r}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA trainspect TO {r}")
        conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA trainspect "
                     f"TO {w}")
        conn.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA trainspect TO {w}")
    base = pg_url.split("://", 1)[1].split("@", 1)[1]
    writer, reader = f"postgresql://{w}@{base}", f"postgresql://{r}@{base}"
    with ts.init(project="p", dir=tmp_path, store=writer, alerts=False) as run:
        for step in range(100):
            run.log({"x": step * 0.5}, step=step)
    assert run.sync.wait(1) and ts.open(reader).run(run.id).series("x")[-1] == (99, 49.5)
    with ts.init(project="p", dir=tmp_path, alerts=False) as local_only:
        local_only.log({"x": 2.0}, step=1)
    assert main(["sync", str(tmp_path), "--to", reader]) == 1  # refused, named, not a crash
    with pytest.raises(psycopg.errors.InsufficientPrivilege), psycopg.connect(reader) as conn:
        conn.execute("DELETE FROM trainspect.runs")


def test_a_replaced_run_file_is_refused_not_silently_skipped(tmp_path, pg_url):
    with ts.init(project="p", dir=tmp_path, alerts=False) as run:
        write_chunks(run, 0, 5)
    sync_file(run.path, pg_url)
    with sqlite3.connect(run.path) as conn:  # a file under the same name, with fewer rows
        conn.execute("DELETE FROM scalar_chunks WHERE seq > (SELECT min(seq) FROM scalar_chunks)")
    with pytest.raises(TrainspectError, match="was replaced"):
        sync_file(run.path, pg_url)
