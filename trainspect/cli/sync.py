"""`trainspect sync DIR --to URL`: upload local runs to a team store (idempotent, resumable).

Each run file is pushed from where the server's copy of it stops, so running the
command again sends only what is new, and an interrupted upload continues.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from trainspect.errors import TrainspectError


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sync", help="upload local runs to a team store (PostgreSQL)")
    parser.add_argument("source", nargs="?", default=None,
                        help="a runs directory, one project folder or one run file "
                             "(default: $TRAINSPECT_DIR, else ./trainspect-runs)")
    parser.add_argument("--to", dest="to", default=None,
                        help="the store: postgresql://user@host:port/db "
                             "(default: $TRAINSPECT_STORE)")
    parser.add_argument("--project", default=None, help="only this project's runs")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run_files_of(source: Path, project: str | None) -> list[Path]:
    """The run files under `source`: itself if a file, a project folder's, or a runs dir's."""
    from trainspect.paths import RUN_SUFFIX, run_files

    if source.is_file():
        return [source]
    if not source.is_dir():
        raise TrainspectError(f"no runs directory or run file at {source}")
    own = sorted(source.glob("*" + RUN_SUFFIX))
    if own and project is None:  # a project folder
        return own
    return sorted(run_files(source, project))


def run(args: argparse.Namespace) -> int:
    from trainspect.paths import runs_dir
    from trainspect.store.server.connect import connect, redact, store_url
    from trainspect.store.server.schema import migrate
    from trainspect.store.server.sync import sync_file

    url = store_url(args.to)
    if url is None:
        raise TrainspectError("expected `--to` (or $TRAINSPECT_STORE) to name the team store, "
                              "e.g. --to postgresql://me@db.example.com:5432/trainspect")
    files = run_files_of(runs_dir(args.source), args.project)
    if not files:
        print(f"no runs to sync in {runs_dir(args.source)}")
        return 0
    conn = connect(url, "sync-cli")
    bar = Progress(len(files), enabled=not args.quiet and sys.stderr.isatty())
    failed = 0
    try:
        migrate(conn, redact(url))
        for path in files:
            bar.start(path)
            try:
                sync_file(path, url, conn, on_batch=bar.batch)
            except TrainspectError as err:  # one unreadable file does not stop the rest
                failed += 1
                bar.note(f"skipped {path}: {err}")
                continue
            bar.finish()
    finally:
        conn.close()
        bar.close()
    sent = f"{bar.rows:,} new rows ({bar.points:,} points)"
    print(f"synced {len(files) - failed} of {len(files)} runs to {redact(url)}: {sent} "
          f"in {bar.elapsed():.1f} s" + (f"; {failed} skipped (see above)" if failed else ""))
    return 1 if failed else 0


class Progress:
    """A one-line progress bar on stderr (only on a terminal): runs done, points sent, rate."""

    WIDTH = 30

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.rows = 0
        self.points = 0
        self._started = time.monotonic()
        self._current = ""

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def start(self, path: Path) -> None:
        self._current = f"{path.parent.name}/{path.stem}"
        self._draw()

    def batch(self, pushed: object) -> None:
        self.rows += getattr(pushed, "rows", 0)
        self.points += getattr(pushed, "points", 0)
        self._draw()

    def finish(self) -> None:
        self.done += 1
        self._draw()

    def note(self, text: str) -> None:
        self.done += 1
        if self.enabled:
            sys.stderr.write("\r\033[K")
        print(text, file=sys.stderr)
        self._draw()

    def _draw(self) -> None:
        if not self.enabled:
            return
        filled = int(self.WIDTH * self.done / max(self.total, 1))
        rate = self.points / max(self.elapsed(), 1e-9)
        sys.stderr.write(f"\r\033[K[{'#' * filled}{'.' * (self.WIDTH - filled)}] "
                         f"{self.done}/{self.total} runs  {self.points:,} points  "
                         f"{rate:,.0f} points/s  {self._current}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
