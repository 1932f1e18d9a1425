"""The runs the dashboard serves: references resolved safely, views kept in a bounded LRU.

How a request names a run:
- `project/run_id` (the routes `/api/runs/{project}/{run}/...` and `?run=` of the
  event stream): exactly, both parts checked by `trainspect.paths.check_name`, so
  nothing in a URL can reach a file outside the runs directory;
- any other reference, for links such as `#run=<id>` with the id the CLI prints:
  a bare id, a unique prefix or suffix of one, or a run name. `Catalog.ref(text)`
  takes one; in a route, the project `_` (never a valid project name) means "any
  project": `/api/runs/_/<reference>/panels/<panel>`. Such references are only
  compared with the runs that exist (`trainspect.store.lookup`), never joined into
  a path. No match is a 404; several are a 404 whose message lists them. The run's
  canonical reference is `f"{view.project}/{view.id}"` (the run list's `ref`).

Views are kept by file, least recently used first out beyond MAX_VIEWS; their read
connections are bounded separately (`trainspect.store.connect.READ_CONNECTIONS`), so
a thousand runs never exhaust file descriptors. Unreadable files are left out of
the run list, logged once each, and listed by `unreadable()`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from trainspect.dashboard.panels.base import ClientError
from trainspect.errors import TrainspectError
from trainspect.paths import check_name, run_files, run_path, runs_dir
from trainspect.store.lookup import find_run
from trainspect.store.reader import RunView, Unreadable

log = logging.getLogger("trainspect.dashboard")

ANY_PROJECT = "_"  # in a route's project segment: resolve the run part as any reference
META_REFRESH_S = 2.0  # status and metadata are re-read at most this often per run
ALIAS_TTL_S = 5.0  # a resolved reference is trusted this long (a page's burst of requests)
MAX_VIEWS = 4096


class Catalog:
    """Resolves run references to RunViews under one runs directory."""

    def __new__(cls, root: str | None = None):
        from trainspect.store.server.connect import is_store_url

        if cls is Catalog and is_store_url(root):  # `trainspect ui --store URL`
            from trainspect.dashboard.store_catalog import StoreCatalog

            return StoreCatalog(root)
        return super().__new__(cls)

    def __init__(self, root: str | None = None) -> None:
        self.root = runs_dir(root)
        self._views: OrderedDict[Path, RunView] = OrderedDict()
        self._fresh: dict[Path, float] = {}
        self._aliases: dict[str, tuple[Path, float]] = {}
        self._unreadable: list[Unreadable] = []
        self._logged: set[Unreadable] = set()
        self._lock = threading.Lock()

    def get(self, project: str, run_id: str) -> RunView:
        """The run `project/run_id` (400 for a bad name, 404 for no such run); with the
        project `_`, the run named by the reference `run_id` (see the module doc)."""
        if project == ANY_PROJECT:
            return self._by_reference(run_id)
        try:
            path = run_path(self.root, check_name(project, "project"), check_name(run_id, "run"))
        except TrainspectError as err:
            raise ClientError(str(err), 400) from None
        if not path.is_file():
            raise ClientError(f"no run {project}/{run_id!r} in {self.root}", 404)
        return self._view(path)

    def ref(self, ref: str) -> RunView:
        """A run by `project/run_id`, a bare id, a unique part of one, or a run name."""
        project, sep, run_id = ref.partition("/")
        if sep and project != ANY_PROJECT:
            try:
                path = run_path(self.root, check_name(project, "project"),
                                check_name(run_id, "run"))
                if path.is_file():
                    return self._view(path)
            except TrainspectError:
                pass  # not project/run_id: a name may hold a '/'
        return self._by_reference(run_id if project == ANY_PROJECT and sep else ref)

    def _by_reference(self, ref: str) -> RunView:
        now = time.monotonic()
        with self._lock:
            path, at = self._aliases.get(ref, (None, 0.0))
        if path is None or now - at > ALIAS_TTL_S or not path.is_file():
            try:
                path = find_run(self.root, ref)
            except TrainspectError as err:
                raise ClientError(str(err), 404) from None
            with self._lock:
                if len(self._aliases) > MAX_VIEWS:
                    self._aliases.clear()
                self._aliases[ref] = (path, now)
        return self._view(path)

    def _view(self, path: Path) -> RunView:
        """The cached view of `path`, its metadata re-read when stale; 404 if unreadable."""
        try:
            view = self._cached(path)
            if time.monotonic() - self._fresh.get(path, 0.0) > META_REFRESH_S:
                self._fresh[path] = time.monotonic()
                view.refresh()
        except TrainspectError as err:
            raise ClientError(str(err), 404) from None
        return view

    def _cached(self, path: Path) -> RunView:
        with self._lock:
            view = self._views.get(path)
            if view is not None:
                self._views.move_to_end(path)
                return view
        view = RunView(path)  # reads the meta: TrainspectError if the file is unreadable
        with self._lock:
            view = self._views.setdefault(path, view)
            self._fresh[path] = time.monotonic()
            evicted = self._evict()
        for old in evicted:
            old.close()
        return view

    def _evict(self) -> list[RunView]:
        evicted = []
        while len(self._views) > MAX_VIEWS:
            path, old = self._views.popitem(last=False)
            self._fresh.pop(path, None)
            evicted.append(old)
        return evicted

    def runs(self) -> list[RunView]:
        """Every readable run, newest first; unreadable files are left out (see
        `unreadable()`) and logged once each."""
        if not self.root.is_dir():
            return []
        views, bad = [], []
        for path in run_files(self.root):
            try:
                views.append(self._cached(path).check())
            except TrainspectError as err:
                bad.append(Unreadable.of(path, err))
        for item in bad:
            if item not in self._logged:
                self._logged.add(item)
                log.warning("trainspect: %s", item)
        self._unreadable = sorted(bad)
        views.sort(key=lambda v: (v.started_at or 0.0, v.id), reverse=True)
        return views

    def unreadable(self) -> list[Unreadable]:
        """The files the last `runs()` left out, and why (one line each)."""
        return list(self._unreadable)

    def close(self) -> None:
        with self._lock:
            views, self._views = list(self._views.values()), OrderedDict()
        for view in views:
            view.close()
