"""`trainspect doctor RUN`: what is wrong or right with a run, and what to do next."""

from __future__ import annotations

import argparse
import json
import math

from trainspect.alerts.doctor import REPLAY_MODES, diagnose, format_diagnosis
from trainspect.store.reader import Reader


def add_parser(sub: argparse._SubParsersAction) -> None:
    from trainspect.cli import add_dir_argument, add_run_argument

    parser = sub.add_parser("doctor", help="diagnosis of a run and the next actions")
    add_run_argument(parser)
    add_dir_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the diagnosis as JSON")
    parser.add_argument("--replay", choices=REPLAY_MODES, default="auto",
                        help="re-run the alert rules over the stored series: auto (when the "
                             "run stored no rule alerts), always, never")
    parser.set_defaults(handler=run)


def json_safe(value: object) -> object:
    """NaN and inf become null (strict JSON for scripts); everything else unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    view = Reader(args.dir).run(args.run)
    try:
        diagnosis = diagnose(view, args.replay)
    finally:
        view.close()
    if args.json:
        print(json.dumps(json_safe(diagnosis), indent=2))
    else:
        print(format_diagnosis(diagnosis))
    return 0
