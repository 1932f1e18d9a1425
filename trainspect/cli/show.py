"""`trainspect show RUN`: a terminal summary of one run: metrics, samples, alerts."""

from __future__ import annotations

import argparse

from trainspect.cli.format import number, table, when
from trainspect.store.reader import Reader
from trainspect.summary import key_summary


def add_parser(sub: argparse._SubParsersAction) -> None:
    from trainspect.cli import add_dir_argument, add_run_argument

    parser = sub.add_parser("show", help="summary of one run: metrics, samples, alerts")
    add_run_argument(parser)
    add_dir_argument(parser)
    parser.add_argument("--samples", action="store_true", help="print the latest samples")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    view = Reader(args.dir).run(args.run)
    meta = view.meta
    print(f"run {view.project}/{view.id}  ({view.name})")
    print(f"  status   {view.status}    attempt {meta.get('attempt', 1)}")
    print(f"  started  {when(view.started_at)}    ended {when(view.ended_at)}")
    git = meta.get("git") or {}
    if git:
        print(f"  git      {git.get('commit', '')[:12]}{' (dirty)' if git.get('dirty') else ''}")
    print(f"  file     {view.path}")
    losses = {k: meta[k] for k in ("dropped_points", "dropped_records", "lost_points",
                                   "lost_records", "file_recreated") if meta.get(k)}
    if losses or meta.get("store_error"):
        print("  store    " + ", ".join(f"{k}={v:,}" for k, v in losses.items())
              + (f"  ({meta['store_error']})" if meta.get("store_error") else ""))
    if view.config:
        print("  config   " + ", ".join(f"{k}={v}" for k, v in list(view.config.items())[:12]))
    rows = []
    for key in view.keys():
        s = key_summary(view, key)
        if s is not None:
            rows.append([key, str(s.last_step), number(s.last), number(s.min), number(s.max),
                         str(s.points)])
    print()
    print(table(["metric", "step", "last", "min", "max", "points"], rows) if rows
          else "no metrics yet")
    alerts = view.alerts()
    if alerts:
        print("\nalerts")
        for a in alerts[-10:]:
            action = f"\n      -> {a['action']}" if a["action"] else ""
            print(f"  [{a['level']}] step {a['step']} {a['rule']}: {a['message']}{action}")
    if args.samples:
        _print_samples(view)
    return 0


def _print_samples(view) -> None:
    from trainspect.samples_view import format_samples

    steps = view.sample_steps()
    if not steps:
        print("\nno samples yet")
        return
    rows = view.samples(step=steps[-1])
    for stream in sorted({r["stream"] for r in rows}):
        print()
        print(format_samples([r for r in rows if r["stream"] == stream]))
