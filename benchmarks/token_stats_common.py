"""What benchmarks/token_stats_kernel.py measures with and how it reports: timing, peak
memory and read bandwidth; its table's rows, the PICK lines that say which launch default
to change or keep, and the JSON written after every section."""

from __future__ import annotations

import gc
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

IGNORED = 0.1  # share of labels set to -100


def bench_ms(fn: Callable[[], object], cuda: bool, rep_ms: int = 100) -> float:
    """Median time of ``fn`` in ms: do_bench on CUDA, wall clock on the CPU."""
    if cuda:
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_extra_mib(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    del out
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def read_gbs(x: torch.Tensor) -> float:
    """Read bandwidth over ``x`` itself: the best of torch.sum and torch.amax (GB/s)."""
    nbytes = x.numel() * x.element_size()
    best = min(bench_ms(lambda: torch.sum(x), True), bench_ms(lambda: torch.amax(x), True))
    return nbytes / (best * 1e-3) / 1e9


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()



def fmt(v, spec=".3f", width=9) -> str:
    return f"{v:{width}{spec}}" if isinstance(v, (int, float)) else f"{'-':>{width}}"


CHECK_TOL = 1e-4  # the largest relative difference from the torch path's state
MARGIN = 0.98  # a variant replaces a default only when this much faster on every case


def checked(r: dict) -> bool:
    """The row's state matched the torch path's, without a host sync or an error."""
    err = r.get("state_rel_err")
    return (r.get("sync_free", True) is True and not r.get("errors")
            and (err is None or err <= CHECK_TOL))


def picks(rows: list[dict], current: dict[str, str]) -> list[dict]:
    """Each variant's time over its case's default, per module default it would replace
    (DEFAULT_CONFIG, TEACHER_CONFIG, SHORT_CONFIG; ``current``: their reprs now). A
    variant is suggested only when it is not the default itself, was timed on every case
    that default serves, passed every check there, and was at least 2% faster on each
    (no row slower); otherwise the default stays."""
    rows = [r for r in rows if "ms" in r]  # failed rows are printed, never picked
    default_ms = {r["case"]: r["ms"] for r in rows if r.get("attr") is None}
    served: dict[str, set] = {}
    timed: dict[tuple, list] = {}
    for r in rows:
        if r.get("attr") and r["case"] in default_ms:
            served.setdefault(r["attr"], set()).add(r["case"])
            timed.setdefault((r["attr"], r["config"], r["variant"]), []).append(r)
    out = []
    for (attr, config, label), rs in timed.items():
        ratios = [r["ms"] / default_ms[r["case"]] for r in rs]
        out.append({"attr": attr, "variant": label, "config": config,
                    "cases": f"{len(rs)}/{len(served[attr])}", "worst": max(ratios),
                    "mean": sum(ratios) / len(ratios), "checked": all(map(checked, rs)),
                    "eligible": (len(rs) == len(served[attr]) and all(map(checked, rs))
                                 and max(ratios) <= MARGIN and config != current.get(attr))})
    print(f"\n{'variant / default, per module default':<56}{'cases':>6}{'mean':>7}{'worst':>7}"
          "  checked")
    for p in out:
        print(f"{p['attr'] + ': ' + p['variant']:<56}{p['cases']:>6}{p['mean']:7.3f}"
              f"{p['worst']:7.3f}  {p['checked']}")
    for attr in served:
        best = min((p for p in out if p["attr"] == attr and p["eligible"]),
                   key=lambda p: p["mean"], default=None)
        print(f"PICK {attr}: keep the default" if best is None else
              f"PICK {attr} = {best['config']}  # {best['variant']}: mean "
              f"{best['mean']:.3f}, worst {best['worst']:.3f} of the default")
    return out


def print_observe(r: dict, flush: bool = False) -> None:
    ratio = r["ms"] / r["floor_ms"] if r.get("floor_ms") else None
    pct = 100 * r["extra_mib"] * 2**20 / r["bytes"] if r.get("extra_mib") is not None else None
    check = f"err {r['state_rel_err']:.1e}" if r.get("state_rel_err") is not None else ""
    if r.get("sync_free") is not True and "sync_free" in r:
        check += f" SYNC: {r['sync_free']}"
    if r.get("errors"):
        check += f" ERRORS {r['errors']}"
    print(f"{r['case'][:44]:<45}{r['variant'][:44]:<45}{fmt(r['ms'])}{fmt(r.get('floor_ms'))}"
          f"{fmt(ratio, '.2f', 7)}{fmt(pct, '.2f', 7)}% {check}", flush=flush)


def save(res: dict) -> None:
    out_dir = os.environ.get("OUT")
    if out_dir:
        path = Path(out_dir) / "token_stats_kernel.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2, default=str))
