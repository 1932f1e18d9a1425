"""Whole processes: killed trainers lose nothing flushed, signals and exit finish the run,
and a reader in another process reads while the writer writes, never locked out."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time

import trainspect as ts

TRAINER = textwrap.dedent("""
    import sys, time
    import trainspect as ts
    run = ts.init(project="p", dir=sys.argv[1], log_every=10)
    for step in range(1000):
        run.log({"a": float(step), "b": step * 0.5}, step=step)
    run.flush()
    print(run.id, flush=True)
    step = 1000
    while True:  # keeps logging, unflushed, until killed
        run.log({"a": float(step)}, step=step)
        step += 1
        time.sleep(0.001)
""")


def _start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigkill_loses_nothing_flushed_and_shows_crashed(tmp_path):
    proc = _start(TRAINER, str(tmp_path))
    run_id = proc.stdout.readline().strip()
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    view = ts.open(tmp_path).run(run_id)
    with sqlite3.connect(view.path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    a = view.series("a")
    assert a[:1000] == [(s, float(s)) for s in range(1000)]
    assert view.series("b") == [(s, s * 0.5) for s in range(1000)]
    assert view.status == "crashed"  # its pid is gone on this host


def test_sigterm_finishes_the_run_and_terminates(tmp_path):
    proc = _start(TRAINER, str(tmp_path))
    run_id = proc.stdout.readline().strip()
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == -signal.SIGTERM  # the process still dies of SIGTERM
    view = ts.open(tmp_path).run(run_id)
    assert view.status == "finished" and view.meta["exit_signal"] == "SIGTERM"
    a = view.series("a")
    assert len(a) > 1000 and a == [(s, float(s)) for s in range(len(a))]  # unflushed too


def test_sigint_finishes_the_run_and_raises_keyboard_interrupt(tmp_path):
    proc = _start(TRAINER, str(tmp_path))
    run_id = proc.stdout.readline().strip()
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    proc.wait(20)
    assert "KeyboardInterrupt" in proc.stderr.read()
    view = ts.open(tmp_path).run(run_id)
    assert view.status == "finished" and view.meta["exit_signal"] == "SIGINT"


def test_interpreter_exit_finishes_an_unfinished_run(tmp_path):
    code = ("import sys, trainspect as ts\n"
            "run = ts.init(project='p', dir=sys.argv[1])\n"
            "run.log({'a': 1.0}, step=5)\nprint(run.id)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, timeout=60, check=True)
    view = ts.open(tmp_path).run(out.stdout.strip())
    assert view.status == "finished" and view.series("a") == [(5, 1.0)]


READER = textwrap.dedent("""
    import sys, time
    import trainspect as ts
    view = ts.open(sys.argv[1]).run(sys.argv[2])
    reads, most = 0, 0
    end = time.time() + float(sys.argv[3])
    while time.time() < end:
        most = max(most, len(view.series("k0")))
        view.rows_after(0)
        view.refresh()
        reads += 1
    print(reads, most)
""")


def test_reader_in_another_process_is_never_locked_out(runs):
    run = ts.init(project="p", log_every=10)
    run.log({"k0": 0.0}, step=0)
    run.flush()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(runs), run.id, "2.5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    start, step = time.time(), 1
    while time.time() - start < 3.0:  # 10 keys x 1000 steps/s = 10,000 points/s
        run.log({f"k{i}": float(step) for i in range(10)}, step=step)
        step += 1
        time.sleep(max(0.0, start + step / 1000 - time.time()))
    out, err = reader.communicate(timeout=30)
    run.finish()
    assert reader.returncode == 0, err
    assert "locked" not in err
    reads, most = map(int, out.split())
    assert reads > 20 and most > 100  # it read many times, and saw the series grow
    assert len(ts.open(runs).run(run.id).series("k0")) == step


def test_heartbeat_decides_crashed():
    from trainspect.store.reader import STALE_HEARTBEAT_S, derive_status

    now = time.time()
    alive = {"status": "running", "heartbeat_at": now - 1, "host": "elsewhere", "pid": 1}
    assert derive_status(alive, now) == "running"
    stale = dict(alive, heartbeat_at=now - STALE_HEARTBEAT_S - 1)
    assert derive_status(stale, now) == "crashed"
    assert derive_status(dict(stale, status="finished"), now) == "finished"
    here_dead = dict(alive, host=socket.gethostname(), pid=2**22 + 12345)
    assert derive_status(here_dead, now) == "crashed"
