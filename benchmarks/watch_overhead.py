"""The cost of `run.watch(model)` at its default cadence in a real training step, with a
confidence interval that tells 1% from noise.

A Llama-style model of about 0.5B parameters (Qwen2.5-0.5B's shape: hidden 896, 24
layers, 14 heads, 2 KV heads, MLP 4864, vocab 151936; random init, bf16) is trained
with AdamW on random tokens at sequence length 1024 (a quarter of the rows padded by
a quarter), LoRA r=16 on every projection through PEFT (`--full` for a full fine-tune
instead), with and without `watch` attached: LoRA deltas, gradient norms, hidden-state
statistics and the finiteness check on every decoder layer, throughput.

Each attach starts from LoRA B = 0, as a run's watch does (the A/B rounds attach and
detach it every round).

Design. Step times drift by several percent over seconds on these machines, so the two
variants alternate in short rounds (one flush window each: log_every 10, so every
watched round holds one flush) in one process, the order flipped every round, and the
garbage collector is run before each timed block. Each round gives one ratio
(watched / unwatched); rounds are added until `--seconds` of timing are spent. The
mean of the ratios is reported with a 95% bootstrap interval (10,000 resamples), and
the median with its own; the verdict says whether the interval's upper end is below
`--target` (1.01).

Then one instrumented window says where the cost is: host time inside trainspect on
the training thread (the hooks, and the probes' `state` at the flush) and on the
writer thread (`compute`), per step, next to the unwatched step time. A LoRA step at
this size is bound by the host launching kernels, so host time is step time there.

Last, a few watched steps run under `torch.cuda.set_sync_debug_mode("warn")`: the
synchronising calls from trainspect's own files must be 0 (other code's are counted).

    python benchmarks/watch_overhead.py [--seconds 90] [--steps 10] [--batch 8] [--full]
        [--probes lora,grads,hidden,speed] [--check-finite every_step|sampled]
    python benchmarks/watch_overhead.py --tiny        # CPU smoke test, tiny model

Writes JSON to $OUT/watch_overhead.json when OUT is set. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import trainspect as ts  # noqa: E402
from trainspect.probes import grads, hidden, lora, speed  # noqa: E402
from trainspect.probes.watch import Watch, watch  # noqa: E402

LOG_EVERY = 10

sys.path.insert(0, str(Path(__file__).resolve().parent))  # observe_step beside this file


def build_model(tiny: bool, full: bool, device: str):
    """observe_step.py's 0.5B Llama (or its tiny twin), then LoRA r=16 unless `full`."""
    from observe_step import build_model as build_llama

    model, config = build_llama(tiny, device)
    if full:
        return model, config, "full fine-tune"
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                             "gate_proj", "up_proj", "down_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(model, lora_config), config, "LoRA r=16, all projections"


def bootstrap_interval(values: list[float], statistic=np.mean, resamples: int = 10_000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of `statistic` over `values`."""
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(resamples, len(data)))
    stats = statistic(data[picks], axis=1)
    tail = (1.0 - level) / 2
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1.0 - tail))


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


class HostClock:
    """Host seconds spent in chosen methods, per thread kind, outermost calls only."""

    HOOKS = [(Watch, n) for n in ("_before", "_after", "_on_hidden", "_on_grad", "_requeue",
                                  "_backward_end")]
    STATE = [(c, "state") for c in (lora.LoraProbe, grads.GradProbe, hidden.HiddenProbe,
                                    speed.SpeedProbe)]
    COMPUTE = [(c, "compute") for c in (lora.LoraProbe, grads.GradProbe, hidden.HiddenProbe,
                                        speed.SpeedProbe)]

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._depth = threading.local()
        self._saved: list[tuple] = []

    def install(self) -> None:
        for kind, targets in (("hooks", self.HOOKS), ("state", self.STATE),
                              ("compute", self.COMPUTE)):
            for cls, name in targets:
                original = cls.__dict__[name]
                self._saved.append((cls, name, original))
                setattr(cls, name, self._timed(kind, original))

    def remove(self) -> None:
        for cls, name, original in self._saved:
            setattr(cls, name, original)
        self._saved.clear()

    def _timed(self, kind: str, fn):
        clock = self

        def wrapper(*args, **kwargs):
            depth = getattr(clock._depth, "n", 0)
            clock._depth.n = depth + 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock._depth.n = depth
                if depth == 0:
                    clock.seconds[kind] += time.perf_counter() - start
        return wrapper


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0,
                        help="timing budget for the A/B rounds")
    parser.add_argument("--min-rounds", type=int, default=10)
    parser.add_argument("--max-rounds", type=int, default=400)
    parser.add_argument("--steps", type=int, default=LOG_EVERY,
                        help="timed steps per variant per round (one flush window)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--full", action="store_true", help="full fine-tune instead of LoRA")
    parser.add_argument("--probes", default="lora,grads,hidden,speed",
                        help="the probe families to watch with (to break the cost down)")
    parser.add_argument("--check-finite", default="every_step", choices=("every_step",
                                                                          "sampled"))
    parser.add_argument("--target", type=float, default=1.01)
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    families = {name: name in args.probes.split(",") for name in ("lora", "grads", "hidden",
                                                                    "speed")}
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        args.batch, args.seq, args.seconds, args.min_rounds = 2, 32, 2.0, 4
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

    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]

    def step(watched: bool) -> None:
        if watched and handle[0] is None:
            with torch.no_grad():  # as PEFT starts them: B = 0, so ΔW needs no snapshot
                for b in lora_b:
                    b.zero_()
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

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def timed(watched: bool) -> float:
        step(watched)  # attach or detach outside the timing
        gc.collect()
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            step(watched)
        sync()
        return (time.perf_counter() - start) * 1e3 / args.steps

    for watched in (False, True, False, True):  # warm-up: allocator, kernels, first flushes
        timed(watched)
    ours, others, where = count_syncs(step, 2 * LOG_EVERY) if device == "cuda" else (0, 0, [])

    rounds = []
    spent = 0.0
    while len(rounds) < args.max_rounds and (len(rounds) < args.min_rounds
                                             or spent < args.seconds):
        began = time.perf_counter()
        order = (False, True) if len(rounds) % 2 == 0 else (True, False)
        times = {watched: timed(watched) for watched in order}
        rounds.append({"without_ms": times[False], "with_ms": times[True],
                       "ratio": times[True] / times[False]})
        spent += time.perf_counter() - began

    # one instrumented window per variant: where the host time goes
    clock = HostClock()
    clock.install()
    try:
        step(False)
        step(True)  # attach with the timed methods in place
        timed(True)
        run.flush()  # the writer's compute of that window
    finally:
        clock.remove()
    ratios = [r["ratio"] for r in rounds]
    mean_ci = bootstrap_interval(ratios, np.mean)
    median_ci = bootstrap_interval(ratios, np.median)
    without = statistics.median(r["without_ms"] for r in rounds)
    per_step_us = {k: v / args.steps * 1e6 for k, v in clock.seconds.items()}

    step(True)
    run.finish()
    view = ts.open(run.root).run(run.id)
    keys = view.keys()
    failed = [a["message"] for a in view.alerts() if a["rule"] == "probe_failed"]
    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "mode": mode, "probes": args.probes,
        "check_finite": args.check_finite, "params": n_params,
        "trainable": sum(p.numel() for p in params), "batch": args.batch, "seq": args.seq,
        "steps_per_round": args.steps, "rounds": len(rounds),
        "median_without_ms": without,
        "median_with_ms": statistics.median(r["with_ms"] for r in rounds),
        "mean_ratio": float(np.mean(ratios)), "mean_ratio_ci95": mean_ci,
        "median_ratio": statistics.median(ratios), "median_ratio_ci95": median_ci,
        "ratio_sd": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
        "min_ratio": min(ratios), "max_ratio": max(ratios),
        "verdict": "under target" if mean_ci[1] < args.target else (
            "over target" if mean_ci[0] > args.target else "not resolved"),
        "host_us_per_step": per_step_us, "round_data": rounds,
        "trainspect_syncs": ours, "trainspect_sync_sites": where, "other_syncs": others,
        "records": {prefix: sum(k.startswith(prefix) for k in keys)
                    for prefix in ("lora/", "delta/", "grad/", "hidden/", "speed/", "mem/")},
        "probe_failures": failed, "internal_errors": dict(run.errors),
    }
    print(f"# watch(model) [{args.probes}; finite check {args.check_finite}]: "
          f"{n_params / 1e6:.0f}M params ({mode}), batch {args.batch} x {args.seq}, "
          f"{result['device']}, torch {torch.__version__}")
    print("| quantity | value |")
    print("|---|---|")
    print(f"| median step without / with watch (ms) | {without:.2f} / "
          f"{result['median_with_ms']:.2f} |")
    print(f"| rounds ({args.steps} steps per variant each) | {len(rounds)} |")
    print(f"| mean ratio, 95% bootstrap CI | {result['mean_ratio']:.4f} "
          f"[{mean_ci[0]:.4f}, {mean_ci[1]:.4f}] |")
    print(f"| median ratio, 95% bootstrap CI | {result['median_ratio']:.4f} "
          f"[{median_ci[0]:.4f}, {median_ci[1]:.4f}] |")
    print(f"| sd of the per-round ratio (min, max) | {result['ratio_sd']:.4f} "
          f"({result['min_ratio']:.4f}, {result['max_ratio']:.4f}) |")
    print(f"| verdict against {args.target} | {result['verdict']} |")
    for kind in ("hooks", "state", "compute"):
        us = per_step_us.get(kind, 0.0)
        thread = "writer thread" if kind == "compute" else "training thread"
        print(f"| host time in {kind} ({thread}), per step | {us:.0f} us "
              f"({us / 1e3 / without * 100:.2f}% of a step) |")
    print(f"syncs from trainspect under set_sync_debug_mode('warn'): {ours} {where}; "
          f"from other code: {others}")
    print(f"records: {result['records']}")
    if failed or run.errors:
        print(f"PROBLEMS: {failed} {run.errors}")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "watch_overhead.json").write_text(json.dumps(result, indent=2))
    return 1 if failed or run.errors or ours else 0


if __name__ == "__main__":
    sys.exit(main())
