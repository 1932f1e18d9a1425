"""Token statistics against their floors, in one command: issue 14's table.

Every row is `Run.observe` end to end (argument checks, the layout, the row launch and
the fold into the stream's float64 sums), not just the kernel, each against its own
floor measured in the same process: the bytes the call must read (the logits, plus the
teacher's) over the device's read bandwidth (the best of `torch.sum` and `torch.amax`
over the same tensor). "extra" is the peak of `torch.cuda.max_memory_allocated` over
one call above what was allocated before it. Every row is also checked: the fused
state against the torch path's (the reference) on the same inputs, and one call under
`torch.cuda.set_sync_debug_mode("error")`.

Sections, in this order: the fixed cost of a call (tiny logits); every row with its
launch variants, also `observe` end to end and checked (the module's default configs
swapped), then the PICK lines: which default to change (a checked variant at least 2%
faster on every case that default serves) or keep; the row kernel alone (per-row
outputs, no fold) and with ``--baseline FILE`` an earlier kernel side by side (e.g. the
per-row kernel of b4a8969: ``git show b4a8969:trainspect/kernels/token_stats_triton.py
> old.py``); the fused-loss entry point, the CUDA fallback without Triton and the CPU
table (`observe` against `F.cross_entropy`'s forward on the same logits).

    python benchmarks/token_stats_kernel.py            # one H100/H200: a few minutes
    python benchmarks/token_stats_kernel.py --warm 8   # first compile every launch in 8
                                                       # processes (the cache is shared)
    python benchmarks/token_stats_kernel.py --only observe,variants --deadline 60
    python benchmarks/token_stats_kernel.py --cpu      # the CPU table only
    TRITON_INTERPRET=1 python benchmarks/token_stats_kernel.py --tiny   # smoke test

Writes JSON to $OUT/token_stats_kernel.json when OUT is set (after every section).
Results, command and device are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trainspect as ts  # noqa: E402
from trainspect.kernels import token_stats_triton as tst  # noqa: E402
from trainspect.kernels.token_stats import valid_rows  # noqa: E402
from trainspect.kernels.token_stats_triton import TritonConfig  # noqa: E402
from trainspect.probes.tokens import TokenProbe  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from token_stats_common import (  # noqa: E402
    IGNORED,
    bench_ms,
    free,
    peak_extra_mib,
    picks,
    print_observe,
    read_gbs,
    save,
)
from token_stats_fallbacks import cpu_rows, fallback_rows  # noqa: E402

STARTED = time.perf_counter()


@dataclass
class Case:
    name: str
    lead: tuple[int, ...]  # leading axes of the logits (with the group axis, if any)
    vocab: int
    group: str | None = None
    teacher: bool = False
    slice_last: bool = False  # observe logits[:, :-1] with labels[:, 1:]
    backend: str = "auto"
    tiny_lead: tuple[int, ...] = (4,)  # the same layout, small: for --warm and --tiny
    variants: list = field(default_factory=list)  # (label, module attribute, TritonConfig)


LONG_VARIANTS = {
    "noise": ("per slot 512/2 (the default, again)", TritonConfig(512, 2, 2, slots=True)),
    "block512": ("per block 512/2", TritonConfig(512, 2, 2)),
    "slot1024": ("per slot 1024/2", TritonConfig(1024, 2, 2, slots=True)),
    "block1024": ("per block 1024/4", TritonConfig(1024, 4, 2)),
}


def _long(attr: str, *keys: str) -> list:
    """(label, module attribute, config) of the named long-row variants."""
    return [(LONG_VARIANTS[k][0], attr, LONG_VARIANTS[k][1]) for k in keys]


TEXT = ("block512", "slot1024", "block1024")  # every case of DEFAULT_CONFIG times these
SHORT_VARIANTS = [("1 warp, one program per row (the default, again)", "SHORT_CONFIG",
                   TritonConfig(16, 1, 1, -1)),
                  ("2 warps, one program per row", "SHORT_CONFIG", TritonConfig(16, 2, 1, -1)),
                  ("1 warp, resident grid", "SHORT_CONFIG", TritonConfig(16, 1, 1, 0)),
                  ("2 warps, resident grid", "SHORT_CONFIG", TritonConfig(16, 2, 1, 0)),
                  ("4 warps, one program per row", "SHORT_CONFIG", TritonConfig(16, 4, 1, -1)),
                  *((f"tile {rows} rows, {warps} warps, {'resident' if grid == 0 else 'per tile'}",
                     "SHORT_CONFIG", TritonConfig(16, warps, 1, grid, short_rows=rows))
                    for rows, warps, grid in ((2, 2, 0), (4, 4, 0), (8, 4, -1), (8, 8, 0)))]
TABLE = [
    Case("text, bf16, 32768x152064", (32768,), 152064,
         variants=_long("DEFAULT_CONFIG", "noise", *TEXT)),
    Case("with target_logits, 8192x152064", (8192,), 152064, teacher=True,
         variants=_long("TEACHER_CONFIG", "block512", "block1024")),
    Case("with target_logits, 32768x152064", (32768,), 152064, teacher=True,
         variants=_long("TEACHER_CONFIG", "block512", "block1024")),
    Case("audio codebooks [16, 1024, 8, 1026], group=cb", (16, 1024, 8), 1026, group="cb",
         tiny_lead=(2, 3, 8), variants=SHORT_VARIANTS),
    Case("draft heads [8, 1024, 4, 32000], group=pos", (8, 1024, 4), 32000, group="pos",
         tiny_lead=(2, 3, 4), variants=_long("DEFAULT_CONFIG", *TEXT)),
    Case("text, bf16, 8192x152064", (8192,), 152064, variants=_long("DEFAULT_CONFIG", *TEXT)),
    Case("logits[:, :-1] of [4, 2049, 152064]", (4, 2049), 152064, slice_last=True,
         tiny_lead=(4, 3), variants=_long("DEFAULT_CONFIG", *TEXT)),
    Case("torch path on CUDA (no Triton), 32768x152064", (32768,), 152064, backend="torch"),
]
TINY = [Case("text", (6,), 5000, variants=_long("DEFAULT_CONFIG", "noise", *TEXT)),
        Case("slice", (2, 9), 700, slice_last=True),
        Case("draft", (2, 3, 4), 600, group="pos"),
        Case("audio", (2, 5, 8), 1026, group="cb",
             variants=SHORT_VARIANTS[2:3] + SHORT_VARIANTS[-1:]),
        Case("teacher", (4,), 4200, teacher=True, variants=_long("TEACHER_CONFIG", "block512"))]
KERNEL_ALONE = [("text, bf16, 32768x152064", False), ("with target_logits, 8192x152064", True),
                ("with target_logits, 32768x152064", True)]


def make_inputs(case: Case, device: str, seed: int = 0, lead: tuple[int, ...] | None = None):
    """(logits, labels, teacher, tensors to keep): bf16 logits x 2 of N(0, 1)."""
    lead = case.lead if lead is None else lead
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(*lead, case.vocab, device=device, dtype=torch.bfloat16,
                         generator=gen).mul_(2.0)
    labels = torch.randint(0, case.vocab, lead, device=device, generator=gen)
    labels[torch.rand(lead, device=device, generator=gen) < IGNORED] = -100
    teacher = None
    if case.teacher:
        teacher = torch.randn(*lead, case.vocab, device=device, dtype=torch.bfloat16,
                              generator=gen).mul_(2.0)
    if case.slice_last:
        return logits[:, :-1], labels[:, 1:], None, (logits, labels)
    return logits, labels, teacher, (logits, labels, teacher)


def fused_state(backend: str, case: Case, x, y, t) -> list[torch.Tensor]:
    probe = TokenProbe(backend=backend)
    probe.update("s", case.group, x, y, None, t)
    s = probe.streams["s"]
    return [s.sums, s.calibration, s.counters]


def state_error(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    """Largest relative difference between two streams' states."""
    return max(float(((a - b).abs() / b.abs().clamp(min=1.0)).max()) for a, b in zip(got, want))


class Swap:
    """Set module attributes of token_stats_triton for a block (the default configs)."""

    def __init__(self, **values) -> None:
        self.values = values

    def __enter__(self) -> None:
        self.saved = {k: getattr(tst, k) for k in self.values}
        for k, v in self.values.items():
            setattr(tst, k, v)

    def __exit__(self, *exc) -> None:
        for k, v in self.saved.items():
            setattr(tst, k, v)


def observe_call(case: Case, run, x, y, t) -> Callable[[], None]:
    def call():
        run.observe(1, x, y, stream="s", group=case.group, target_logits=t)
    return call


def observe_rows_of(case: Case, cuda: bool, tiny: bool, res: dict) -> list[dict]:
    """The case's observe row with the defaults, then each variant, all checked."""
    device = "cuda" if cuda else "cpu"
    x, y, t, keep = make_inputs(case, device)
    nbytes = x.numel() * x.element_size() * (2 if case.teacher else 1)
    floor = None
    if cuda and not tiny:  # bandwidth over a contiguous tensor (a strided sum understates it)
        floor = nbytes / (read_gbs(keep[0]) * 1e9) * 1e3
    want = fused_state("torch", case, x, y, t) if case.backend == "auto" else None
    rows = []
    backend = "triton" if tiny else case.backend
    for label, attr, cfg in [("default", None, None)] + list(case.variants):
        if deadline_passed(res):
            break
        row = {"case": case.name, "variant": label, "bytes": nbytes, "floor_ms": floor,
               "attr": attr, "config": repr(cfg) if cfg else None}
        try:
            with Swap(**({attr: cfg} if attr else {})):
                time_observe(row, case, cuda, backend, x, y, t, want)
        except Exception as err:  # a variant that fails to compile or run: say so, go on
            row["failed"] = f"{type(err).__name__}: {str(err).strip()[:300]}"
            print(f"{case.name[:44]:<45}{label[:44]:<45} FAILED {row['failed']}", flush=True)
        rows.append(row)
        if "ms" in row:
            print_observe(row, flush=True)
    del x, y, t, keep
    free()
    return rows


def time_observe(row: dict, case: Case, cuda: bool, backend: str, x, y, t, want) -> None:
    """Fill ``row``: ms, extra memory, sync check, errors, state error of one launch."""
    with tempfile.TemporaryDirectory() as tmp:
        run = ts.init(project="bench", dir=tmp, log_every=10**9, samples_every=10**9)
        run.add_probe(TokenProbe(backend=backend))
        call = observe_call(case, run, x, y, t)
        call()  # compile and allocate the state
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                call()
                row["sync_free"] = True
            except RuntimeError as err:
                row["sync_free"] = f"no: {str(err).splitlines()[0][:100]}"
            finally:
                torch.cuda.set_sync_debug_mode(0)
            row["extra_mib"] = peak_extra_mib(call)
        row["ms"] = bench_ms(call, cuda, rep_ms=100 if row["attr"] is None else 60)
        row["errors"] = dict(run.errors)
        run.finish()
    if want is not None:
        row["state_rel_err"] = state_error(fused_state(backend, case, x, y, t), want)


def deadline_passed(res: dict) -> bool:
    if res["deadline_s"] and time.perf_counter() - STARTED > res["deadline_s"]:
        res.setdefault("skipped", []).append("deadline")
        return True
    return False


def load_baseline(path: str):
    """An earlier token_stats_triton.py as a module (its relative import made absolute)."""
    src = Path(path).read_text().replace("from .token_stats import",
                                         "from trainspect.kernels.token_stats import")
    tmp = Path(tempfile.mkdtemp()) / "baseline_kernel.py"
    tmp.write_text(src)
    spec = importlib.util.spec_from_file_location("baseline_kernel", tmp)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_kernel"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def kernel_call(x, y, t, cfg: TritonConfig) -> Callable[[], object]:
    return lambda: tst.row_stats_triton(x, y, target_logits=t, config=cfg)


def baseline_call(old, x, y, t) -> Callable[[], object]:
    """The baseline's row_stats_triton(logits, safe_labels, valid) of b4a8969."""
    valid, safe = valid_rows(y, x.shape[-1], -100)
    return lambda: old.row_stats_triton(x, safe, valid, target_logits=t)


def kernel_alone_rows(res: dict, baseline_path: str | None) -> list[dict]:
    """The row kernel alone (per-row outputs, no fold) for the default and per-slot long
    rows, and the baseline kernel's, on the same logits."""
    old = load_baseline(baseline_path) if baseline_path else None
    rows = []
    for name, teacher in KERNEL_ALONE:
        if deadline_passed(res):
            break
        case = next(c for c in TABLE if c.name == name)
        x, y, t, _ = make_inputs(case, "cuda")
        floor = x.numel() * 2 * (2 if teacher else 1) / (read_gbs(x) * 1e9) * 1e3
        calls = [(f"row_stats, {label}", kernel_call(x, y, t, cfg))
                 for label, cfg in (("per block 512/2", TritonConfig(512, 2, 2)),
                                    ("per slot 512/2", TritonConfig(512, 2, 2, slots=True)))]
        if old is not None:
            calls.append((f"baseline {Path(baseline_path).name}", baseline_call(old, x, y, t)))
        for label, fn in calls:
            try:
                fn()
                row = {"case": name, "variant": label, "ms": bench_ms(fn, True, rep_ms=60),
                       "floor_ms": floor}
            except Exception as err:  # a variant that fails: say so, go on
                rows.append({"case": name, "variant": label, "failed": repr(err)[:300]})
                print(f"  kernel alone  {name:<36}{label:<36} FAILED {rows[-1]['failed']}")
                continue
            rows.append(row)
            print(f"  kernel alone  {name:<36}{label:<36}{row['ms']:9.3f}"
                  f"{row['ms'] / floor:7.2f}x", flush=True)
        del x, y, t
        free()
    return rows


def fixed_cost(cuda: bool) -> dict:
    """A call on tiny logits: what every observe costs whatever its size."""
    device = "cuda" if cuda else "cpu"
    x = torch.randn(1, 16, 32, device=device)
    y = torch.randint(0, 32, (1, 16), device=device)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = ts.init(project="bench", dir=tmp, log_every=10**9, samples_every=10**9)
        run.observe(1, x, y)
        if cuda:
            out["observe, device ms"] = bench_ms(lambda: run.observe(1, x, y), True)
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(200):
            run.observe(1, x, y)
        if cuda:
            torch.cuda.synchronize()
        out["observe, host us per call"] = (time.perf_counter() - start) / 200 * 1e6
        run.finish()
    return out


def fused_loss_rows(cuda: bool) -> list[dict]:
    """observe_rows with the gradient written in place over the logits (a fused loss's
    chunk): reads the row twice and writes it once; floor = 3 x bytes / read bandwidth."""
    rows = []
    x, y, _, _ = make_inputs(Case("f", (8192,), 152064), "cuda")
    floor = 3 * x.numel() * 2 / (read_gbs(x) * 1e9) * 1e3
    probe = TokenProbe()
    scale = torch.tensor(1.0 / 8192, device="cuda")
    for name, kwargs in (("stats only (row_stats)", {}),
                         ("stats + fold (observe_rows)", {"fold": True}),
                         ("stats + fold + grad in place", {"fold": True, "grad": True}),
                         ("stats + fold + grad + softcap 30", {"fold": True, "grad": True,
                                                              "cap": 30.0})):
        def call(kw=kwargs, x=x, y=y):
            if kw.get("fold"):
                return probe.observe_rows("t", x, y, grad_out=x if kw.get("grad") else None,
                                          grad_scale=scale if kw.get("grad") else None,
                                          logit_softcap=kw.get("cap"))
            return tst.row_stats_triton(x, y)
        call()
        rows.append({"case": name, "ms": bench_ms(call, cuda, rep_ms=60),
                     "extra_mib": peak_extra_mib(call),
                     "floor_ms": floor if kwargs.get("grad") else floor / 3})
    rows.append({"case": "F.cross_entropy forward (reference)",
                 "ms": bench_ms(lambda x=x, y=y: F.cross_entropy(x, y), cuda, rep_ms=60),
                 "floor_ms": floor / 3})
    return rows


# ---- compiling every launch first, in several processes ----------------------------------


def warm_jobs() -> list[tuple[str, str]]:
    """(case name, variant label) of every observe launch the GPU sections time."""
    jobs = []
    for case in TABLE:
        if case.backend == "auto":
            jobs += [(case.name, "default")] + [(case.name, v[0]) for v in case.variants]
    return jobs


def warm_part(part: int, parts: int) -> None:
    """Compile this process's share of the launches on tiny inputs of the same layouts
    (the same specialisations: strides, alignment, dtypes) by calling them once."""
    for i, (name, label) in enumerate(warm_jobs()):
        if i % parts != part:
            continue
        case = next(c for c in TABLE if c.name == name)
        variant = next((v for v in case.variants if v[0] == label), None)
        x, y, t, _ = make_inputs(case, "cuda", lead=case.tiny_lead)
        try:
            with Swap(**({variant[1]: variant[2]} if variant else {})):
                fused_state("triton", case, x, y, t)
        except Exception as err:  # the timed run reports it again, with its row
            print(f"warm: {name} / {label} failed: {type(err).__name__}", flush=True)
    x, y, t, _ = make_inputs(Case("w", (4,), 152064, teacher=True), "cuda")
    if part == 0 % parts:  # the kernel alone
        for cfg in (TritonConfig(512, 2, 2), TritonConfig(512, 2, 2, slots=True)):
            tst.row_stats_triton(x, y, config=cfg)
            tst.row_stats_triton(x, y, target_logits=t, config=cfg)
    if part == 1 % parts:  # the fused-loss entry point
        probe, scale = TokenProbe(), torch.tensor(0.5, device="cuda")
        for grad, cap in ((False, None), (True, None), (True, 30.0)):
            probe.observe_rows("t", x, y, grad_out=x if grad else None,
                               grad_scale=scale if grad else None, logit_softcap=cap)
    torch.cuda.synchronize()


def warm(parts: int) -> float:
    """Run warm_part in ``parts`` processes at once; seconds taken."""
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, __file__, "--warm-part", f"{i}/{parts}"])
             for i in range(parts)]
    for p in procs:
        p.wait()
    return time.perf_counter() - start


def current_defaults() -> dict[str, str]:
    """The module's default launch configs now, as the variants' rows name them."""
    return {k: repr(getattr(tst, k)) for k in ("DEFAULT_CONFIG", "TEACHER_CONFIG",
                                                "SHORT_CONFIG")}


def section(res: dict, key: str, want: Callable[[str], bool], fn: Callable[[], object]) -> None:
    """Run one section when asked for and time is left; print and save what it gave."""
    if not want(key):
        return
    try:
        res[key] = fn()
    except Exception as err:  # the sections after it still run
        res[key] = {"failed": repr(err)[:500]}
    print(f"{key}: {json.dumps(res[key], default=str)}", flush=True)
    save(res)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--cpu", action="store_true", help="the CPU table only")
    parser.add_argument("--only", default="", help="comma list of sections, run in this "
                        "order: fixed, observe, kernel, fused, fallback, cpu")
    parser.add_argument("--warm", type=int, default=0, help="compile first in N processes")
    parser.add_argument("--warm-part", default="", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=0.0,
                        help="skip what is left after this many seconds (0: none)")
    parser.add_argument("--baseline", default="", help="an earlier token_stats_triton.py")
    args = parser.parse_args(argv)
    if args.warm_part:
        part, parts = map(int, args.warm_part.split("/"))
        warm_part(part, parts)
        return 0
    cuda = torch.cuda.is_available() and not args.cpu and not args.tiny
    res: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu",
                 "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                 "deadline_s": args.deadline}
    only = set(filter(None, args.only.split(",")))

    def want(name: str) -> bool:
        return (not only or name in only) and not deadline_passed(res)

    if cuda:
        import triton

        res["triton"] = triton.__version__
        if args.warm:
            res["warm_s"] = warm(args.warm)
            print(f"compiled every launch in {args.warm} processes: {res['warm_s']:.1f} s",
                  flush=True)
        section(res, "fixed", want, lambda: fixed_cost(cuda))  # first: small, and a target
        if want("observe"):
            print(f"{'observe of':<45}{'variant':<45}{'ms':>9}{'floor':>9}{'x':>7}{'extra':>8}",
                  flush=True)
            res["observe"] = []
            for case in TABLE:
                if want("observe"):
                    res["observe"] += observe_rows_of(case, cuda, False, res)
                    save(res)
            res["picks"] = picks(res["observe"], current_defaults())
            save(res)
        section(res, "kernel", want, lambda: kernel_alone_rows(res, args.baseline or None))
        section(res, "fused", want, lambda: fused_loss_rows(cuda))
        section(res, "fallback", want, lambda: fallback_rows(cuda))
    elif args.tiny:
        res["observe"] = [r for c in TINY for r in observe_rows_of(c, False, True, res)]
        res["picks"] = picks(res["observe"], current_defaults())
    if want("cpu"):
        res["cpu"] = cpu_rows(args.tiny)
    res["seconds"] = time.perf_counter() - STARTED
    save(res)
    print(f"\ndevice: {res['device']}; torch {res['torch']}; triton {res.get('triton', '-')}; "
          f"{res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
