"""The dashboard's runs from a team store (`trainspect ui --store URL`).

The same interface as `Catalog` (get, ref, runs, close): names are checked with
`trainspect.paths.check_name` before they reach a query, views are kept in a
bounded LRU (a view holds no connection of its own: they share the reader's
few), and the run list is read in bulk (three queries for any number of runs).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from trainspect.dashboard.panels.base import ClientError
from trainspect.errors import TrainspectError
from trainspect.paths import check_name
from trainspect.store.server.reader import ServerReader
from trainspect.store.server.view import ServerRunView

MAX_VIEWS = 1024  # views kept between requests (each a few hundred bytes)


class StoreCatalog:
    """Resolves `project/run_id` to views of runs in a team store."""

    def __init__(self, url: str) -> None:
        self.reader = ServerReader(url)
        self.root = self.reader.where
        self._views: OrderedDict[str, ServerRunView] = OrderedDict()
        self._lock = threading.Lock()

    def _keep(self, ref: str, view: ServerRunView) -> None:
        with self._lock:
            self._views[ref] = view
            self._views.move_to_end(ref)
            while len(self._views) > MAX_VIEWS:
                self._views.popitem(last=False)

    def get(self, project: str, run_id: str) -> ServerRunView:
        """The run `project/run_id`: 400 for a bad name, 404 for no such run."""
        try:
            check_name(project, "project")
            check_name(run_id, "run")
        except TrainspectError as err:
            raise ClientError(str(err), 400) from None
        ref = f"{project}/{run_id}"
        with self._lock:
            view = self._views.get(ref)
        if view is not None:
            try:
                view.refresh()
            except TrainspectError as err:  # deleted from the store meanwhile
                raise ClientError(str(err), 404) from None
        else:
            rows = self.reader.runs(project=project, run_id=run_id)
            if not rows:
                raise ClientError(f"no run {ref!r}", 404)
            view = rows[0]
        self._keep(ref, view)
        return view

    def ref(self, ref: str) -> ServerRunView:
        project, _, run_id = ref.partition("/")
        return self.get(project, run_id)

    def runs(self) -> list[ServerRunView]:
        """Every run, newest first, read in bulk; the views are kept for the panels."""
        views = self.reader.runs(with_alerts=True)
        for view in views[:MAX_VIEWS]:
            self._keep(f"{view.project}/{view.id}", view)
        return views

    def close(self) -> None:
        self.reader.close()
