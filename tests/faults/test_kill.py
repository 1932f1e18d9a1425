"""kill -9 while the writer is busy: the file stays whole, everything flushed before the
kill is there, the run reads as crashed, and it can be resumed at once (the kernel
dropped its lock), going on from where it was."""

from __future__ import annotations

import signal
import sqlite3
import time

import trainspect as ts
from tests.faults.procs import run, start

BUSY = """
import sys
import trainspect as ts
r = ts.init(project="p", dir=sys.argv[1], log_every=10)
for step in range(2000):
    r.log({f"k{i}": float(step) for i in range(20)}, step=step)
assert r.flush()
print(r.id, flush=True)
step = 2000
while True:  # the writer commits and merges chunks while this goes on
    r.log({f"k{i}": float(step) for i in range(20)}, step=step)
    if step % 500 == 0:
        r.flush()
    step += 1
"""

RESUME = """
import sys
import trainspect as ts
r = ts.init(project="p", dir=sys.argv[1], resume=sys.argv[2])
r.log({"k0": -1.0}, step=10**6)
r.finish()
"""


def test_kill_9_mid_write_keeps_the_file_whole_and_resumable(tmp_path):
    for delay_s in (0.05, 0.4):  # early and later in the burst
        proc = start(BUSY, tmp_path)
        run_id = proc.stdout.readline().strip()
        time.sleep(delay_s)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        view = ts.open(tmp_path).run(run_id)
        with sqlite3.connect(f"file:{view.path}?mode=ro", uri=True) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert view.status == "crashed"
        for key in ("k0", "k19"):
            points = view.series(key)
            assert points[:2000] == [(s, float(s)) for s in range(2000)]
            assert points == [(s, float(s)) for s in range(len(points))]  # no holes, no junk
        resumed = run(RESUME, tmp_path, run_id)
        assert resumed.returncode == 0, resumed.stderr
        view = ts.open(tmp_path).run(run_id)
        assert view.status == "finished" and view.meta["attempt"] == 2
        assert view.series("k0")[-1] == (10**6, -1.0)
