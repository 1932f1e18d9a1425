"""Claiming a run file for writing: a new one by exclusive create, an existing one only
when no other process writes it.

A new run's file is created with O_CREAT | O_EXCL under a fresh id, so runs started
in the same second never share a file: an id already taken draws another. An
existing run (`resume=`) is refused, with the holder's host and pid, while
- a process holds its lock file's flock (`store/lock.py`); the kernel drops it when
  that process dies, so on one host a crashed run can be resumed at once;
- or it is marked running on another host with a heartbeat younger than
  STALE_HEARTBEAT_S: a shared file system may not carry flocks between hosts, so a
  crashed holder there blocks a resume for at most that long.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.paths import new_run_id, run_path
from trainspect.store.liveness import STALE_HEARTBEAT_S, heartbeat_age_s, this_host
from trainspect.store.lock import Busy, WriterLock, refuse_if_busy

MAX_ID_DRAWS = 20


def claim_new(root: Path, project: str, now: float) -> tuple[str, Path, WriterLock]:
    """A fresh run id, its file created empty and exclusively, and its lock held.

    OSError when the runs directory cannot hold the file."""
    for _ in range(MAX_ID_DRAWS):
        run_id = new_run_id(now)
        path = run_path(root, project, run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            continue  # taken, by a run started in the same second: draw again
        try:
            return run_id, path, WriterLock.acquire(path)
        except BaseException:
            path.unlink(missing_ok=True)  # ours, and still empty
            raise
    raise OSError(f"could not find a free run id in {root / project} after {MAX_ID_DRAWS} "
                  "draws")


def claim_existing(path: Path, meta: dict[str, Any], now: float) -> WriterLock:
    """The lock of the run at `path` whose meta is `meta`; TrainspectError naming the
    holder if another process writes it."""
    run_id = str(meta.get("id") or path.stem)
    host = meta.get("host")
    if meta.get("status") == "running" and host and host != this_host():
        age = heartbeat_age_s(meta, now)
        if age <= STALE_HEARTBEAT_S:
            raise TrainspectError(
                f"run {run_id} is running on host {host} (pid {meta.get('pid', '?')}; its "
                f"last heartbeat was {max(age, 0):.0f} s ago): a run has one writer. Stop it "
                f"there first; if it has crashed, resume after {STALE_HEARTBEAT_S - age:.0f} s "
                "more, once its heartbeat is stale")
    try:
        return WriterLock.acquire(path)
    except Busy as busy:
        raise refuse_if_busy(run_id, busy.holder) from None


@dataclass
class Claim:
    """The file a new `Run` writes: its id and path, the lock (None when this process
    does not write, or `error` says why it cannot), and a resumed run's meta."""

    id: str
    path: Path
    lock: WriterLock | None = None
    previous: dict[str, Any] = field(default_factory=dict)
    error: OSError | None = None
    created: bool = False

    def abandon(self) -> None:
        """`init` failed after the claim: unlock, and remove a file it created."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        if self.created:
            self.path.unlink(missing_ok=True)


def claim_run(root: Path, project: str, resume: str | None, now: float,
              writes: bool = True) -> Claim:
    """Claim a new run's file, or with `resume` (a run id, a unique part of it, or a
    name) the existing run's; TrainspectError if it cannot be resumed or another process
    writes it. Ranks that do not write get an id and no file."""
    if not writes:
        run_id = new_run_id(now)
        return Claim(run_id, run_path(root, project, run_id))
    if resume is None:
        try:
            run_id, path, lock = claim_new(root, project, now)
        except OSError as err:
            run_id = new_run_id(now)
            return Claim(run_id, run_path(root, project, run_id), error=err)
        return Claim(run_id, path, lock, created=True)
    from trainspect.store.reader import Reader

    try:
        view = Reader(root).run(f"{project}/{resume}")
        meta = dict(view.refresh().meta)
        view.close()
    except TrainspectError as err:
        raise TrainspectError(f"cannot resume: `resume`={resume!r}: {err}") from err
    try:
        lock = claim_existing(view.path, meta, now)
    except OSError as err:  # e.g. a read-only folder: the run goes on, recording nothing
        return Claim(view.id, view.path, previous=meta, error=err)
    return Claim(view.id, view.path, lock, meta)
