"""What a run needs from the team store: a live sync of its own, and resuming elsewhere.

`Run` calls these two functions and nothing else of the server package, so a
run without `store=` never imports it (nor psycopg).
"""

from __future__ import annotations

import logging
from typing import Any

from trainspect.errors import TrainspectError
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
