"""Benchmark of the fused token-statistics pass against its one-read floor and the seed code.

For each shape (bf16 logits, ~10% ignored labels) it measures, in one process:

- floor: bytes of the logits / device read bandwidth, the bandwidth measured here and now
  (the best of a large ``torch.sum`` and ``torch.amax`` over the same logits);
- triton: our kernel, for each of a few block/warp configurations (the best is marked);
- triton+teacher: the same with ``target_logits`` (two rows read, then re-read for alpha);
- torch path: our chunked PyTorch backend (the CUDA fallback without triton);
- seed: the straightforward fp32 code people write (``logits.float()``, softmax,
  log_softmax, max, gather, entropy = -(p * logp).sum(-1));
- seed compiled: ``torch.compile`` of that seed code.

Times are medians of ``triton.testing.do_bench``; "extra MiB" is the peak of
``torch.cuda.max_memory_allocated`` over the call, minus what was allocated before it.
It also checks the Triton result against the torch path on the benchmark data.
Writes the results as JSON to ``$OUT/token_stats_kernel.json`` when OUT is set.

    python benchmarks/token_stats_kernel.py              # on an H100/H200, under a minute
    TRITON_INTERPRET=1 python benchmarks/token_stats_kernel.py --tiny   # CPU smoke test

Last measured (one H200, torch 2.11, triton 3.6; read bandwidth by torch.sum 4.09 TB/s):

    shape            floor    triton (best b512 w2)   torch.compile seed   eager seed
    32768 x 152064   2.44 ms  2.76 ms  1.13x floor    12.14 ms (4.4x ours)  74.7 ms, 74 GiB extra
    8192 x 32000     0.14 ms  0.167 ms 1.19x floor     0.80 ms (4.8x ours)  3.7 ms, 3.9 GiB extra

With a teacher: 12.95 ms at 152k (both tensors read, then re-read mostly from HBM).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

try:
    from trainspect.kernels.token_stats import row_stats, valid_rows
except ImportError:  # run from a checkout without installing: the repo root is one up
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from trainspect.kernels.token_stats import row_stats, valid_rows
from trainspect.kernels import token_stats_triton
from trainspect.kernels.token_stats_triton import BENCH_CONFIGS, TritonConfig, row_stats_triton

FULL_SHAPES = [(32768, 152064), (8192, 32000)]  # (N rows, V): Qwen2-sized and Llama-2-sized
TINY_SHAPES = [(48, 1000), (16, 4099)]
TINY_CONFIGS = (TritonConfig(256, 4, 1), TritonConfig(1024, 4, 1))
IGNORED_FRACTION = 0.1
FIELDS = ("argmax", "conf", "label_prob", "ce", "entropy")
TEACHER_FIELDS = ("teacher_argmax", "kl", "alpha")


def seed_stats(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The straightforward fp32 code: what people write before a fused pass exists."""
    x = logits.float()  # (N, V) fp32 copy
    p = torch.softmax(x, dim=-1)
    logp = torch.log_softmax(x, dim=-1)
    conf, argmax = p.max(dim=-1)
    valid = (labels != -100) & (labels >= 0) & (labels < x.shape[-1])
    safe = torch.where(valid, labels, 0)
    label_logp = logp.gather(-1, safe[:, None]).squeeze(-1)
    entropy = -(p * logp).sum(dim=-1)
    zero = torch.zeros_like(conf)
    return (torch.where(valid, argmax, 0), torch.where(valid, conf, zero),
            torch.where(valid, label_logp.exp(), zero), torch.where(valid, -label_logp, zero),
            torch.where(valid, entropy, zero))


def bench_ms(fn: Callable[[], object], cuda: bool, quick: bool) -> float:
    """Median time of ``fn`` in ms: do_bench on CUDA, a few wall-clock runs on the CPU."""
    if cuda:
        from triton.testing import do_bench

        warmup, rep = (10, 40) if quick else (25, 100)  # in ms of device time
        return float(do_bench(fn, warmup=warmup, rep=rep, return_mode="median"))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def peak_extra_mib(fn: Callable[[], object], cuda: bool) -> float | None:
    """Peak device memory allocated during one call of ``fn``, above what was there before."""
    if not cuda:
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    del out
    return extra / 2**20


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_variant(name: str, fn: Callable[[], object], cuda: bool, quick: bool = False) -> dict:
    """Warm up (compiles), then peak memory, then time; OOM and errors become a note."""
    row: dict = {"variant": name, "ms": None, "extra_mib": None, "note": ""}
    try:
        fn()  # warm-up: Triton / Inductor compilation stays out of the numbers
        row["extra_mib"] = peak_extra_mib(fn, cuda)
        row["ms"] = bench_ms(fn, cuda, quick)
    except torch.cuda.OutOfMemoryError:
        row["note"] = "OOM"
    except Exception as err:  # a benchmark reports and carries on
        row["note"] = f"error: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
    free_memory()
    return row


def read_bandwidth_gbs(logits: torch.Tensor, cuda: bool) -> dict:
    """Device read bandwidth over the logits themselves: best of torch.sum and torch.amax."""
    nbytes = logits.numel() * logits.element_size()
    ms = {
        "sum": bench_ms(lambda: torch.sum(logits), cuda, quick=False),
        "amax": bench_ms(lambda: torch.amax(logits), cuda, quick=False),
    }
    return {f"{k}_gbs": nbytes / (v * 1e-3) / 1e9 for k, v in ms.items()}


def max_abs_errors(got, ref, fields) -> dict:
    """Max |got - ref| over valid rows per float field; mismatch count for argmaxes."""
    errs = {}
    valid = ref.valid
    for name in fields:
        a, b = getattr(got, name), getattr(ref, name)
        if a.dtype == torch.int64:
            errs[f"{name}_mismatches"] = int(((a != b) & valid).sum())
        else:
            diff = torch.where(valid, (a - b).abs(), torch.zeros_like(a))
            errs[name] = float(diff.max()) if diff.numel() else 0.0
    return errs


def bench_teacher(logits, labels, cfg: TritonConfig, gen, cuda: bool, errors: dict) -> dict:
    """Triton with target_logits: a second (N, V) tensor read alongside, re-read for alpha."""
    n, vocab = logits.shape
    valid, safe = valid_rows(labels, vocab, -100)
    name = f"triton+teacher b{cfg.block_v} w{cfg.num_warps} s{cfg.num_stages}"
    try:
        target = torch.randn(n, vocab, device=logits.device, dtype=torch.bfloat16, generator=gen)
    except torch.cuda.OutOfMemoryError:
        return {"variant": name, "ms": None, "extra_mib": None, "note": "OOM"}
    row = run_variant(name, lambda: row_stats_triton(logits, safe, valid, target_logits=target,
                                                     config=cfg), cuda)
    row["note"] = (row["note"] + " reads 2 tensors: floor x2").strip()
    got = row_stats_triton(logits, safe, valid, target_logits=target, config=cfg)
    ref = row_stats(logits, labels, target_logits=target, backend="torch")
    errors.update(max_abs_errors(got, ref, TEACHER_FIELDS))
    return row


def bench_shape(n: int, vocab: int, configs, cuda: bool, skip_compile: bool) -> dict:
    """All variants for one (N, V) shape; returns its rows, floor and correctness."""
    device = "cuda" if cuda else "cpu"
    gen = torch.Generator(device=device).manual_seed(n * 7 + vocab)
    logits = torch.randn(n, vocab, device=device, dtype=torch.bfloat16, generator=gen)
    logits.mul_(2.0)  # spread-out logits, like a model part-way through training
    labels = torch.randint(0, vocab, (n,), device=device, generator=gen)
    ignored = torch.rand(n, device=device, generator=gen) < IGNORED_FRACTION
    labels = torch.where(ignored, torch.full_like(labels, -100), labels)
    nbytes = logits.numel() * logits.element_size()
    bw = read_bandwidth_gbs(logits, cuda)
    floor_ms = nbytes / (max(bw.values()) * 1e9) * 1e3
    valid, safe = valid_rows(labels, vocab, -100)
    rows = [{"variant": "floor (one read)", "ms": floor_ms, "extra_mib": 0.0, "note": ""}]
    for cfg in configs:
        name = f"triton b{cfg.block_v} w{cfg.num_warps} s{cfg.num_stages}"
        rows.append(run_variant(name, lambda c=cfg: row_stats_triton(logits, safe, valid,
                                                                      config=c), cuda))
    timed = [r for r in rows[1:] if r["ms"] is not None]
    best_cfg = configs[rows.index(min(timed, key=lambda r: r["ms"])) - 1] if timed else configs[0]
    if timed:
        min(timed, key=lambda r: r["ms"])["note"] = "best"
    rows.append(run_variant("torch path (chunked)",
                            lambda: row_stats(logits, labels, backend="torch"), cuda, quick=True))
    rows.append(run_variant("seed fp32 (eager)", lambda: seed_stats(logits, labels), cuda))
    if skip_compile:
        rows.append({"variant": "seed fp32 (torch.compile)", "ms": None, "extra_mib": None,
                     "note": "skipped"})
    else:
        compiled = torch.compile(seed_stats, dynamic=False)
        rows.append(run_variant("seed fp32 (torch.compile)",
                                lambda: compiled(logits, labels), cuda))
        torch._dynamo.reset()
    # Correctness on the benchmark data: Triton against the torch path (student only).
    ours = row_stats_triton(logits, safe, valid, config=best_cfg)
    errors = max_abs_errors(ours, row_stats(logits, labels, backend="torch"), FIELDS)
    del ours
    free_memory()
    rows.append(bench_teacher(logits, labels, best_cfg, gen, cuda, errors))
    free_memory()
    return {"n": n, "vocab": vocab, "dtype": "bfloat16", "logits_bytes": nbytes,
            "ignored_fraction": float(ignored.float().mean()), "read_bandwidth": bw,
            "floor_ms": floor_ms, "rows": rows, "max_abs_errors": errors}


def compiled_resources() -> list[str]:
    """Registers and spills of each compiled variant of the kernel (best effort)."""
    lines = []
    try:
        for entry in token_stats_triton._token_stats_kernel.device_caches.values():
            for kernel in entry[0].values():
                meta = kernel.metadata
                lines.append(f"warps {meta.num_warps} stages {meta.num_stages}: "
                             f"{kernel.n_regs} registers, {kernel.n_spills} spills, "
                             f"{meta.shared} B shared")
    except Exception as err:  # internals differ between Triton versions
        lines.append(f"(no resource report: {type(err).__name__})")
    return lines


def print_table(result: dict) -> None:
    """One table of ratios: each variant against the floor and against our best kernel."""
    floor = result["floor_ms"]
    best = min((r["ms"] for r in result["rows"]
                if r["variant"].startswith("triton b") and r["ms"] is not None), default=None)
    bw = ", ".join(f"{k} {v:.0f} GB/s" for k, v in result["read_bandwidth"].items())
    print(f"\nlogits {result['n']} x {result['vocab']} bf16 "
          f"({result['logits_bytes'] / 1e9:.2f} GB, {result['ignored_fraction']:.0%} ignored); "
          f"read bandwidth: {bw}")
    print(f"{'variant':<34}{'ms':>10}{'x floor':>9}{'x triton':>10}{'extra MiB':>11}  note")
    for r in result["rows"]:
        ms = r["ms"]
        cells = (f"{ms:10.3f}{ms / floor:9.2f}" + (f"{ms / best:10.2f}" if best else f"{'':>10}")
                 if ms is not None else f"{'-':>10}{'-':>9}{'-':>10}")
        mib = f"{r['extra_mib']:11.1f}" if r["extra_mib"] is not None else f"{'-':>11}"
        print(f"{r['variant']:<34}{cells}{mib}  {r['note']}")
    errs = ", ".join(f"{k} {v:.2e}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in result["max_abs_errors"].items())
    print(f"max abs error, triton vs torch path: {errs}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true",
                        help="tiny shapes, e.g. on the CPU under TRITON_INTERPRET=1")
    parser.add_argument("--skip-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
    if not cuda and not args.tiny:
        parser.error("needs a CUDA device; use --tiny with TRITON_INTERPRET=1 on a CPU")
    shapes, configs = (TINY_SHAPES, TINY_CONFIGS) if args.tiny else (FULL_SHAPES, BENCH_CONFIGS)
    device = torch.cuda.get_device_name() if cuda else "cpu (Triton interpreter)"
    started = time.perf_counter()
    results = []
    for n, vocab in shapes:
        results.append(bench_shape(n, vocab, configs, cuda, args.skip_compile))
        print_table(results[-1])
    elapsed = time.perf_counter() - started
    resources = compiled_resources() if cuda else []
    print("\ncompiled kernels: " + "; ".join(resources) if resources else "")
    print(f"device: {device}; torch {torch.__version__}; {elapsed:.0f} s")
    out_dir = os.environ.get("OUT")
    if out_dir:
        path = Path(out_dir) / "token_stats_kernel.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                    "seconds": elapsed, "kernels": resources,
                                    "shapes": results}, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
