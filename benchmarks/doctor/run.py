"""The doctor's published score: planted faults and healthy runs, trained for real on CPU.

    python benchmarks/doctor/run.py [--workers 2] [--only ID,ID] [--half dev|held]
        [--json results.json] [--distributed]

Trains the demo's tiny Llama + LoRA (benchmarks/doctor/trainer.py) once per case of
faults.py (healthy runs with several seeds, sizes, learning rates, curricula, and
one run per planted fault), each in a fresh trainspect run, then reads what
trainspect stored and scores it (score.py): per case, whether the fault was detected,
by which rule, the lead time from the plant, and whether the doctor's first finding
names the cause and the right action; then recall, precision, false alarms per 1,000
healthy steps and median lead times, for the development half and the held-out half
apart. `--distributed` adds the two-process (gloo) cases of distributed.py, reported
apart. Runs go to a temporary directory (kept with `--keep DIR`).

CPU time is summed over the worker processes (user + system), since the machines
this runs on are shared: wall time alone would flatter or punish the suite.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    import logging

    logging.getLogger("trainspect").setLevel(logging.CRITICAL + 1)  # alerts: in the store


def run_case(case_id: str, root: str) -> dict[str, Any]:
    """Train one case into `root` and score it (in a worker process)."""
    import trainspect as ts
    from benchmarks.doctor.faults import BY_ID
    from benchmarks.doctor.score import score_run
    from benchmarks.doctor.trainer import tokenizer_for, train

    case = BY_ID[case_id]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    tokenizer = tokenizer_for(0)
    setup = case.setup
    config = {"lr": setup.lr, "warmup_steps": setup.warmup, "steps": setup.steps,
              "hidden": setup.hidden, "layers": setup.layers, "seed": setup.seed,
              "weight_decay": 0.0, **case.config}
    with ts.init(project="doctor-bench", name=case.id, dir=root, config=config,
                 tokenizer=tokenizer, log_every=setup.log_every) as run:
        train(run, setup, case.make(), tokenizer)
    view = ts.open(root).run(f"doctor-bench/{run.id}")
    row = score_run(case, view, setup.steps)
    after = resource.getrusage(resource.RUSAGE_SELF)
    row["cpu_s"] = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
    row["wall_s"] = time.perf_counter() - start
    row["run_id"] = run.id
    return row


def rescore(root: str, cases: list) -> list[dict[str, Any]]:
    """Score the newest stored run of each case in `root` with today's rules."""
    import trainspect as ts
    from benchmarks.doctor.score import score_run

    views = {}
    for view in ts.open(root).runs():  # newest first
        views.setdefault(view.name, view)
    return [score_run(c, views[c.id], c.setup.steps, replayed=True) for c in cases
            if c.id in views]


def _print_totals(rows: list[dict[str, Any]], report: dict[str, Any]) -> None:
    """Totals of each half, of the fresh faults, and of everything (healthy runs count in
    every part's false alarms: they belong to no half of faults)."""
    from benchmarks.doctor.score import totals, totals_text

    healthy = [r for r in rows if r["kind"] == "healthy"]
    for name, half in (("development half", "dev"), ("held-out half", "held"),
                       ("fresh faults", "fresh"), ("all", None)):
        part = [r for r in rows if half is None or (r["half"] == half
                                                    and r["kind"] != "healthy")]
        if half is not None and part:
            part += healthy
        if part:
            report[name] = totals(part)
            print(totals_text(name, report[name]))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.doctor.distributed import CASES as RANKED
    from benchmarks.doctor.faults import ALL
    from benchmarks.doctor.score import table, totals_text

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated case ids")
    parser.add_argument("--half", choices=("dev", "held", "fresh"), default=None)
    parser.add_argument("--json", default=None, help="write every row and total here")
    parser.add_argument("--keep", default=None, help="keep the runs in this directory")
    parser.add_argument("--rescore", default=None, metavar="DIR",
                        help="no training: score the runs kept in DIR (--keep) with today's "
                             "rules, replayed over their stored series")
    parser.add_argument("--distributed", action="store_true",
                        help="also run the two-process gloo cases (reported apart); with "
                             "--only naming only those, just them")
    args = parser.parse_args(argv)
    wanted = {c for c in args.only.split(",") if c}
    cases = [c for c in ALL if (not wanted or c.id in wanted)
             and (args.half is None or c.half == args.half)]
    ranked = {c.id for c in RANKED if not wanted or c.id in wanted}
    if wanted and wanted <= {c.id for c in RANKED}:
        cases = []
    unknown = wanted - {c.id for c in ALL} - {c.id for c in RANKED}
    if unknown:
        parser.error(f"unknown case ids: {', '.join(sorted(unknown))}")
    if args.rescore:
        rows = rescore(args.rescore, cases)
        report = {"rows": rows}
        print(table(rows))
        print()
        _print_totals(rows, report)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1, default=str))
        return 0
    root = args.keep or tempfile.mkdtemp(prefix="doctor-bench-")
    os.makedirs(root, exist_ok=True)
    start = time.perf_counter()
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    # longest first, so the last worker does not start a long case alone at the end
    order = sorted(cases, key=lambda c: -c.setup.steps * c.setup.accum * (2 if c.setup.draft
                                                                              else 1))
    rows = []
    with ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker) as pool:
        futures = {c.id: pool.submit(run_case, c.id, root) for c in order}
        for case in cases:
            row = futures[case.id].result()
            rows.append(row)
            print(f"  {row['id']:<28} {row['cpu_s']:6.1f} s CPU  "
                  f"{'detected by ' + row['rule'] if row['rule'] else '-'}", flush=True)
    wall = time.perf_counter() - start
    cpu = sum(r["cpu_s"] for r in rows)
    report: dict[str, Any] = {"rows": rows, "cpu_s": cpu, "wall_s": wall}
    if rows:
        print()
        print(table(rows))
        print()
        _print_totals(rows, report)
    if args.distributed:
        from benchmarks.doctor.distributed import run_all

        report["distributed"] = run_all(root, ranked)
        print()
        print(table(report["distributed"]["rows"]))
        print(totals_text("distributed (2 ranks, gloo)", report["distributed"]["totals"]))
    print(f"\n{len(rows)} runs, {cpu:.0f} s CPU in {args.workers} workers, {wall:.0f} s wall")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
