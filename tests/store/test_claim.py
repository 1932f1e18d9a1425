"""One writer per run: a second writer is refused at ts.init naming the holder, a crashed
holder never blocks a resume for long, and new runs never share a file."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import types

import pytest

import trainspect as ts
from trainspect.store.liveness import STALE_HEARTBEAT_S
from trainspect.store.lock import lock_path


def test_resuming_a_live_run_is_refused_naming_its_holder(runs):
    live = ts.init(project="p")
    live.log({"a": 1.0}, step=1)
    assert live.flush()
    with pytest.raises(ts.TrainspectError) as refused:
        ts.init(project="p", resume=live.id)
    message = str(refused.value)
    assert f"pid {os.getpid()}" in message and socket.gethostname() in message
    assert live.id in message
    live.log({"a": 2.0}, step=2)  # the holder is untouched
    live.finish()
    assert not lock_path(live.path).exists()  # a clean finish leaves no lock file
    again = ts.init(project="p", resume=live.id)  # free once it finished
    again.log({"a": 3.0}, step=3)
    again.finish()
    view = ts.open(runs).run(live.id)
    assert view.series("a") == [(1, 1.0), (2, 2.0), (3, 3.0)] and view.meta["attempt"] == 2


def _pretend_running_elsewhere(path, heartbeat_age_s: float) -> None:
    with sqlite3.connect(path) as conn:
        for key, value in (("status", "running"), ("host", "gpu-node-17"), ("pid", 4242),
                           ("heartbeat_at", time.time() - heartbeat_age_s)):
            conn.execute("UPDATE meta SET value = ? WHERE key = ?", (json.dumps(value), key))


def test_a_run_beating_on_another_host_is_refused_until_its_heartbeat_is_stale(runs):
    run = ts.init(project="p")
    run.finish()
    _pretend_running_elsewhere(run.path, heartbeat_age_s=3)
    with pytest.raises(ts.TrainspectError, match="gpu-node-17.*pid 4242"):
        ts.init(project="p", resume=run.id)
    _pretend_running_elsewhere(run.path, heartbeat_age_s=STALE_HEARTBEAT_S + 5)
    resumed = ts.init(project="p", resume=run.id)  # a crashed holder: stale, so taken over
    resumed.finish()
    assert ts.open(runs).run(run.id).meta["host"] == socket.gethostname()


def test_runs_started_in_the_same_second_with_the_same_draw_get_their_own_files(
        runs, monkeypatch):
    draws = iter(["abcdef", "abcdef", "abcdef", "123456"])
    monkeypatch.setattr("trainspect.paths.secrets.token_hex", lambda n: next(draws))
    same_second = types.SimpleNamespace(strftime=time.strftime, time=time.time,
                                        gmtime=lambda t=None: time.gmtime(1_700_000_000))
    monkeypatch.setattr("trainspect.paths.time", same_second)
    first = ts.init(project="p", name="first")
    second = ts.init(project="p", name="second")  # draws abcdef twice (taken), then 123456
    assert first.id != second.id and second.id.endswith("123456")
    first.finish()
    second.finish()
    names = {v.id: v.name for v in ts.open(runs).runs()}
    assert names == {first.id: "first", second.id: "second"}


def test_a_failed_init_leaves_no_file_behind(runs):
    with pytest.raises(ts.TrainspectError, match="alert_rules"):
        ts.init(project="p", alert_rules="not a list")
    assert not any(runs.rglob("*.db*"))


def test_the_last_word_fits_the_lock_file_whatever_the_meta(tmp_path):
    from trainspect.store.lock import LOCK_BYTES, WriterLock, read_lock

    lock = WriterLock.acquire(tmp_path / "r.db")
    assert lock.leave_word({"status": "finished", "config": {"x": "y" * 10_000},
                            "store_error": "e" * 5_000, "dropped_points": 3})
    word = read_lock(lock.path)
    assert (word["status"], word["dropped_points"], word["pid"]) == ("finished", 3, os.getpid())
    assert "config" not in word and lock.path.stat().st_size == LOCK_BYTES
    lock.release(keep=True)
    assert lock.path.exists()
    WriterLock.acquire(tmp_path / "r.db").release()  # released: free for the next writer
    assert not lock.path.exists()
