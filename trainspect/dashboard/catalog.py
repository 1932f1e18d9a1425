"""The runs the dashboard serves: names checked, views opened once and kept.

Every run a URL names goes through `trainspect.paths.check_name` (both the project
and the run id) and then the reader's own lookup, so nothing in a URL can reach a
file outside the runs directory. Views are cached by reference: a RunView holds one
read-only connection, and reopening a run file per request would be wasteful.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from trainspect.dashboard.panels.base import ClientError
from trainspect.errors import TrainspectError
from trainspect.paths import check_name, run_files, runs_dir
from trainspect.store.reader import Reader, RunView

META_REFRESH_S = 2.0  # status and metadata are re-read at most this often per run


class Catalog:
    """Resolves `project/run_id` references to RunViews under one runs directory."""

    def __new__(cls, root: str | None = None):
        from trainspect.store.server.connect import is_store_url

        if cls is Catalog and is_store_url(root):  # `trainspect ui --store URL`
            from trainspect.dashboard.store_catalog import StoreCatalog

            return StoreCatalog(root)
        return super().__new__(cls)

    def __init__(self, root: str | None = None) -> None:
        self.root = runs_dir(root)
        self._views: dict[str, RunView] = {}
        self._fresh: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, project: str, run_id: str) -> RunView:
        """The run `project/run_id`: 400 for a bad name, 404 for no such run."""
        try:
            check_name(project, "project")
            check_name(run_id, "run")
        except TrainspectError as err:
            raise ClientError(str(err), 400) from None
        ref = f"{project}/{run_id}"
        with self._lock:
            view = self._views.get(ref)
        if view is not None and view.path.is_file():
            return self._refreshed(ref, view)
        try:
            found = Reader(self.root).run(ref)
        except TrainspectError as err:
            raise ClientError(str(err), 404) from None
        if found.id != run_id and found.path.stem != run_id:
            found.close()  # a prefix matched: URLs name runs exactly
            raise ClientError(f"no run {ref!r}", 404)
        with self._lock:
            view = self._views.setdefault(ref, found)
            self._fresh[ref] = time.monotonic()
        if view is not found:
            found.close()
        return view

    def ref(self, ref: str) -> RunView:
        project, _, run_id = ref.partition("/")
        return self.get(project, run_id)

    def _refreshed(self, ref: str, view: RunView) -> RunView:
        now = time.monotonic()
        if now - self._fresh.get(ref, 0.0) > META_REFRESH_S:
            self._fresh[ref] = now
            view.refresh()
        return view

    def runs(self) -> list[RunView]:
        """Every readable run, newest first (unreadable files are skipped)."""
        if not self.root.is_dir():
            return []
        views = []
        for path in run_files(self.root):
            project, run_id = path.parent.name, path.stem
            try:
                views.append(self.get(project, run_id))
            except (ClientError, sqlite3.Error):
                continue
        views.sort(key=lambda v: (v.started_at or 0.0, v.id), reverse=True)
        return views

    def close(self) -> None:
        with self._lock:
            views, self._views = list(self._views.values()), {}
        for view in views:
            view.close()
