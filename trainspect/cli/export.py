"""`trainspect export RUN --format csv|json|parquet -o FILE`: a run's data for other tools."""

from __future__ import annotations

import argparse

from trainspect.export import FORMATS, export_run
from trainspect.store.reader import Reader


def add_parser(sub: argparse._SubParsersAction) -> None:
    from trainspect.cli import add_dir_argument, add_run_argument

    parser = sub.add_parser("export", help="write a run's metrics to csv, json or parquet")
    add_run_argument(parser)
    add_dir_argument(parser)
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("-o", "--output", required=True, help="file to write")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    view = Reader(args.dir).run(args.run)
    points = export_run(view, args.format, args.output)
    print(f"wrote {points} points of {view.project}/{view.id} to {args.output}")
    return 0
