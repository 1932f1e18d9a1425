"""`trainspect ls`: runs, newest first, with status and headline numbers."""

from __future__ import annotations

import argparse

from trainspect.cli.format import number, table, when
from trainspect.store.reader import Reader
from trainspect.summary import headline


def add_parser(sub: argparse._SubParsersAction) -> None:
    from trainspect.cli import add_dir_argument

    parser = sub.add_parser("ls", help="list runs with status and headline numbers")
    add_dir_argument(parser)
    parser.add_argument("--project", default=None, help="only this project's runs")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    reader = Reader(args.dir)
    views = reader.runs(args.project)
    if not views:
        print(f"no runs in {reader.root}")
        return 0
    rows = []
    for view in views:
        numbers = "  ".join(f"{k}={number(v)}" for k, v in headline(view).items())
        rows.append([view.id, view.project, view.name if view.name != view.id else "",
                     view.status, str(view.last_step() if view.last_step() is not None else "-"),
                     when(view.started_at), numbers])
    print(table(["id", "project", "name", "status", "step", "started", "latest"], rows))
    return 0
