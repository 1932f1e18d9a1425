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
watched round holds one flush and one sampled step) in one process, the order flipped
every round, and the garbage collector is run before each timed block. Each round
gives one ratio (watched / unwatched); rounds are added until `--seconds` of timing are
spent, or, with `--budget-s`, while the whole run (model build to the last record)
still fits in that many seconds. The mean of the ratios is reported with a 95%
bootstrap interval (10,000 resamples), the median with its own, and the mean over
pairs of rounds (A B B A: a linear drift cancels within each pair) with its own; the
verdict says whether the mean's interval lies below `--target` (1.01), above it, or
straddles it.

Each block also records, without any extra host sync, a CUDA event per step (the GPU
timeline's time per window position: which step of the window the cost sits in), the
host's time per step, and the garbage collections that ran in it (count and seconds per
generation), so one run tells a steady cost from a rare slow step.

Then one instrumented window says where the cost is: host time inside trainspect on
the training thread (the hooks, and the probes' `state` at the flush) and on the
writer thread (`compute`), per step, next to the unwatched step time. A LoRA step at
this size is bound by the host launching kernels, so host time is step time there.
`benchmarks/watch_proxy.py` breaks the same cost down per probe on a CPU.

Last, a few watched steps run under `torch.cuda.set_sync_debug_mode("warn")`: the
synchronising calls from trainspect's own files must be 0 (other code's are counted).

    python benchmarks/watch_overhead.py [--seconds 90 | --budget-s 100] [--steps 10]
        [--batch 8] [--full] [--probes lora,grads,hidden,speed]
        [--check-finite every_step|sampled]
    python benchmarks/watch_overhead.py --tiny        # CPU smoke test, tiny model

Writes JSON to $OUT/watch_overhead.json when OUT is set, rewritten after every round
(its "status" says how far the run got), so a run stopped by a time limit still
leaves every finished round. Results: docs/benchmarks.md.
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


class GcClock:
    """Garbage collections (count and seconds per generation) while `bucket` is set."""

    def __init__(self) -> None:
        self.bucket: dict | None = None
        self._start = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict) -> None:
        if self.bucket is None:
            return
        if phase == "start":
            self._start = time.perf_counter()
            return
        gen = str(info.get("generation"))
        self.bucket[f"gen{gen}_n"] = self.bucket.get(f"gen{gen}_n", 0) + 1
        self.bucket[f"gen{gen}_s"] = (self.bucket.get(f"gen{gen}_s", 0.0)
                                      + time.perf_counter() - self._start)

    def close(self) -> None:
        gc.callbacks.remove(self)


def summarise(rounds: list[dict], target: float) -> dict:
    """Mean and median of the per-round ratios and the A B B A pair means, with 95%
    bootstrap intervals, and the verdict against `target`."""
    ratios = [r["ratio"] for r in rounds]
    if not ratios:
        return {"rounds": 0}
    out = {"rounds": len(ratios), "mean_ratio": float(np.mean(ratios)),
           "median_ratio": statistics.median(ratios),
           "ratio_sd": statistics.stdev(ratios) if len(ratios) > 1 else 0.0,
           "min_ratio": min(ratios), "max_ratio": max(ratios),
           "median_without_ms": statistics.median(r["without_ms"] for r in rounds),
           "median_with_ms": statistics.median(r["with_ms"] for r in rounds)}
    if len(ratios) >= 3:
        mean_ci = bootstrap_interval(ratios, np.mean)
        out["mean_ratio_ci95"] = mean_ci
        out["median_ratio_ci95"] = bootstrap_interval(ratios, np.median)
        out["verdict"] = "under target" if mean_ci[1] < target else (
            "over target" if mean_ci[0] > target else "not resolved")
    pairs = [(a["with_ms"] + b["with_ms"]) / (a["without_ms"] + b["without_ms"])
             for a, b in zip(rounds[0::2], rounds[1::2])]
    if len(pairs) >= 3:
        out["pairs"] = len(pairs)
        out["pair_mean_ratio"] = float(np.mean(pairs))
        out["pair_mean_ratio_ci95"] = bootstrap_interval(pairs, np.mean)
    return out


def by_position(blocks: list[dict], key: str) -> dict[str, float]:
    """Median per window position of a per-step series: step s is at (s - 1) % 10 + 1, so
    position 1 is a window's first step, which flushes the last window and is sampled."""
    out: dict[str, list[float]] = defaultdict(list)
    for block in blocks:
        for position, ms in zip(block["positions"], block[key]):
            out[str(position)].append(ms)
    return {k: statistics.median(v) for k, v in sorted(out.items(), key=lambda kv: int(kv[0]))}


def write_json(result: dict) -> None:
    """Rewrite $OUT/watch_overhead.json whole (a new file renamed over the old one)."""
    if not os.environ.get("OUT"):
        return
    path = Path(os.environ["OUT"], "watch_overhead.json")
    partial = path.with_suffix(".json.part")
    partial.write_text(json.dumps(result, indent=2))
    os.replace(partial, path)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=90.0,
                        help="timing budget for the A/B rounds")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="instead of --seconds: add rounds while the whole run (from "
                             "the model build to the last record) fits in this many seconds")
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
    with torch.device(device):  # random init on the device: seconds, not a minute of CPU
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

    gc_clock = GcClock()
    blocks: dict[bool, list[dict]] = {False: [], True: []}

    def timed(watched: bool) -> float:
        """Mean ms per step of one block; its per-step detail goes to `blocks`."""
        step(watched)  # attach or detach outside the timing
        gc.collect()
        sync()
        cuda = device == "cuda"
        events = [torch.cuda.Event(enable_timing=True) for _ in range(args.steps + 1)] \
            if cuda else []
        host, positions, collections = [], [], {}
        gc_clock.bucket = collections
        start = time.perf_counter()
        for i in range(args.steps):
            if cuda:
                events[i].record()
            began = time.perf_counter()
            step(watched)
            host.append((time.perf_counter() - began) * 1e3)
            positions.append((counter[0] - 1) % LOG_EVERY + 1)
        if cuda:
            events[-1].record()
        sync()
        elapsed = (time.perf_counter() - start) * 1e3 / args.steps
        gc_clock.bucket = None
        gpu = [a.elapsed_time(b) for a, b in zip(events, events[1:])]
        blocks[watched].append({"positions": positions, "host_ms": host, "gpu_ms": gpu,
                                "gc": collections})
        return elapsed

    def detail() -> dict:
        out = {}
        for watched, name in ((False, "without"), (True, "with")):
            done = blocks[watched]
            gcs: dict[str, float] = defaultdict(float)
            for block in done:
                for k, v in block["gc"].items():
                    gcs[k] += v
            out[name] = {"blocks": len(done), "gc_per_block": {k: v / max(len(done), 1)
                                                               for k, v in gcs.items()},
                         "host_ms_by_position": by_position(done, "host_ms")}
            if device == "cuda":
                out[name]["gpu_ms_by_position"] = by_position(done, "gpu_ms")
        return out

    result = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__, "mode": mode, "probes": args.probes,
        "check_finite": args.check_finite, "params": n_params,
        "trainable": sum(p.numel() for p in params), "batch": args.batch, "seq": args.seq,
        "steps_per_round": args.steps, "target": args.target, "status": "warm-up",
        "build_s": time.perf_counter() - started,
    }
    write_json(result)
    for watched in (False, True, False, True):  # warm-up: allocator, kernels, first flushes
        timed(watched)
    blocks[False].clear()
    blocks[True].clear()
    ours, others, where = count_syncs(step, LOG_EVERY + 1) if device == "cuda" else (0, 0, [])
    result.update(status="rounds", trainspect_syncs=ours, trainspect_sync_sites=where,
                  other_syncs=others)
    write_json(result)

    rounds: list[dict] = []
    spent = 0.0
    while len(rounds) < args.max_rounds:
        if args.budget_s is not None:
            per_round = spent / len(rounds) if rounds else 0.0
            tail = 0.7 * per_round + 5.0  # the instrumented window and the finish
            if rounds and time.perf_counter() - started + per_round + tail > args.budget_s:
                break
        elif len(rounds) >= args.min_rounds and spent >= args.seconds:
            break
        began = time.perf_counter()
        order = (False, True) if len(rounds) % 2 == 0 else (True, False)
        times = {watched: timed(watched) for watched in order}
        rounds.append({"without_ms": times[False], "with_ms": times[True],
                       "ratio": times[True] / times[False], "watched_first": order[0]})
        spent += time.perf_counter() - began
        result.update(summarise(rounds, args.target), round_data=rounds, detail=detail(),
                      elapsed_s=time.perf_counter() - started)
        write_json(result)

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
        gc_clock.close()
    per_step_us = {k: v / args.steps * 1e6 for k, v in clock.seconds.items()}

    step(True)
    run.finish()
    view = ts.open(run.root).run(run.id)
    keys = view.keys()
    failed = [a["message"] for a in view.alerts() if a["rule"] == "probe_failed"]
    result.update(
        status="done", host_us_per_step=per_step_us, elapsed_s=time.perf_counter() - started,
        records={prefix: sum(k.startswith(prefix) for k in keys)
                 for prefix in ("lora/", "delta/", "grad/", "hidden/", "speed/", "mem/")},
        probe_failures=failed, internal_errors=dict(run.errors))
    write_json(result)
    print_report(result, args)
    return 1 if failed or run.errors or ours else 0


def print_report(result: dict, args: argparse.Namespace) -> None:
    without = result.get("median_without_ms", float("nan"))
    print(f"# watch(model) [{args.probes}; finite check {args.check_finite}]: "
          f"{result['params'] / 1e6:.0f}M params ({result['mode']}), batch {args.batch} x "
          f"{args.seq}, {result['device']}, torch {result['torch']}; "
          f"{result['elapsed_s']:.0f} s in all")
    print("| quantity | value |")
    print("|---|---|")
    print(f"| median step without / with watch (ms) | {without:.2f} / "
          f"{result.get('median_with_ms', float('nan')):.2f} |")
    print(f"| rounds ({args.steps} steps per variant each) | {result.get('rounds', 0)} |")
    for label, key in (("mean ratio", "mean_ratio"), ("median ratio", "median_ratio"),
                       ("mean over A B B A pairs of rounds", "pair_mean_ratio")):
        if f"{key}_ci95" in result:
            lo, hi = result[f"{key}_ci95"]
            print(f"| {label}, 95% bootstrap CI | {result[key]:.4f} [{lo:.4f}, {hi:.4f}] |")
    if "ratio_sd" in result:
        print(f"| sd of the per-round ratio (min, max) | {result['ratio_sd']:.4f} "
              f"({result['min_ratio']:.4f}, {result['max_ratio']:.4f}) |")
    print(f"| verdict against {args.target} | {result.get('verdict', 'too few rounds')} |")
    for kind in ("hooks", "state", "compute"):
        us = result["host_us_per_step"].get(kind, 0.0)
        thread = "writer thread" if kind == "compute" else "training thread"
        print(f"| host time in {kind} ({thread}), per step | {us:.0f} us "
              f"({us / 1e3 / without * 100:.2f}% of a step) |")
    detail = result.get("detail", {})
    for name in ("without", "with"):
        d = detail.get(name, {})
        series = d.get("gpu_ms_by_position") or d.get("host_ms_by_position") or {}
        print(f"{name} watch, median ms by window position (1 = flush and sample): "
              + " ".join(f"{k}:{v:.1f}" for k, v in series.items())
              + f"; gc per block: {d.get('gc_per_block', {})}")
    print(f"syncs from trainspect under set_sync_debug_mode('warn'): "
          f"{result.get('trainspect_syncs', 0)} {result.get('trainspect_sync_sites', [])}; "
          f"from other code: {result.get('other_syncs', 0)}")
    print(f"records: {result['records']}")
    if result["probe_failures"] or result["internal_errors"]:
        print(f"PROBLEMS: {result['probe_failures']} {result['internal_errors']}")


if __name__ == "__main__":
    sys.exit(main())
