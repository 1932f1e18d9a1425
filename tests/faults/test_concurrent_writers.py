"""Concurrent writers: a second process resuming a live run is refused at ts.init with
the holder's host and pid; a killed holder frees the run at once; runs started together
in the same second (even with the same random draw) each get their own file."""

from __future__ import annotations

import signal
import socket

import trainspect as ts
from tests.faults.procs import run, start

HOLDER = """
import sys, time
import trainspect as ts
r = ts.init(project="p", dir=sys.argv[1])
r.log({"a": 1.0}, step=1)
r.flush()
print(r.id, flush=True)
time.sleep(120)
"""

SECOND = """
import sys
import trainspect as ts
try:
    r = ts.init(project="p", dir=sys.argv[1], resume=sys.argv[2])
except ts.TrainspectError as err:
    print("refused:", err)
    raise SystemExit(3)
r.log({"a": 2.0}, step=2)
r.finish()
print("resumed")
"""


def test_a_second_process_is_refused_while_the_first_lives_then_resumes_after_kill(tmp_path):
    holder = start(HOLDER, tmp_path)
    try:
        run_id = holder.stdout.readline().strip()
        second = run(SECOND, tmp_path, run_id)
        assert second.returncode == 3, second.stderr
        assert f"pid {holder.pid} on host {socket.gethostname()}" in second.stdout
        holder.send_signal(signal.SIGKILL)  # crashes: its flock goes with it
        holder.wait(10)
        again = run(SECOND, tmp_path, run_id)
        assert again.returncode == 0 and "resumed" in again.stdout, again.stderr
    finally:
        holder.kill()
        holder.wait(10)
    view = ts.open(tmp_path).run(run_id)
    assert view.series("a") == [(1, 1.0), (2, 2.0)] and view.status == "finished"


MANY = """
import sys, time, types
import trainspect as ts
import trainspect.paths as paths
draws = iter(["000000", "000001"] * 3 + ["%06x" % (100 + int(sys.argv[2]))])
paths.secrets = types.SimpleNamespace(token_hex=lambda n: next(draws))
paths.time = types.SimpleNamespace(strftime=time.strftime, time=time.time,
                                   gmtime=lambda t=None: time.gmtime(1_700_000_000))
sys.stdin.readline()  # start together
r = ts.init(project="p", dir=sys.argv[1], name="job" + sys.argv[2])
r.log({"job": float(sys.argv[2])}, step=0)
r.finish()
print(r.id)
"""


def test_jobs_started_together_with_colliding_ids_each_get_their_own_run(tmp_path):
    import subprocess

    jobs = [start(MANY, tmp_path, i, stdin=subprocess.PIPE) for i in range(6)]
    for job in jobs:
        job.stdin.write("go\n")
        job.stdin.flush()
    ids = []
    for job in jobs:
        out, err = job.communicate(timeout=60)
        assert job.returncode == 0, err
        ids.append(out.strip())
    assert len(set(ids)) == 6  # two ids to draw from at first: most jobs had to redraw
    views = {v.id: v for v in ts.open(tmp_path).runs()}
    assert set(views) == set(ids)
    for i, run_id in enumerate(ids):
        assert views[run_id].name == f"job{i}"
        assert views[run_id].series("job") == [(0, float(i))]
