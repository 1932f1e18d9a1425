"""The cost of `run.watch(model)` at its default cadence in a real training step.

A Llama-style model of about 0.5B parameters (Qwen2.5-0.5B's shape: hidden 896, 24
layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936; random init, bf16) is trained
with AdamW on random tokens at sequence length 1024 (a quarter of the rows padded by
a quarter), LoRA r=16 on every projection through PEFT (`--full` for a full fine-tune
instead), with and without `watch` attached: LoRA deltas, gradient norms, hidden-state
statistics and the finiteness check on every decoder layer, throughput. The watch is
attached and removed between rounds; the two variants alternate within one process
(order flipped every round) and the median of the per-round time ratios is reported.
Step times on these machines wander by several percent over seconds, so rounds are
short: one flush window (log_every 10) each, which puts one flush in every timing.

It also runs a few watched steps under `torch.cuda.set_sync_debug_mode("warn")` and
counts the synchronising calls made from trainspect's own files (must be 0); calls
from other code (transformers, the optimizer) are counted apart.

    python benchmarks/watch_overhead.py [--rounds 30] [--steps 10] [--batch 8] [--full]
        [--probes lora,grads,hidden,speed] [--check-finite every_step|sampled]
    python benchmarks/watch_overhead.py --tiny        # CPU smoke test, tiny model

Target: median ratio <= 1.01. Writes JSON to $OUT/watch_overhead.json when OUT is set.

Last measured (one H200, torch 2.11, transformers 5.17, peft 0.21.2, batch 8 x 1024;
step times on that machine wandered by 5-10% from round to round, so one run's median
ratio is good to about +-1%):

    LoRA r=16, 8.8M trainable   178.1 ms without, 176.7 ms with; median of 30 per-round
                                ratios 1.010 (min 0.918, max 1.109); fastest rounds 0.999
    full fine-tune, 494M        107.6 ms without, 109.4 ms with; median of 16 ratios 1.013
                                (min 0.934, max 1.096), before the last hook trimming

Syncs from trainspect's files under sync-debug mode: 0 (transformers: 2 per step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trainspect as ts  # noqa: E402
from trainspect.probes.watch import watch  # noqa: E402

LOG_EVERY = 10


sys.path.insert(0, str(Path(__file__).resolve().parent))  # observe_step beside this file


def build_model(tiny: bool, full: bool, device: str):
    """observe_step.py's 0.5B Llama (or its tiny twin), then LoRA r=16 unless `full`."""
    from observe_step import build_model as build_llama

    model, config = build_llama(tiny, device)
    if full:
        return model, config, "full fine-tune"
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        print("peft is not installed: measuring a full fine-tune instead", file=sys.stderr)
        return model, config, "full fine-tune (no peft)"
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                      "up_proj", "down_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, lora), config, "LoRA r=16, all projections"


def count_syncs(step, steps: int) -> tuple[int, int, list[str]]:
    """(syncs from trainspect's files, from elsewhere, where ours happened)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(steps):
                step(True)
            torch.cuda.synchronize()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    ours = [f"{w.filename}:{w.lineno}" for w in syncs if f"trainspect{os.sep}" in w.filename]
    return len(ours), len(syncs) - len(ours), sorted(set(ours))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=LOG_EVERY,
                        help="timed steps per variant per round (one flush window)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    parser.add_argument("--probes", default="lora,grads,hidden,speed",
                        help="the probe families to watch with (to break the cost down)")
    parser.add_argument("--check-finite", default="every_step", choices=("every_step",
                                                                          "sampled"))
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    families = {name: name in args.probes.split(",") for name in ("lora", "grads", "hidden",
                                                                    "speed")}
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        args.batch, args.seq, args.rounds, args.steps = 2, 32, 3, LOG_EVERY
    model, config, mode = build_model(args.tiny, args.full, device)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda")
    gen = torch.Generator(device="cpu").manual_seed(1)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen)
    mask = torch.ones_like(ids)
    mask[: args.batch // 4 or 1, -(args.seq // 4):] = 0  # some rows padded at the end
    labels = ids.masked_fill(mask == 0, -100)
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    run = ts.init(project="bench", dir=tempfile.mkdtemp(), log_every=LOG_EVERY)
    counter = [0]
    handle = [None]

    def step(watched: bool) -> None:
        if watched and handle[0] is None:
            handle[0] = watch(run, model, check_finite=args.check_finite, **families)
        if not watched and handle[0] is not None:
            handle[0].remove()
            handle[0] = None
        counter[0] += 1
        run.log({"lr": 1e-5}, step=counter[0])  # the run's clock, as a loop's logging does
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(watched: bool) -> float:
        step(watched)  # attach or detach outside the timing
        if device == "cuda":
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                step(watched)
            torch.cuda.synchronize()
        else:
            start = time.perf_counter()
            for _ in range(args.steps):
                step(watched)
        return (time.perf_counter() - start) * 1e3 / args.steps

    for watched in (False, True, False, True):  # warm-up: allocator, kernels, first flushes
        timed(watched)
    ours, others, where = count_syncs(step, 2 * LOG_EVERY) if device == "cuda" else (0, 0, [])
    rounds = []
    for r in range(args.rounds):
        order = (False, True) if r % 2 == 0 else (True, False)
        times = {watched: timed(watched) for watched in order}
        rounds.append({"without_ms": times[False], "with_ms": times[True],
                       "ratio": times[True] / times[False]})
    step(True)
    run.finish()
    view = ts.open(run.root).run(run.id)
    keys = view.keys()
    failed = [a["message"] for a in view.alerts() if a["rule"] == "probe_failed"]
    ratios = [r["ratio"] for r in rounds]
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "mode": mode, "probes": args.probes, "check_finite": args.check_finite,
        "params": n_params, "trainable": sum(p.numel() for p in params),
        "batch": args.batch, "seq": args.seq, "steps_per_round": args.steps,
        "median_without_ms": statistics.median(r["without_ms"] for r in rounds),
        "median_with_ms": statistics.median(r["with_ms"] for r in rounds),
        "median_ratio": statistics.median(ratios), "min_ratio": min(ratios),
        "max_ratio": max(ratios), "rounds": rounds,
        "trainspect_syncs": ours, "trainspect_sync_sites": where, "other_syncs": others,
        "records": {prefix: sum(k.startswith(prefix) for k in keys)
                    for prefix in ("lora/", "delta/", "grad/", "hidden/", "speed/", "mem/")},
        "latest": {k: v for k, v in view.latest_values().items()
                   if k in ("speed/mfu", "speed/tokens_per_s", "speed/data_frac",
                            "speed/padding_frac", "mem/peak_gb", "grad/norm", "lora/total",
                            "delta/total")},
        "probe_failures": failed, "internal_errors": dict(run.errors),
    }
    print(f"# watch(model) [{args.probes}; finite check {args.check_finite}]: "
          f"{n_params / 1e6:.0f}M params ({mode}), batch {args.batch} x {args.seq}, "
          f"{result['device']}")
    print("| variant | median step (ms) |")
    print("|---|---|")
    print(f"| without watch | {result['median_without_ms']:.2f} |")
    print(f"| with watch | {result['median_with_ms']:.2f} |")
    print(f"| median of per-round ratios ({args.rounds} rounds) | {result['median_ratio']:.4f} "
          f"(min {result['min_ratio']:.4f}, max {result['max_ratio']:.4f}) |")
    print(f"syncs from trainspect under set_sync_debug_mode('warn'): {ours} {where}; "
          f"from other code: {others}")
    print(f"records: {result['records']}; latest: {result['latest']}")
    if failed or run.errors:
        print(f"PROBLEMS: {failed} {run.errors}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "watch_overhead.json").write_text(json.dumps(result, indent=2))
    return 1 if failed or run.errors or ours else 0


if __name__ == "__main__":
    sys.exit(main())
