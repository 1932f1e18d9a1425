"""The dashboard's runs from a team store (`trainspect ui --store URL`).

The same interface as `Catalog` (get, ref, runs, close): names are checked with
`trainspect.paths.check_name` before they reach a query, views are kept in a
bounded LRU (a view holds no connection of its own: they share the reader's
few), and the run list is read in bulk (three queries for any number of runs).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from trainspect.dashboard.catalog import ANY_PROJECT
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
        """The run `project/run_id`: 400 for a bad name, 404 for no such run; with the
        project `_`, the run that the reference `run_id` names (as `Catalog.get`)."""
        if project == ANY_PROJECT:
            return self._by_reference(run_id)
        try:
            check_name(project, "project")
            check_name(run_id, "run")
        except TrainspectError as err:
            raise ClientError(str(err), 400) from None
        ref = f"{project}/{run_id}"
        with self._lock:
            view = self._views.get(ref)
        if view is None:
            rows = self.reader.runs(project=project, run_id=run_id)
            if not rows:
                raise ClientError(f"no run {ref!r} in {self.root}", 404)
            view = rows[0]
        return self._fresh(view)

    def _fresh(self, view: ServerRunView) -> ServerRunView:
        try:
            view.refresh()
        except TrainspectError as err:  # deleted from the store meanwhile
            raise ClientError(str(err), 404) from None
        self._keep(f"{view.project}/{view.id}", view)
        return view

    def _by_reference(self, ref: str) -> ServerRunView:
        try:
            return self._fresh(self.reader.run(ref))
        except TrainspectError as err:
            raise ClientError(str(err), 404) from None

    def ref(self, ref: str) -> ServerRunView:
        """A run by `project/run_id`, a bare id, a unique part of one, or a run name."""
        project, sep, run_id = ref.partition("/")
        if sep and project != ANY_PROJECT:
            try:
                return self.get(project, run_id)
            except ClientError:
                pass  # not project/run_id: a name may hold a '/'
        return self._by_reference(run_id if project == ANY_PROJECT and sep else ref)

    def runs(self) -> list[ServerRunView]:
        """Every run, newest first, read in bulk; the views are kept for the panels."""
        views = self.reader.runs(with_alerts=True)
        for view in views[:MAX_VIEWS]:
            self._keep(f"{view.project}/{view.id}", view)
        return views

    def unreadable(self) -> list:
        """Nothing: a store has no unreadable files (as `Catalog.unreadable`)."""
        return []

    def close(self) -> None:
        self.reader.close()
