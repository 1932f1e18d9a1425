"""The fallbacks' rows of benchmarks/token_stats_kernel.py: the torch path on CUDA without
Triton against the code it replaces, and the CPU table (`observe` against
`F.cross_entropy`'s forward on the same logits)."""

from __future__ import annotations

import statistics
import tempfile

import torch
import torch.nn.functional as F
from token_stats_common import IGNORED, bench_ms, free, peak_extra_mib

import trainspect as ts

CPU_SHAPES = [(torch.float32, 32000), (torch.bfloat16, 32000), (torch.float32, 152064),
              (torch.bfloat16, 152064)]


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
    from trainspect.kernels import row_stats

    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(32768, 152064, device="cuda", dtype=torch.bfloat16, generator=gen).mul_(2)
    y = torch.randint(0, 152064, (32768,), device="cuda", generator=gen)
    y[torch.rand(32768, device="cuda", generator=gen) < IGNORED] = -100
    out = []
    for name, fn in (("F.cross_entropy forward", lambda x=x, y=y: F.cross_entropy(x, y)),
                     ("seed eager fp32 code", lambda x=x, y=y: seed_stats(x, y)),
                     ("row_stats backend=torch",
                      lambda x=x, y=y: row_stats(x, y, backend="torch"))):
        try:
            fn()
            out.append({"case": name, "ms": bench_ms(fn, cuda, rep_ms=300),
                        "extra_mib": peak_extra_mib(fn)})
        except torch.cuda.OutOfMemoryError:
            out.append({"case": name, "ms": None, "extra_mib": None, "note": "OOM"})
        free()
    return out


def cpu_rows(tiny: bool) -> list[dict]:
    """CPU: observe (the torch path) against F.cross_entropy's forward on [4, 512, V],
    alternating, the median of three rounds."""
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
            ce, ours = [], []
            for _ in range(3):  # alternate, so drift hits both alike
                ce.append(bench_ms(lambda x=x, y=y, v=vocab: F.cross_entropy(
                    x.view(-1, v), y.view(-1)), False))
                ours.append(bench_ms(lambda x=x, y=y, r=run: r.observe(1, x, y), False))
            run.finish()
        row = {"dtype": str(dtype).replace("torch.", ""), "vocab": vocab,
               "f_ce_ms": statistics.median(ce), "observe_ms": statistics.median(ours)}
        row["ratio"] = row["observe_ms"] / row["f_ce_ms"]
        rows.append(row)
        print(f"  cpu {row['dtype']:<9}{vocab:>8}{row['f_ce_ms']:10.2f}{row['observe_ms']:10.2f}"
              f"{row['ratio']:8.2f}x", flush=True)
    return rows
