"""The distributed cases of the doctor benchmark: 2 CPU ranks (gloo) under DDP.

Each rank runs the same loop (trainer.py) on its own shard of the data (batches drawn
with the rank in the seed) with the model wrapped in DistributedDataParallel, and
calls the trainspect API as every rank does (rank 0 writes). Cases: a healthy run,
a straggler (rank 1's data loading sleeps 50 ms a step from step 60), and one rank's
data differing (rank 1's shard was preprocessed with labels not shifted). Scored like
the single-process cases (score.py) and reported apart.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import torch

from benchmarks.doctor.faults import Case
from benchmarks.doctor.trainer import Fault, Loop, Setup, batches

SETUP = Setup(steps=120, eval_every=30)


class RankShards(Fault):
    """Every rank reads its own shard (a DistributedSampler's job), and trains under DDP."""

    def build(self, loop: Loop) -> None:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        rank = dist.get_rank()
        loop.data = batches(loop.rows, loop.tokenizer, loop.setup.batch, loop.setup.max_len,
                            loop.setup.seed * 100 + rank)
        loop.model = DistributedDataParallel(loop.model)
        loop.cache["rank"] = rank


class Straggler(RankShards):
    def batch(self, loop: Loop, batch):
        if loop.cache["rank"] == 1 and loop.step >= 60:
            time.sleep(0.05)  # a slow disk or a busy data worker on this rank only
        return batch


class OneRankUnshifted(RankShards):
    def align(self, loop, logits, labels):
        if loop.cache["rank"] == 1:  # this rank's shard came from an old preprocessing
            return logits[:, :-1], labels[:, :-1]
        return super().align(loop, logits, labels)


CASES: tuple[Case, ...] = (
    Case("ddp_healthy", "distributed", "dev", "healthy", 0, (), (),
         "2 ranks, DDP, seed 0", RankShards, setup=SETUP),
    Case("ddp_straggler", "distributed", "dev", "other", 60, ("straggler", "throughput_drop"),
         ("rank",), "rank 1's data loading sleeps 50 ms a step from step 60", Straggler,
         setup=SETUP),
    Case("ddp_rank_data_differs", "distributed", "held", "data", 0, ("label_alignment",),
         ("rank 1",), "rank 1's shard has labels not shifted", OneRankUnshifted,
         setup=SETUP),
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, case_id: str, root: str) -> None:
    import torch.distributed as dist

    import trainspect as ts
    from benchmarks.doctor.trainer import tokenizer_for, train

    torch.set_num_threads(1)
    os.environ["TRAINSPECT_DIR"] = root
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        case = next(c for c in CASES if c.id == case_id)
        tokenizer = tokenizer_for(0)
        with ts.init(project="doctor-bench", name=case.id, dir=root, tokenizer=tokenizer,
                     log_every=case.setup.log_every,
                     config={"lr": case.setup.lr, "warmup_steps": case.setup.warmup}) as run:
            train(run, case.setup, case.make(), tokenizer)
    finally:
        dist.destroy_process_group()


def run_case(case: Case, root: str, world: int = 2, timeout: float = 1200.0
             ) -> dict[str, Any]:
    """Train `case` on `world` forked ranks into `root` and score rank 0's run."""
    import resource

    import torch.multiprocessing as mp

    import trainspect as ts
    from benchmarks.doctor.score import score_run

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    context = mp.start_processes(_rank, args=(world, _free_port(), case.id, root),
                                 nprocs=world, join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 1.0)):
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{case.id}: ranks still running after {timeout} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    view = next(v for v in ts.open(root).runs() if v.name == case.id)
    row = score_run(case, view, case.setup.steps)
    row["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row["wall_s"] = time.perf_counter() - start
    row["run_id"] = view.id
    return row


def run_all(root: str, only: set[str] | None = None) -> dict[str, Any]:
    from benchmarks.doctor.score import totals

    rows = [run_case(c, root) for c in CASES if not only or c.id in only]
    return {"rows": rows, "totals": totals(rows)}


__all__ = ["CASES", "run_all", "run_case"]
