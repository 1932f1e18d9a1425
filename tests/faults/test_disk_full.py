"""A disk that fills, and is still full at finish: training never sees an error, what
could not be written is counted, and the run's end (status, counts) is still recorded,
in the run file when a small write fits, else as its lock file's last word.

The real fault comes from RLIMIT_FSIZE in a subprocess (no root, no special file
system): every file the process writes stops growing at the limit, as on a full disk.
"""

from __future__ import annotations

import logging
import sqlite3

import trainspect as ts
from tests.faults.procs import run
from trainspect.cli import main
from trainspect.store.lock import lock_path

FULL_AT_FINISH = """
import os, resource, signal, sys
import trainspect as ts
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead
r = ts.init(project="p", dir=sys.argv[1], name="filled")
for step in range(100):
    r.log({"a": float(step)}, step=step)
assert r.flush()
biggest = max(os.path.getsize(str(r.path) + s) for s in ("", "-wal"))
resource.setrlimit(resource.RLIMIT_FSIZE, (biggest, resource.RLIM_INFINITY))  # the disk is full
for step in range(100, 1100):
    r.log({"a": float(step), "b": 1.0}, step=step)
print("flush", r.flush(timeout=5), flush=True)
r.finish()
print(r.id)
"""


def test_disk_full_until_finish_counts_the_loss_and_records_the_end(tmp_path):
    out = run(FULL_AT_FINISH, tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]  # training never saw an error
    lines = out.stdout.split()
    assert lines[:2] == ["flush", "False"]
    view = ts.open(tmp_path).run(lines[2])
    assert view.status == "finished"  # not left running
    assert view.meta["dropped_points"] == 2000 and view.meta["store_error"]
    assert view.series("a") == [(s, float(s)) for s in range(100)]  # nothing before is lost
    assert "2,000 points" in out.stderr and "lost" in out.stderr


def test_when_not_even_the_status_fits_the_lock_file_keeps_the_last_word(runs, caplog,
                                                                            capsys):
    run_ = ts.init(project="p")
    run_.log({"a": 0.0}, step=0)
    assert run_.flush()
    writer = run_._writer

    class FullDisk:  # every write and checkpoint fails, as on a disk with no block left
        def __getattr__(self, name):
            return getattr(conn, name)

        def execute(self, *args):
            raise sqlite3.OperationalError("database or disk is full")

        executemany = execute

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    conn = writer._conn
    writer._committer.conn = FullDisk()
    writer._conn = FullDisk()
    with caplog.at_level(logging.ERROR, logger="trainspect"):
        for step in range(1, 51):
            run_.log({"a": float(step)}, step=step)
        assert run_.flush(timeout=5) is False
        run_.finish()
    conn.close()
    assert lock_path(run_.path).exists()  # kept: it holds the last word
    view = ts.open(runs).run(run_.id)
    assert view.status == "finished" and view.meta["dropped_points"] == 50
    assert view.series("a") == [(0, 0.0)]
    assert any("50 points" in r.getMessage() and str(lock_path(run_.path)) in r.getMessage()
               for r in caplog.records)
    assert main(["show", run_.id, "--dir", str(runs)]) == 0
    assert "dropped_points=50" in capsys.readouterr().out
    resumed = ts.init(project="p", resume=run_.id)  # the last word never blocks a resume
    resumed.finish()
    assert not lock_path(run_.path).exists()
    assert ts.open(runs).run(run_.id).meta["attempt"] == 2
