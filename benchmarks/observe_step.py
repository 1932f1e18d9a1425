"""The cost of `Run.observe` in a real training step, and the sync-free check.

A Llama-style model of about 0.5B parameters (Qwen2.5-0.5B's shape: hidden 896, 24
layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936; random init, bf16) is trained
with AdamW on random tokens at sequence length 1024, with and without
`run.observe(step, logits[:, :-1], labels[:, 1:])` at every step. Step times on these
GPUs drift by about 3% between runs, so the two variants alternate in rounds within
one process and the median of the per-round ratios is reported.

    python benchmarks/observe_step.py [--rounds 9] [--steps 5] [--batch 8]
    python benchmarks/observe_step.py --tiny        # CPU smoke test, tiny model

Writes JSON to $OUT/observe_step.json when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trainspect as ts  # noqa: E402


def build_model(tiny: bool, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    if tiny:
        config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    else:
        config = LlamaConfig(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                             num_hidden_layers=24, num_attention_heads=14,
                             num_key_value_heads=2, tie_word_embeddings=True,
                             max_position_embeddings=2048)
    torch.manual_seed(0)
    dtype = torch.float32 if tiny else torch.bfloat16
    model = LlamaForCausalLM(config).to(device=device, dtype=dtype)
    return model, config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        args.batch, args.seq, args.rounds, args.steps = 2, 32, 3, 2
    model, config = build_model(args.tiny, device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    gen = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen).to(device)
    labels = ids.clone()
    labels[:, : args.seq // 4] = -100  # a prompt that is not supervised
    run = ts.init(project="bench", dir=tempfile.mkdtemp(), log_every=10)
    step_counter = [0]

    def step(observe: bool) -> None:
        out = model(input_ids=ids, labels=labels)
        if observe:
            run.observe(step_counter[0], out.logits[:, :-1], labels[:, 1:])
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        step_counter[0] += 1

    def timed(observe: bool) -> float:
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.steps):
                step(observe)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / args.steps
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(observe)
        return (time.perf_counter() - t0) * 1e3 / args.steps

    for observe in (False, True, False, True):  # warm-up: allocator, kernels, autotune
        timed(observe)
    sync_free = None
    if device == "cuda":  # every observe of a timed round must be sync-free: check once
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for _ in range(12):  # crosses a flush window too
                out = model(input_ids=ids, labels=labels)
                run.observe(step_counter[0], out.logits[:, :-1], labels[:, 1:])
                step_counter[0] += 1
            sync_free = "tokens" not in run._disabled
        finally:
            torch.cuda.set_sync_debug_mode(0)
    rounds = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        times = {observe: timed(observe) for observe in order}
        rounds.append({"without_ms": times[False], "with_ms": times[True],
                       "ratio": times[True] / times[False]})
    run.finish()
    ratios = [r["ratio"] for r in rounds]
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "params": n_params, "batch": args.batch, "seq": args.seq,
        "logits_gib": args.batch * args.seq * config.vocab_size * 2 / 2**30,
        "median_without_ms": statistics.median(r["without_ms"] for r in rounds),
        "median_with_ms": statistics.median(r["with_ms"] for r in rounds),
        "median_ratio": statistics.median(ratios), "min_ratio": min(ratios),
        "max_ratio": max(ratios), "rounds": rounds, "sync_free": sync_free,
        "probe_disabled": "tokens" in run._disabled,
    }
    print(f"# observe() at every step: {n_params / 1e6:.0f}M params, batch {args.batch} x "
          f"{args.seq}, {result['device']}")
    print("| variant | median step (ms) |")
    print("|---|---|")
    print(f"| without observe | {result['median_without_ms']:.2f} |")
    print(f"| with observe | {result['median_with_ms']:.2f} |")
    print(f"| median of per-round ratios ({args.rounds} rounds) | "
          f"{result['median_ratio']:.4f} (min {result['min_ratio']:.4f}, "
          f"max {result['max_ratio']:.4f}) |")
    print(f"sync-free under set_sync_debug_mode('error'): {sync_free}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "observe_step.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
