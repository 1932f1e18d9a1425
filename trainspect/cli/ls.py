"""`trainspect ls`: runs, newest first, with status and headline numbers."""

from __future__ import annotations

import argparse
import sys

from trainspect.cli.format import number, table, when
from trainspect.errors import TrainspectError
from trainspect.store.reader import Reader, Unreadable
from trainspect.summary import headline


def add_parser(sub: argparse._SubParsersAction) -> None:
    from trainspect.cli import add_dir_argument

    parser = sub.add_parser("ls", help="list runs with status and headline numbers")
    add_dir_argument(parser)
    parser.add_argument("--project", default=None, help="only this project's runs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    reader = Reader(args.dir)
    views, unreadable = reader.scan(args.project)
    rows = []
    for view in views:
        try:
            numbers = "  ".join(f"{k}={number(v)}" for k, v in headline(view).items())
            last = view.last_step()
        except TrainspectError as err:  # damage the listing's checks could not see
            unreadable.append(Unreadable.of(view.path, err))
            continue
        finally:
            view.close()
        rows.append([view.id, view.project, view.name if view.name != view.id else "",
                     view.status, "-" if last is None else str(last), when(view.started_at),
                     numbers])
    for bad in unreadable:  # one line each, on stderr: the listing stays parseable
        print(f"trainspect: {bad}", file=sys.stderr)
    if not rows:
        print(f"no runs in {reader.root}")
        return 0
    print(table(["id", "project", "name", "status", "step", "started", "latest"], rows))
    return 0
