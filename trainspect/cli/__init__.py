"""The `trainspect` command: parse, call the library, format. Each command is one module."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from trainspect.errors import TrainspectError

COMMANDS = ("ls", "show", "doctor", "export", "demo", "ui", "report", "sync")


def build_parser() -> argparse.ArgumentParser:
    from trainspect.cli import demo, doctor, export, ls, report, show, sync, ui

    parser = argparse.ArgumentParser(
        prog="trainspect", description="See what a model is really learning while it trains."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, ls, show, doctor, export, ui, report, sync):
        module.add_parser(sub)
    return parser


RUN_HELP = ("the run: its id, a unique part of it (e.g. its last digits), or its name; "
            "project/<any of these> searches one project")


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help=RUN_HELP)


def add_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=None,
                        help="runs directory (default: $TRAINSPECT_DIR, else ./trainspect-runs)")
    parser.add_argument("--store", default=None, metavar="URL",
                        help="a team store, postgresql://user@host:port/db, instead of --dir")


@contextmanager
def use_store(args: argparse.Namespace) -> Iterator[None]:
    """`--store URL`: reading commands open the team store (`Reader(url)`); the demo's
    run streams to it ($TRAINSPECT_STORE while the command runs)."""
    store = getattr(args, "store", None)
    if not store:
        yield
        return
    from trainspect.store.server.connect import ENV_STORE, store_url

    url = store_url(store)
    if args.command != "demo":
        args.dir = url
        yield
        return
    before = os.environ.get(ENV_STORE)
    os.environ[ENV_STORE] = url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV_STORE, None)
        else:
            os.environ[ENV_STORE] = before


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with use_store(args):
            return int(args.handler(args) or 0)
    except TrainspectError as err:
        print(f"trainspect: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `trainspect show RUN | head`
        return 0

