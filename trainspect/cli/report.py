"""`trainspect report RUN -o report.html`: one self-contained HTML file to share."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from trainspect.cli import add_dir_argument, add_run_argument

    parser = sub.add_parser("report", help="write one self-contained HTML report of a run")
    add_run_argument(parser)
    add_dir_argument(parser)
    parser.add_argument("-o", "--output", default="report.html", help="file to write")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from trainspect.dashboard.report import write_report
    from trainspect.store.reader import Reader

    view = Reader(args.dir).run(args.run)
    out = write_report(f"{view.project}/{view.id}", args.output, dir=args.dir)  # dir, or a store
    size_kib = out.stat().st_size / 1024
    print(f"wrote the report of {view.project}/{view.id} to {out} ({size_kib:.0f} KiB)")
    return 0
