"""The `trainspect` command: parse, call the library, format. Each command is one module."""

from __future__ import annotations

import argparse
import sys

from trainspect.errors import TrainspectError

COMMANDS = ("ls", "show", "doctor", "export", "demo", "ui", "report")


def build_parser() -> argparse.ArgumentParser:
    from trainspect.cli import demo, doctor, export, ls, report, show, ui

    parser = argparse.ArgumentParser(
        prog="trainspect", description="See what a model is really learning while it trains."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (demo, ls, show, doctor, export, ui, report):
        module.add_parser(sub)
    return parser


RUN_HELP = ("the run: its id, a unique part of it (e.g. its last digits), or its name; "
            "project/<any of these> searches one project")


def add_run_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help=RUN_HELP)


def add_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default=None,
                        help="runs directory (default: $TRAINSPECT_DIR, else ./trainspect-runs)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except TrainspectError as err:
        print(f"trainspect: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `trainspect show RUN | head`
        return 0

