"""What a run needs from the team store: a live sync of its own, and resuming elsewhere.

`Run` calls `claim_with_store` and `start_sync` and nothing else of the server
package, so a run without `store=` never imports it (nor psycopg).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.paths import run_path
from trainspect.store.claim import Claim, claim_run
from trainspect.store.server.connect import redact

log = logging.getLogger("trainspect.store.server")


def start_sync(run: Any, url: str) -> Any:
    """A LiveSync pushing `run`'s spool to `url`, alerting through `run.emit`; None if
    psycopg is missing (logged once: the run goes on, local only)."""
    from trainspect.store.server.live import LiveSync

    try:
        from trainspect.store.server.connect import psycopg_module

        psycopg_module()
    except TrainspectError as err:
        log.error("trainspect: %s; this run is recorded locally in %s only.", err, run.path)
        return None
    return LiveSync(run.path, url, emit=run.emit, step=lambda: run.step)


def claim_with_store(root: Path, project: str, resume: str | None, now: float, writes: bool,
                     url: str) -> Claim:
    """`claim_run`, where a resume also knows the team store's copy of the run.

    A run this machine has is resumed from its file, its attempt counting those
    made elsewhere; a run only the store has (resumed on another machine) gets a
    new local file, the run's next spool, continuing from the store's meta.
    """
    server = server_meta(url, project, resume) if resume is not None and writes else None
    try:
        claim = claim_run(root, project, resume, now, writes=writes)
    except TrainspectError:
        if server is None or run_path(root, project, str(server["id"])).exists():
            raise  # not found anywhere, or found here and refused (another writer)
        return claim_new_spool(root, project, server)
    if server is not None:
        claim.previous["attempt"] = max(int(claim.previous.get("attempt", 1)),
                                        int(server.get("attempt", 1)))
    return claim


def claim_new_spool(root: Path, project: str, meta: dict[str, Any]) -> Claim:
    """A new local file for the existing run `meta` (exclusively created, locked)."""
    from trainspect.store.lock import WriterLock

    run_id = str(meta["id"])
    path = run_path(root, project, run_id)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise TrainspectError(f"cannot resume {run_id}: {path} was created meanwhile by "
                              "another process") from None
    except OSError as err:  # e.g. a read-only folder: the run goes on, recording nothing
        return Claim(run_id, path, previous=dict(meta), error=err)
    try:
        return Claim(run_id, path, WriterLock.acquire(path), dict(meta), created=True)
    except BaseException:
        path.unlink(missing_ok=True)  # ours, and still empty
        raise


def server_meta(url: str, project: str, ref: str) -> dict[str, Any] | None:
    """The stored meta of run `ref` of `project` in the team store, or None if absent.

    Used to resume: on a machine without the run's file, the new local file
    continues the run's attempts (the server's attempt + 1); with the file, the
    attempt also counts those made elsewhere. A store that cannot be reached is
    logged and treated as absent: the run resumes from its local file alone.
    """
    from trainspect.store.server.reader import ServerReader

    try:
        reader = ServerReader(url)
    except TrainspectError as err:
        log.warning("trainspect: resuming %s/%s without the team store %s (%s); attempts "
                    "made on other machines are not counted.", project, ref, redact(url), err)
        return None
    try:
        return dict(reader.run(f"{project}/{ref}").meta)
    except TrainspectError:
        return None
    finally:
        reader.close()
