"""Opening a store for reading: a runs directory, or a team store's URL.

`open(target)` is `ts.open`: a path (or None: $TRAINSPECT_DIR, else
./trainspect-runs) gives the directory reader, a `postgresql://` URL the team
store's. Both satisfy `trainspect.store.protocol.RunSource`.
"""

from __future__ import annotations

import os
from typing import Any

from trainspect.store.server.connect import is_store_url


def open(target: str | os.PathLike | None = None) -> Any:  # noqa: A001 - it is `ts.open`
    """Open runs for reading: a runs directory, or a `postgresql://` team store."""
    if is_store_url(target):
        from trainspect.store.server.reader import ServerReader

        return ServerReader(str(target))
    from trainspect.store.reader import Reader

    return Reader(target)


def open_reader(dir: str | os.PathLike | None = None, store: str | None = None) -> Any:
    """The CLI's reader: `--store URL` when given, else the runs directory `--dir`."""
    return open(store) if store else open(dir)
