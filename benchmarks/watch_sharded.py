"""The cost of `run.watch(model)` in a sharded training step: FSDP2, tensor parallel, or both.

Launched with torchrun, one process per GPU. observe_step.py's 0.5B Llama (bf16, random
init; `--tiny` for a small one on CPU with gloo) is wrapped as `--setup` says and trained
on random tokens (batch per data-parallel rank x 1024), with and without `watch`
(attached and removed between rounds, the order flipped every round, every rank doing the
same). Rank 0 times each round between two barriers; the mean of the per-round ratios
is reported with a 95% bootstrap interval (watch_overhead.py's). `--probes` picks the
probe families, to cost each one alone.

    torchrun --nproc_per_node 2 benchmarks/watch_sharded.py --setup fsdp2 [--seconds 60]
    torchrun --nproc_per_node 2 benchmarks/watch_sharded.py --setup tp
    torchrun --nproc_per_node 4 benchmarks/watch_sharded.py --setup fsdp2_tp
    torchrun --nproc_per_node 2 benchmarks/watch_sharded.py --tiny --setup fsdp2   # CPU

Writes JSON to $OUT/watch_sharded_<setup>.json when OUT is set. Results: docs/benchmarks.md.
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
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from watch_overhead import bootstrap_interval  # noqa: E402

import trainspect as ts  # noqa: E402
from trainspect.probes.watch import watch  # noqa: E402

LOG_EVERY = 10


def tp_plan(model: torch.nn.Module) -> dict:
    """Column-wise q, k, v, gate, up and row-wise o, down in every decoder layer."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}":
            if leaf in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
                plan[name] = ColwiseParallel()
            elif leaf in ("o_proj", "down_proj"):
                plan[name] = RowwiseParallel()
    return plan


def wrap(model: torch.nn.Module, setup: str, device: str, world: int) -> int:
    """Shard `model` in place; returns the data-parallel degree."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    kind = torch.device(device).type
    layers = model.model.layers
    if setup == "fsdp2":
        for layer in layers:
            fully_shard(layer)
        fully_shard(model)
        return world
    tp = world if setup == "tp" else 2
    mesh = init_device_mesh(kind, (world // tp, tp), mesh_dim_names=("dp", "tp"))
    parallelize_module(model, mesh["tp"], tp_plan(model))
    if setup == "fsdp2_tp":
        for layer in layers:
            fully_shard(layer, mesh=mesh["dp"])
        fully_shard(model, mesh=mesh["dp"])
    return world // tp


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--setup", default="fsdp2", choices=("fsdp2", "tp", "fsdp2_tp"))
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--min-rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=LOG_EVERY)
    parser.add_argument("--batch", type=int, default=8, help="sequences per dp rank")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--probes", default="lora,grads,hidden,speed")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.tiny
    if cuda:
        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        device = f"cuda:{local}"
    else:
        dist.init_process_group("gloo")
        device = "cpu"
        args.batch, args.seq, args.seconds, args.min_rounds = 2, 32, 2.0, 4
    rank, world = dist.get_rank(), dist.get_world_size()
    from observe_step import build_model

    model, config = build_model(args.tiny, device)
    dp = wrap(model, args.setup, device, world)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(rank if args.setup == "fsdp2" else rank // (world // dp))
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen).to(device)
    families = {k: k in args.probes.split(",") for k in ("lora", "grads", "hidden", "speed")}
    run = ts.init(project="bench-sharded", dir=tempfile.mkdtemp(), log_every=LOG_EVERY)
    state = {"step": 0, "handle": None}

    def step(watched: bool) -> None:
        if watched and state["handle"] is None:
            state["handle"] = watch(run, model, **families)
        if not watched and state["handle"] is not None:
            state["handle"].remove()
            state["handle"] = None
        state["step"] += 1
        run.log({"lr": 1e-5}, step=state["step"])
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(watched: bool) -> float:
        step(watched)
        gc.collect()
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        start = time.perf_counter()
        for _ in range(args.steps):
            step(watched)
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        return (time.perf_counter() - start) * 1e3 / args.steps

    for watched in (False, True, False, True):
        timed(watched)
    rounds: list[dict] = []
    spent = torch.zeros(1)
    while len(rounds) < args.min_rounds or spent.item() < args.seconds:
        began = time.perf_counter()
        order = (False, True) if len(rounds) % 2 == 0 else (True, False)
        times = {w: timed(w) for w in order}
        rounds.append({"without_ms": times[False], "with_ms": times[True],
                       "ratio": times[True] / times[False]})
        spent += time.perf_counter() - began
        dist.broadcast(spent, 0)  # every rank stops after the same round
    step(True)
    run.finish()
    if rank == 0:
        ratios = [r["ratio"] for r in rounds]
        ci = bootstrap_interval(ratios, np.mean)
        result = {"setup": args.setup, "world": world, "dp": dp, "probes": args.probes,
                  "device": torch.cuda.get_device_name() if cuda else "cpu",
                  "torch": torch.__version__, "batch_per_dp_rank": args.batch,
                  "seq": args.seq, "rounds": rounds,
                  "median_without_ms": statistics.median(r["without_ms"] for r in rounds),
                  "median_with_ms": statistics.median(r["with_ms"] for r in rounds),
                  "mean_ratio": float(np.mean(ratios)), "mean_ratio_ci95": ci}
        print(f"# watch [{args.probes}] under {args.setup}, {world} ranks (dp {dp}), "
              f"{result['device']}, batch {args.batch} x {args.seq} per dp rank")
        print(f"median step without / with: {result['median_without_ms']:.2f} / "
              f"{result['median_with_ms']:.2f} ms; mean ratio {result['mean_ratio']:.4f} "
              f"[{ci[0]:.4f}, {ci[1]:.4f}] over {len(rounds)} rounds")
        if os.environ.get("OUT"):
            Path(os.environ["OUT"], f"watch_sharded_{args.setup}.json").write_text(
                json.dumps(result, indent=2))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
