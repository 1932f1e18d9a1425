"""The writer's lock file, `<run>.db-lock`: who writes a run, and how it ended if the
store could not say.

The writer holds an exclusive flock on it for as long as it writes. The kernel drops
the flock when the process dies, however it dies, so a crashed run never blocks a
resume on this host. The file holds the holder as JSON ({host, pid, since}), padded
to a fixed size that is written once, when the lock is taken: a refusal names the
holder, and a writer that cannot write the run file at the end (a full disk) can
still leave its last word here by overwriting those bytes in place (no new disk
blocks needed). A clean finish deletes the file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.store.liveness import this_host

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; the heartbeat check remains
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("trainspect.store")

LOCK_SUFFIX = "-lock"
LOCK_BYTES = 4096  # room for the holder and the last word; written whole, then in place
# What a last word holds: how the run ended, and what the store lost.
LAST_WORD = ("id", "status", "attempt", "started_at", "ended_at", "exit_signal", "error",
             "dropped_points", "dropped_records", "lost_points", "lost_records",
             "file_recreated", "store_error", "rejected_values")


def lock_path(run_file: Path) -> Path:
    return run_file.with_name(run_file.name + LOCK_SUFFIX)


def read_lock(path: Path) -> dict[str, Any]:
    """The lock file's JSON ({} when absent, empty or unreadable)."""
    try:
        text = path.read_bytes().decode("utf-8", "replace").strip("\0 \n")
        value = json.loads(text) if text else {}
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


class Busy(Exception):
    """Another process holds the lock: `holder` is what its lock file says."""

    def __init__(self, holder: dict[str, Any]) -> None:
        super().__init__(describe_holder(holder))
        self.holder = holder


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder.get("pid"):
        return "another process (it has not written its name yet)"
    since = holder.get("since")
    when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(
        since, (int, float)) else ""
    return f"pid {holder['pid']} on host {holder.get('host', '?')}{when}"


class WriterLock:
    """An exclusive flock on a run's lock file, held while the run is written."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run_file: Path) -> WriterLock:
        """Take the run's lock; Busy if another process holds it, OSError if the folder
        cannot hold the file."""
        path = lock_path(run_file)
        for _ in range(5):  # the file we lock must still be the one at the path
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _same_file(fd, path):
                    lock = cls(path, fd)
                    lock._write({"host": this_host(), "pid": os.getpid(), "since": time.time()})
                    return lock
            except BlockingIOError:
                holder = read_lock(path)
                os.close(fd)
                raise Busy(holder) from None
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # a releasing holder unlinked it between our open and our flock
        raise OSError(f"{path} keeps being replaced while it is being locked")

    def _write(self, content: dict[str, Any]) -> None:
        data = json.dumps(content, default=str).encode()
        if len(data) >= LOCK_BYTES:
            raise ValueError(f"{len(data)} bytes do not fit the lock file's {LOCK_BYTES}")
        os.pwrite(self._fd, data.ljust(LOCK_BYTES - 1) + b"\n", 0)

    def leave_word(self, final: dict[str, Any]) -> bool:
        """Overwrite the holder with how the run ended (the LAST_WORD keys of `final`); the
        file then stays. False if even this could not be written."""
        if self._fd is None:
            return False
        word = {**read_lock(self.path), **{k: final[k] for k in LAST_WORD if k in final}}
        for key, value in word.items():
            if isinstance(value, str) and len(value) > 300:
                word[key] = value[:300] + "..."
        try:
            self._write(word)
            return True
        except (OSError, ValueError) as err:
            log.error("trainspect: could not write the run's last word to %s either: %s",
                      self.path, err)
            return False

    def release(self, keep: bool = False) -> None:
        """Unlock; the file is deleted first unless it holds a last word (`keep`)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if not keep:
                self.path.unlink(missing_ok=True)  # while still locked: see acquire
        except OSError as err:
            log.debug("trainspect: could not remove %s: %s", self.path, err)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def renew(self, run_file: Path) -> None:
        """The run file was recreated (its folder was removed): lock the new lock file."""
        old, self._fd = self._fd, None
        fresh = WriterLock.acquire(run_file)
        self.path, self._fd, fresh._fd = fresh.path, fresh._fd, None
        if old is not None:
            os.close(old)


def _same_file(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def refuse_if_busy(run_id: str, holder: dict[str, Any]) -> TrainspectError:
    return TrainspectError(
        f"run {run_id} is being written by {describe_holder(holder)}: a run has one writer. "
        "Stop that process (or let it finish) and resume again; a crashed writer's lock is "
        "released by the system at once")
