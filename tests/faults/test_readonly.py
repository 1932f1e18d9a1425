"""Read-only places: a runs folder where nothing can be created, a folder that turns
read-only while a run writes, a run file that cannot be written. Training goes on
in each; the log says once what went wrong; what can be recorded is."""

from __future__ import annotations

import os
import stat

import pytest

import trainspect as ts
from tests.faults.procs import run, start, unprivileged

PREFIX = unprivileged()
pytestmark = pytest.mark.skipif(
    PREFIX is None, reason="running as root without user namespaces: root ignores "
                           "file permissions, so a read-only folder cannot be planted")

TRAIN = """
import sys
import trainspect as ts
r = ts.init(project="p", dir=sys.argv[1], name="ro", **({"resume": sys.argv[2]}
                                                         if len(sys.argv) > 2 else {}))
for step in range(50):
    r.log({"a": float(step)}, step=step)
print("flush", r.flush(timeout=5), flush=True)
r.finish()
print("done", r.id)
"""


def read_only(path) -> None:
    path.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH
               | stat.S_IXOTH)


def test_a_read_only_runs_folder_records_nothing_and_says_so_once(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    read_only(root)
    try:
        out = run(TRAIN, root, prefix=PREFIX)
    finally:
        root.chmod(0o755)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[:2] == ["flush", "False"] and "done" in out.stdout
    errors = [line for line in out.stderr.splitlines() if "cannot open the run store" in line]
    assert len(errors) == 1 and str(root) in errors[0] and "Training goes on" in errors[0]
    assert not any(root.rglob("*.db"))


def test_resuming_in_a_folder_turned_read_only_records_nothing_and_says_so(tmp_path):
    first = run(TRAIN, tmp_path, prefix=PREFIX)
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.split()[-1]
    read_only(tmp_path / "p")
    try:
        out = run(TRAIN, tmp_path, run_id, prefix=PREFIX)
    finally:
        (tmp_path / "p").chmod(0o755)
    assert out.returncode == 0, out.stderr
    assert "flush False" in out.stdout and out.stderr.count("cannot open the run store") == 1
    assert ts.open(tmp_path).run(run_id).meta["attempt"] == 1  # untouched


HELD = """
import sys, time
import trainspect as ts
r = ts.init(project="p", dir=sys.argv[1])
r.log({"a": 0.0}, step=0)
r.flush()
print(r.id, flush=True)
sys.stdin.readline()  # the folder turns read-only now
for step in range(1, 200):
    r.log({"a": float(step)}, step=step)
print("flush", r.flush(timeout=5), flush=True)
r.finish()
"""


def test_a_folder_turning_read_only_mid_run_loses_nothing(tmp_path):
    """The run's files are open already: SQLite goes on writing through them."""
    import subprocess

    proc = start(HELD, tmp_path, prefix=PREFIX, stdin=subprocess.PIPE)
    try:
        run_id = proc.stdout.readline().strip()
        read_only(tmp_path / "p")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        (tmp_path / "p").chmod(0o755)
    assert proc.returncode == 0, err
    assert "flush True" in out
    view = ts.open(tmp_path).run(run_id)
    assert view.series("a") == [(s, float(s)) for s in range(200)]
    assert view.status == "finished"


def test_a_run_file_that_cannot_be_written_ends_with_its_last_word(tmp_path):
    first = run(TRAIN, tmp_path, prefix=PREFIX)
    run_id = first.stdout.split()[-1]
    path = tmp_path / "p" / f"{run_id}.db"
    for file in tmp_path.glob("p/*.db*"):
        os.chmod(file, 0o444)
    out = run(TRAIN, tmp_path, run_id, prefix=PREFIX)
    assert out.returncode == 0, out.stderr
    assert "flush False" in out.stdout
    assert out.stderr.count("readonly") >= 1 and "50 points" in out.stderr
    view = ts.open(tmp_path).run(run_id)
    assert view.series("a") == [(s, float(s)) for s in range(50)]  # the first attempt's
    assert view.status == "finished" and view.meta["dropped_points"] == 50
    assert path.exists()
