"""The fused linear cross-entropy side by side, forward + backward, in one process.

    python benchmarks/linear_ce.py                  # the GPU table (needs CUDA)
    python benchmarks/linear_ce.py --device cpu     # the chunked path's peak memory on CPU
    python benchmarks/linear_ce.py --quick          # two small sizes, few repeats
    python benchmarks/linear_ce.py --sweep          # the row pass's Triton configs first

GPU: stock `lm_head` + `F.cross_entropy` (the logits built, upcast to fp32 as
transformers does), Liger-Kernel's fused linear cross-entropy, Apple's Cut
Cross-Entropy, and `ts.linear_cross_entropy` without and with a run (every statistic
and the flush every 10 steps), bf16, H = 4096, N = 8x1024 and 16x2048 tokens,
V = 152,064 and 256,000. Per method: the median time of forward + backward (CUDA
events around each call, inputs already on the device), the peak memory above the
inputs (`max_memory_allocated`, the gradients of hidden and weight included), and the
ratios the targets of docs/benchmarks.md are stated in. Then: loss and gradients of
each method against float64 at N = 2048 (relative norm error), and ours with a run
under `torch.cuda.set_sync_debug_mode("error")` across a flush and a sample step.

CPU: the chunked PyTorch path's peak resident memory above its inputs and the
gradients it returns (VmHWM, reset through /proc/self/clear_refs), against the fp32
logits it avoids.

Liger-Kernel and cut-cross-entropy are optional: a method whose package is missing is
reported as such. Results, command and device go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trainspect as ts  # noqa: E402

SIZES = [(8 * 1024, 4096, 152064), (8 * 1024, 4096, 256000), (16 * 2048, 4096, 152064),
         (16 * 2048, 4096, 256000)]
QUICK_SIZES = [(2048, 1024, 32000), (4096, 2048, 152064)]


def stock(h, w, y):
    return F.cross_entropy(F.linear(h, w).float(), y)


def liger():
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError as err:
        return None, f"liger-kernel missing ({err})"
    return (lambda h, w, y: liger_fused_linear_cross_entropy(h, w, y)), None


def cce():
    try:
        from cut_cross_entropy import linear_cross_entropy
    except ImportError as err:
        return None, f"cut-cross-entropy missing ({err})"
    return (lambda h, w, y: linear_cross_entropy(h, w, y)), None


def ours(h, w, y):
    return ts.linear_cross_entropy(h, w, y)


class WithRun:
    """Ours with a run: every statistic recorded, the step advancing each call."""

    def __init__(self, root: str) -> None:
        self.run = ts.init(project="bench", dir=root, log_every=10, samples_every=10**9,
                           alerts=False)
        self.step = 0

    def __call__(self, h, w, y):
        self.step += 1
        return ts.linear_cross_entropy(h, w, y, run=self.run, step=self.step)


def inputs(n, hdim, v, seed=0, dtype=torch.bfloat16):
    g = torch.Generator(device="cuda").manual_seed(seed)
    h = (torch.randn(n, hdim, device="cuda", generator=g) * 0.5).to(dtype).requires_grad_()
    w = (torch.randn(v, hdim, device="cuda", generator=g) / hdim ** 0.5 * 4).to(
        dtype).requires_grad_()
    y = torch.randint(0, v, (n,), device="cuda", generator=g)
    y[torch.rand(n, device="cuda", generator=g) < 0.1] = -100
    return h, w, y


def time_and_memory(fn, h, w, y, repeats: int) -> tuple[float, float]:
    """Median ms of forward + backward, and the peak bytes above what was allocated."""
    def once():
        h.grad = w.grad = None
        fn(h, w, y).backward()

    for _ in range(2):
        once()
    torch.cuda.synchronize()
    h.grad = w.grad = None
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    once()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    times = []
    for _ in range(repeats):
        h.grad = w.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(h, w, y).backward()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    h.grad = w.grad = None
    return statistics.median(times), peak


def accuracy(methods: dict, n=2048, hdim=4096, v=152064) -> dict:
    """Relative norm error of loss, grad hidden and grad weight against float64."""
    h, w, y = inputs(n, hdim, v, seed=1)
    h64 = h.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    ref = F.cross_entropy(h64 @ w64.T, y)
    ref.backward()
    out = {}
    for name, fn in methods.items():
        h.grad = w.grad = None
        loss = fn(h, w, y)
        loss.backward()
        errs = [abs(float(loss.detach()) - float(ref.detach())) / abs(float(ref.detach()))]
        for got, want in ((h.grad, h64.grad), (w.grad, w64.grad)):
            errs.append(float((got.double() - want).norm() / want.norm()))
        out[name] = errs
    h.grad = w.grad = None
    return out


def sync_free(root: str) -> str:
    """Ours with a run, across flush windows and sample steps, under the debug mode; a
    probe switched off by a sync is a failure too (its traceback goes to the log)."""
    import logging

    logging.basicConfig(level=logging.WARNING)  # a handler for the tracebacks
    logging.getLogger("trainspect").setLevel(logging.DEBUG)
    h, w, y = inputs(4096, 1024, 32000, seed=2)
    y2 = y.view(4, 1024)
    with ts.init(project="sync", dir=root, log_every=2, samples_every=3) as run:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step in range(1, 7):
                loss = ts.linear_cross_entropy(h.view(4, 1024, -1), w, y2, run=run, step=step)
                loss.backward()
        except RuntimeError as err:
            return f"FAILED: {err}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
            logging.getLogger("trainspect").setLevel(logging.WARNING)
    view = ts.open(root).run(run.id)
    failed = [a["message"] for a in view.alerts() if a["rule"] == "probe_failed"]
    if failed or not view.series("text/acc") or not view.samples():
        return f"FAILED: probes switched off {failed}, acc {view.series('text/acc')}"
    return "0 host syncs in 6 steps (3 flush windows, 2 sample steps; statistics recorded)"


SWEEP = [(512, 2), (2048, 4), (4096, 8), (8192, 16), (4096, 16)]


def sweep(repeats: int) -> dict:
    """Ours (no run) per Triton launch config of the chunk's row pass; returns the best."""
    from trainspect.kernels import linear_ce

    totals = {}
    print("| N | V | block_v, warps | fwd+bwd ms |\n|---|---|---|---|")
    for n, hdim, v in SIZES[:2]:
        h, w, y = inputs(n, hdim, v)
        for block, warps in SWEEP:
            linear_ce.CHUNK_CONFIG = {"block_v": block, "num_warps": warps}
            ms, _ = time_and_memory(ours, h, w, y, repeats)
            totals[(block, warps)] = totals.get((block, warps), 0.0) + ms
            print(f"| {n} | {v} | {block}, {warps} | {ms:.1f} |", flush=True)
        del h, w, y
        torch.cuda.empty_cache()
    best = min(totals, key=totals.get)
    linear_ce.CHUNK_CONFIG = {"block_v": best[0], "num_warps": best[1]}
    print(f"row-pass config for the table: block_v={best[0]}, num_warps={best[1]}", flush=True)
    return linear_ce.CHUNK_CONFIG


def gpu(args) -> None:
    root = tempfile.mkdtemp()
    methods, missing = {"stock": stock}, {}
    for name, make in (("liger", liger), ("cce", cce)):
        fn, why = make()
        if fn is None:
            missing[name] = why
        else:
            methods[name] = fn
    methods.update(ours=ours, ours_run=None)
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    print("missing:", missing or "none", flush=True)
    print("sync check:", sync_free(root), flush=True)
    config = sweep(args.repeats) if args.sweep else None
    rows = []
    for n, hdim, v in (QUICK_SIZES if args.quick else SIZES):
        row = {"N": n, "H": hdim, "V": v}
        h, w, y = inputs(n, hdim, v)
        methods["ours_run"] = with_run = WithRun(root)  # a run per size: one vocabulary
        for name, fn in methods.items():
            try:
                ms, peak = time_and_memory(fn, h, w, y, args.repeats)
                row[name] = (ms, peak / 2**30)
            except torch.OutOfMemoryError:
                row[name] = None
                torch.cuda.empty_cache()
            print(n, hdim, v, name, row[name], flush=True)
        with_run.run.finish()
        del h, w, y
        torch.cuda.empty_cache()
        rows.append(row)
    print("\n| N | V | method | fwd+bwd ms | peak extra GiB |")
    print("|---|---|---|---|---|")
    for row in rows:
        for name in methods:
            got = row.get(name)
            cell = "OOM" if got is None else f"{got[0]:.1f} | {got[1]:.2f}"
            print(f"| {row['N']} | {row['V']} | {name} | {cell} |")
    print("\n| N | V | ours/liger time | ours/cce time | ours/cce memory | run/ours time |")
    print("|---|---|---|---|---|---|")
    def ratio(row, a, b, i):
        return "-" if row.get(a) is None or row.get(b) is None else \
            f"{row[a][i] / row[b][i]:.3f}"

    for row in rows:
        print(f"| {row['N']} | {row['V']} | {ratio(row, 'ours', 'liger', 0)} | "
              f"{ratio(row, 'ours', 'cce', 0)} | {ratio(row, 'ours', 'cce', 1)} | "
              f"{ratio(row, 'ours_run', 'ours', 0)} |")
    acc = accuracy({k: v for k, v in methods.items() if k != "ours_run"})
    print("\nrelative error vs float64 at N=2048, H=4096, V=152064 (loss, grad_h, grad_w):")
    for name, errs in acc.items():
        print(f"  {name}: " + ", ".join(f"{e:.2e}" for e in errs))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "accuracy": acc,
                                               "config": config}, indent=1))


# ---- CPU: peak resident memory ---------------------------------------------------------------

def _hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def cpu_peak(method: str, n: int, hdim: int, v: int) -> dict:
    """Peak resident bytes of one forward + backward above its inputs and the two
    gradients it must return (hidden's and weight's, fp32), which no method avoids."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, hdim, generator=g).requires_grad_()
    w = (torch.randn(v, hdim, generator=g) / hdim ** 0.5).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    fn = ours if method == "ours" else stock
    fn(h, w, y).backward()  # warm: allocator pools settle
    h.grad = w.grad = None
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    before = _rss_bytes()
    start = time.perf_counter()
    fn(h, w, y).backward()
    seconds = time.perf_counter() - start
    extra = _hwm_bytes() - before - (n * hdim + v * hdim) * 4
    logits = n * v * 4
    return {"method": method, "N": n, "H": hdim, "V": v, "extra_MiB": extra / 2**20,
            "fp32_logits_MiB": logits / 2**20, "extra/logits": extra / logits, "s": seconds}


def cpu(args) -> None:
    import subprocess

    torch.set_num_threads(2)
    sizes = [(4096, 512, 32000), (2048, 1024, 152064)]
    print("| N | H | V | method | peak extra MiB | fp32 logits MiB | extra / logits | s |")
    print("|---|---|---|---|---|---|---|---|")
    for n, hdim, v in sizes:
        for method in ("ours", "stock"):
            code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                    f"import linear_ce as b; print(json.dumps(b.cpu_peak({method!r}, {n}, "
                    f"{hdim}, {v})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            r = json.loads(out)
            print(f"| {n} | {hdim} | {v} | {method} | {r['extra_MiB']:.0f} | "
                  f"{r['fp32_logits_MiB']:.0f} | {r['extra/logits']:.3f} | {r['s']:.2f} |",
                  flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", default=None, help="also write the numbers here")
    parser.add_argument("--sweep", action="store_true",
                        help="first time the row pass's Triton configs; the table uses the best")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        cpu(args)
    else:
        gpu(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
