"""Token statistics against their floors, in one command: issue 14's table.

Every row is `Run.observe` end to end (argument checks, the layout, the launch and the
fold into the stream's float64 sums), not just the kernel, each against its own floor
measured in the same process: the bytes the call must read (the logits, plus the
teacher's) over the device's read bandwidth (the best of `torch.sum` and `torch.amax`
over the same tensor). "extra" is the peak of `torch.cuda.max_memory_allocated` over
one call above what was allocated before it. Every row is also checked: the fused
state against the torch path's (the reference) on the same inputs, and one call under
`torch.cuda.set_sync_debug_mode("error")`.

Then: the fixed cost of a call (tiny logits), the kernel alone for a few launch
configurations, the teacher's configurations, the fused-loss entry point
(`observe_rows` with the gradient written in place), the CUDA fallback without Triton
against `F.cross_entropy` and the seeds' eager fp32 code, and the CPU table (`observe`
against `F.cross_entropy`'s forward on the same logits).

    python benchmarks/token_stats_kernel.py            # one H100/H200: a few minutes
    python benchmarks/token_stats_kernel.py --cpu      # the CPU table only
    TRITON_INTERPRET=1 python benchmarks/token_stats_kernel.py --tiny   # smoke test

Writes JSON to $OUT/token_stats_kernel.json when OUT is set. Results, command and
device are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
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
from trainspect.kernels.token_stats_triton import TritonConfig  # noqa: E402
from trainspect.kernels.token_sums import new_state  # noqa: E402
from trainspect.probes.tokens import TokenProbe  # noqa: E402

IGNORED = 0.1  # share of labels set to -100


@dataclass
class Case:
    name: str
    lead: tuple[int, ...]  # leading axes of the logits (with the group axis, if any)
    vocab: int
    group: str | None = None
    teacher: bool = False
    slice_last: bool = False  # observe logits[:, :-1] with labels[:, 1:]
    backend: str = "auto"
    extra: dict = field(default_factory=dict)


TABLE = [
    Case("text, bf16, 32768x152064", (32768,), 152064),
    Case("text, bf16, 8192x152064", (8192,), 152064),
    Case("logits[:, :-1] of [4, 2049, 152064]", (4, 2049), 152064, slice_last=True),
    Case("draft heads [8, 1024, 4, 32000], group=pos", (8, 1024, 4), 32000, group="pos"),
    Case("audio codebooks [16, 1024, 8, 1026], group=cb", (16, 1024, 8), 1026, group="cb"),
    Case("with target_logits, 8192x152064", (8192,), 152064, teacher=True),
    Case("with target_logits, 32768x152064", (32768,), 152064, teacher=True),
    Case("torch path on CUDA (no Triton), 32768x152064", (32768,), 152064, backend="torch"),
]
TINY = [
    Case("text", (48,), 5000), Case("slice", (2, 9), 700, slice_last=True),
    Case("draft", (2, 3, 4), 600, group="pos"), Case("audio", (2, 5, 8), 1026, group="cb"),
    Case("teacher", (12,), 4200, teacher=True),
]
CPU_SHAPES = [(torch.float32, 32000), (torch.bfloat16, 32000), (torch.float32, 152064),
              (torch.bfloat16, 152064)]


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


def make_inputs(case: Case, device: str, seed: int = 0):
    gen = torch.Generator(device=device).manual_seed(seed)
    logits = torch.randn(*case.lead, case.vocab, device=device, dtype=torch.bfloat16,
                         generator=gen).mul_(2.0)
    labels = torch.randint(0, case.vocab, case.lead, device=device, generator=gen)
    labels[torch.rand(case.lead, device=device, generator=gen) < IGNORED] = -100
    teacher = None
    if case.teacher:
        teacher = torch.randn(*case.lead, case.vocab, device=device, dtype=torch.bfloat16,
                              generator=gen).mul_(2.0)
    if case.slice_last:
        return logits[:, :-1], labels[:, 1:], None, (logits, labels)
    return logits, labels, teacher, (logits, labels, teacher)


def state_error(case: Case, x, y, t) -> float:
    """Largest relative difference between the fused state and the torch path's."""
    states = []
    for backend in ("triton", "torch"):
        probe = TokenProbe(backend=backend)
        probe.update("s", case.group, x, y, None, t)
        s = probe.streams["s"]
        states.append([s.sums, s.calibration, s.counters])
    worst = 0.0
    for a, b in zip(*states):
        worst = max(worst, float(((a - b).abs() / b.abs().clamp(min=1.0)).max()))
    return worst


def observe_row(case: Case, cuda: bool, tiny: bool) -> dict:
    device = "cuda" if cuda else "cpu"
    x, y, t, keep = make_inputs(case, device)
    nbytes = x.numel() * x.element_size() * (2 if case.teacher else 1)
    if case.slice_last:  # the rows actually read: B * (T - 1) of them
        nbytes = x.shape[0] * x.shape[1] * x.shape[2] * x.element_size()
    row = {"case": case.name, "bytes": nbytes}
    with tempfile.TemporaryDirectory() as tmp:
        run = ts.init(project="bench", dir=tmp, log_every=10**9, samples_every=10**9)
        run.add_probe(TokenProbe(backend=case.backend))

        def call():
            run.observe(1, x, y, stream="s", group=case.group, target_logits=t)

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
            # bandwidth over a contiguous tensor (a strided torch.sum would understate it)
            row["floor_ms"] = nbytes / (read_gbs(keep[0]) * 1e9) * 1e3 if not tiny else None
        row["ms"] = bench_ms(call, cuda)
        row["errors"] = dict(run.errors)
        run.finish()
    row["state_rel_err"] = state_error(case, x, y, t) if case.backend == "auto" else None
    return row


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
        for _ in range(500):
            run.observe(1, x, y)
        if cuda:
            torch.cuda.synchronize()
        out["observe, host us per call"] = (time.perf_counter() - start) / 500 * 1e6
        run.finish()
    if cuda:
        state = new_state(1, torch.device(device))
        flat_x, flat_y = x.view(-1, 32), y.view(-1)
        tst.fold_triton(flat_x, flat_y, None, None, 1, state)
        out["fold kernel alone, device ms"] = bench_ms(
            lambda: tst.fold_triton(flat_x, flat_y, None, None, 1, state), True)
    return out


def kernel_rows(cuda: bool) -> list[dict]:
    """The kernel alone (no fold; per-row outputs), a few launch configurations."""
    rows = []
    for n, vocab in ((32768, 152064), (8192, 32000)):
        x, y, _, _ = make_inputs(Case("k", (n,), vocab), "cuda")
        floor = x.numel() * 2 / (read_gbs(x) * 1e9) * 1e3
        for cfg in tst.BENCH_CONFIGS:
            ms = bench_ms(lambda c=cfg, x=x, y=y: tst.row_stats_triton(x, y, config=c), cuda)
            rows.append({"shape": f"{n}x{vocab}", "config": str(cfg), "ms": ms,
                         "floor_ms": floor})
        state = new_state(1, x.device)
        for cfg in tst.BENCH_CONFIGS:
            ms = bench_ms(lambda c=cfg, x=x, y=y, s=state: tst.fold_triton(x, y, None, None, 1, s,
                                                                          config=c), cuda)
            rows.append({"shape": f"{n}x{vocab} fold", "config": str(cfg), "ms": ms,
                         "floor_ms": floor})
        free()
    return rows


TEACHER_CONFIGS = (TritonConfig(512, 2, 2), TritonConfig(512, 2, 2, programs_per_sm=-1),
                   TritonConfig(2048, 8, 2, programs_per_sm=2),
                   TritonConfig(1024, 4, 2, programs_per_sm=4))


def teacher_rows(cuda: bool) -> list[dict]:
    rows = []
    for n in (8192, 32768):
        x, y, t, _ = make_inputs(Case("t", (n,), 152064, teacher=True), "cuda")
        floor = 2 * x.numel() * 2 / (read_gbs(x) * 1e9) * 1e3
        state = new_state(1, x.device)
        for cfg in TEACHER_CONFIGS:
            ms = bench_ms(lambda c=cfg, x=x, y=y, t=t, s=state: tst.fold_triton(
                x, y, None, t, 1, s, config=c), cuda)
            rows.append({"shape": f"{n}x152064 + teacher", "config": str(cfg), "ms": ms,
                         "floor_ms": floor})
        free()
    return rows


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
        rows.append({"case": name, "ms": bench_ms(call, cuda), "extra_mib": peak_extra_mib(call),
                     "floor_ms": floor if kwargs.get("grad") else floor / 3})
    rows.append({"case": "F.cross_entropy forward (reference)",
                 "ms": bench_ms(lambda x=x, y=y: F.cross_entropy(x, y), cuda),
                 "floor_ms": floor / 3})
    return rows


def variant_rows(cuda: bool) -> list[dict]:
    """The draft-head and audio rows under other launch choices, each checked against the
    torch path: which would be the better default."""
    rows = []
    for case, variants in (
        (TABLE[4], [("short rows, 2 warps (default)", {}), ("short rows, 4 warps",
                                                         {"SHORT_WARPS": 4}),
                    ("short rows, 8 warps", {"SHORT_WARPS": 8}),
                    ("long rows 512/2 per token", {"SHORT_MAX_VOCAB": 0,
                                                   "config": TritonConfig(512, 2, 2, -1)}),
                    ("long rows 256/1 persistent", {"SHORT_MAX_VOCAB": 0,
                                                    "config": TritonConfig(256, 1, 2, 0)})]),
        (TABLE[3], [("1024/4 per token (default)", {}),
                    ("512/2 per token", {"config": TritonConfig(512, 2, 2, -1)}),
                    ("512/2 persistent", {"config": TritonConfig(512, 2, 2, 0)}),
                    ("1024/4 persistent", {"config": TritonConfig(1024, 4, 2, 0)})]),
    ):
        x, y, _, _ = make_inputs(case, "cuda" if cuda else "cpu")
        floor = x.numel() * 2 / (read_gbs(x) * 1e9) * 1e3 if cuda else 1.0
        ref = TokenProbe(backend="torch")
        ref.update("s", case.group, x, y, None, None)
        want = ref.streams["s"]
        for name, knobs in variants:
            saved = {k: getattr(tst, k) for k in knobs if k != "config"}
            for k, v in knobs.items():
                if k != "config":
                    setattr(tst, k, v)
            state = new_state(x.shape[-2], x.device)
            cfg = knobs.get("config")
            tst.fold_triton(x, y, None, None, x.shape[-2], state, config=cfg)
            err = max(float(((a - b).abs() / b.abs().clamp(min=1.0)).max()) for a, b in
                      zip(state[:3], (want.sums, want.calibration, want.counters)))
            ms = bench_ms(lambda c=cfg, s=state, x=x, y=y: tst.fold_triton(
                x, y, None, None, x.shape[-2], s, config=c), cuda)
            rows.append({"case": f"{case.name}: {name}", "ms": ms, "floor_ms": floor,
                         "state_rel_err": err})
            for k, v in saved.items():
                setattr(tst, k, v)
        free()
    return rows


def seed_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The seeds' straightforward fp32 code: what people write before a fused pass exists."""
    x = logits.float()
    p = torch.softmax(x, dim=-1)
    logp = torch.log_softmax(x, dim=-1)
    conf, argmax = p.max(dim=-1)
    safe = labels.clamp(min=0)
    return conf, argmax, logp.gather(-1, safe[:, None]), -(p * logp).sum(dim=-1)


def fallback_rows(cuda: bool) -> list[dict]:
    """The torch path on CUDA (no Triton) against the code it replaces, same logits."""
    x, y, _, _ = make_inputs(Case("c", (32768,), 152064), "cuda")
    out = []
    for name, fn in (("F.cross_entropy forward", lambda x=x, y=y: F.cross_entropy(x, y)),
                     ("seed eager fp32 code", lambda x=x, y=y: seed_stats(x, y)),
                     ("row_stats backend=torch", lambda x=x, y=y: ts_row_stats(x, y)),
                     ("row_stats backend=torch, 1 GiB workspace",
                      lambda x=x, y=y: ts_row_stats(x, y, 2**30))):
        try:
            fn()
            out.append({"case": name, "ms": bench_ms(fn, cuda, rep_ms=300),
                        "extra_mib": peak_extra_mib(fn)})
        except torch.cuda.OutOfMemoryError:
            out.append({"case": name, "ms": None, "extra_mib": None, "note": "OOM"})
        free()
    return out


def ts_row_stats(x, y, workspace=None):
    from trainspect.kernels import row_stats

    return row_stats(x, y, backend="torch", max_workspace_bytes=workspace)


CPU_CHUNKS = (2**16, 2**18, 2**20)  # elements per thread of a chunk of the CPU path


def cpu_rows(tiny: bool) -> list[dict]:
    """CPU: observe (the torch path) against F.cross_entropy's forward on [4, 512, V], for
    a few chunk sizes of the torch path (the default is token_stats_torch's)."""
    from trainspect.kernels import token_stats_torch

    default = token_stats_torch.CPU_CHUNK_ELEMENTS_PER_THREAD
    rows = []
    shapes = [(torch.float32, 1000)] if tiny else CPU_SHAPES
    for dtype, vocab in shapes:
        gen = torch.Generator().manual_seed(vocab)
        x = (torch.randn(4, 512, vocab, generator=gen) * 2).to(dtype)
        y = torch.randint(0, vocab, (4, 512), generator=gen)
        y[torch.rand(4, 512, generator=gen) < IGNORED] = -100
        with tempfile.TemporaryDirectory() as tmp:
            run = ts.init(project="bench", dir=tmp, log_every=10**9, samples_every=10**9)
            run.observe(1, x, y)
            times: dict = {"ce": []}
            for _ in range(3):  # alternate, so drift hits all alike
                times["ce"].append(bench_ms(lambda x=x, y=y, v=vocab: F.cross_entropy(
                    x.view(-1, v), y.view(-1)), False))
                for chunk in CPU_CHUNKS:
                    token_stats_torch.CPU_CHUNK_ELEMENTS_PER_THREAD = chunk
                    times.setdefault(chunk, []).append(
                        bench_ms(lambda x=x, y=y, r=run: r.observe(1, x, y), False))
                token_stats_torch.CPU_CHUNK_ELEMENTS_PER_THREAD = default
                if dtype != torch.float32:  # reduce bf16 directly instead of converting first
                    token_stats_torch.CPU_CONVERT_FIRST = False
                    times.setdefault("direct", []).append(
                        bench_ms(lambda x=x, y=y, r=run: r.observe(1, x, y), False))
                    token_stats_torch.CPU_CONVERT_FIRST = True
            run.finish()
        ce = statistics.median(times["ce"])
        row = {"dtype": str(dtype).replace("torch.", ""), "vocab": vocab, "f_ce_ms": ce,
               "observe_ms": statistics.median(times[default])}
        row["ratio"] = row["observe_ms"] / ce
        row["by_chunk"] = {c: statistics.median(times[c]) / ce for c in CPU_CHUNKS}
        if "direct" in times:
            row["by_chunk"]["bf16 reduced directly"] = statistics.median(times["direct"]) / ce
        rows.append(row)
    return rows


def fmt(v, spec=".3f", width=9) -> str:
    return f"{v:{width}{spec}}" if isinstance(v, (int, float)) else f"{'-':>{width}}"


def print_tables(res: dict) -> None:
    if res.get("observe"):
        print("\n== observe end to end (each against its own floor) ==")
        print(f"{'observe of':<48}{'ms':>9}{'floor':>9}{'x floor':>9}{'extra MiB':>11}"
              f"{'% logits':>9}  check")
        for r in res["observe"]:
            ratio = r["ms"] / r["floor_ms"] if r.get("floor_ms") else None
            pct = 100 * r["extra_mib"] * 2**20 / r["bytes"] if r.get("extra_mib") is not None \
                else None
            check = f"state err {r['state_rel_err']:.1e}" if r.get("state_rel_err") is not None \
                else ""
            if r.get("sync_free") is not True and "sync_free" in r:
                check += f" SYNC: {r['sync_free']}"
            if r.get("errors"):
                check += f" ERRORS {r['errors']}"
            print(f"{r['case']:<48}{fmt(r['ms'])}{fmt(r.get('floor_ms'))}{fmt(ratio, '.2f')}"
                  f"{fmt(r.get('extra_mib'), '.1f', 11)}{fmt(pct, '.2f')}  {check}")
    if res.get("fixed"):
        print("\n== fixed cost of one call (tiny logits) ==")
        for k, v in res["fixed"].items():
            print(f"{k:<50}{v:10.4f}")
    for key, title in (("kernel", "kernel alone / fold, launch configurations"),
                       ("teacher", "teacher configurations (fold)")):
        if res.get(key):
            print(f"\n== {title} ==")
            for r in res[key]:
                print(f"{r['shape']:<28}{r['config']:<75}{r['ms']:9.3f}"
                      f"{r['ms'] / r['floor_ms']:7.2f}x")
    if res.get("variants"):
        print("\n== launch variants of the draft-head and audio rows (fold alone) ==")
        for r in res["variants"]:
            print(f"{r['case']:<86}{r['ms']:8.3f}{r['ms'] / r['floor_ms']:7.2f}x  "
                  f"state err {r['state_rel_err']:.1e}")
    if res.get("fused_loss"):
        print("\n== the fused-loss entry point, 8192x152064 bf16 ==")
        for r in res["fused_loss"]:
            print(f"{r['case']:<40}{r['ms']:9.3f} ms {r['ms'] / r['floor_ms']:6.2f}x floor"
                  f"{fmt(r.get('extra_mib'), '.1f', 9)} MiB")
    if res.get("fallback"):
        print("\n== CUDA without Triton, 32768x152064 bf16 ==")
        for r in res["fallback"]:
            print(f"{r['case']:<32}{fmt(r['ms'])} ms{fmt(r.get('extra_mib'), '.0f', 9)} MiB "
                  f"{r.get('note', '')}")
    if res.get("cpu"):
        print(f"\n== CPU ({res.get('cpu_threads')} threads): observe vs F.cross_entropy "
              f"forward, [4, 512, V] ==")
        print(f"{'dtype':<10}{'V':>8}{'F.ce ms':>10}{'observe':>10}{'ratio':>8}   ratio by "
              f"chunk elements per thread {list(CPU_CHUNKS)}, then bf16 not converted first")
        for r in res["cpu"]:
            by = "  ".join(f"{v:.2f}" for v in r["by_chunk"].values())
            print(f"{r['dtype']:<10}{r['vocab']:>8}{r['f_ce_ms']:10.2f}{r['observe_ms']:10.2f}"
                  f"{r['ratio']:8.2f}x  {by}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke test)")
    parser.add_argument("--cpu", action="store_true", help="the CPU table only")
    parser.add_argument("--only", default="", help="comma list of sections to run")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu and not args.tiny
    started = time.perf_counter()
    res: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu",
                 "torch": torch.__version__, "cpu_threads": torch.get_num_threads()}
    only = set(filter(None, args.only.split(",")))

    def want(name: str) -> bool:
        return not only or name in only

    if cuda:
        import triton

        res["triton"] = triton.__version__
        if want("observe"):
            res["observe"] = [observe_row(c, cuda, False) for c in TABLE]
        if want("fixed"):
            res["fixed"] = fixed_cost(cuda)
        if want("kernel"):
            res["kernel"] = kernel_rows(cuda)
        if want("teacher"):
            res["teacher"] = teacher_rows(cuda)
        if want("variants"):
            res["variants"] = variant_rows(cuda)
        if want("fused"):
            res["fused_loss"] = fused_loss_rows(cuda)
        if want("fallback"):
            res["fallback"] = fallback_rows(cuda)
    elif args.tiny:
        res["observe"] = [observe_row(c, False, True) for c in TINY]
    if want("cpu") and not (args.tiny and cuda):
        res["cpu"] = cpu_rows(args.tiny)
    res["seconds"] = time.perf_counter() - started
    print_tables(res)
    print(f"\ndevice: {res['device']}; torch {res['torch']}; triton {res.get('triton', '-')}; "
          f"{res['seconds']:.0f} s")
    out_dir = os.environ.get("OUT")
    if out_dir:
        path = Path(out_dir) / "token_stats_kernel.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=2, default=str))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
