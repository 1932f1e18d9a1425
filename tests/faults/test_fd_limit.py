"""A thousand runs under `ulimit -n 1024`: every command lists them all and the dashboard
answers, because read connections (three descriptors each with WAL) are kept under a
limit and the least recently used closes first."""

from __future__ import annotations

import shutil
import sqlite3

import pytest

from tests.faults.files import good_run
from tests.faults.procs import run

N_RUNS = 1000

LIMITED = """
import json, resource, sys, urllib.request
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
from trainspect.cli import main
root = sys.argv[1]
from trainspect.dashboard.server import start
server = start(root, port=0)
try:
    with urllib.request.urlopen(server.url + "api/runs", timeout=60) as r:
        print("api", r.status, len(json.loads(r.read())["runs"]))
    for i in (0, 500, 999):
        with urllib.request.urlopen(server.url + f"api/runs/p/r{i:04d}/panels/loss",
                                    timeout=60) as r:
            print("panel", r.status)
finally:
    server.stop()
sys.stdout.flush()
raise SystemExit(main(["ls", "--dir", root]))
"""


@pytest.fixture(scope="module")
def thousand_runs(tmp_path_factory):
    """1,000 small WAL-mode run files: copies of one run, each under its own id."""
    root = tmp_path_factory.mktemp("many")
    template = root / "p" / (good_run(root, "template", steps=20) + ".db")
    with sqlite3.connect(template) as conn:  # small pages: 1,000 copies stay small
        conn.execute("PRAGMA journal_mode = DELETE")
        conn.execute("DELETE FROM meta WHERE key = 'id'")  # the id is then the file's name
    conn = sqlite3.connect(template, isolation_level=None)
    conn.execute("PRAGMA page_size = 4096")
    conn.execute("VACUUM")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    for i in range(N_RUNS):
        shutil.copyfile(template, root / "p" / f"r{i:04d}.db")
    template.unlink()
    return root


def test_a_thousand_runs_list_fully_under_ulimit_1024(thousand_runs):
    out = run(LIMITED, thousand_runs, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == f"api 200 {N_RUNS}", out.stderr[-3000:]
    assert lines[1:4] == ["panel 200"] * 3
    listed = [line for line in lines[4:] if line.startswith("r")]
    assert len(listed) == N_RUNS, out.stderr[-2000:]
    assert "unreadable" not in out.stderr and "Too many open files" not in out.stderr
