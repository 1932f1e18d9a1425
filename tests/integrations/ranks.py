"""Run a function on N CPU ranks of a gloo process group (forked: no re-import, ~1 s)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], world: int, port: int, args: tuple) -> None:
    import torch

    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        fn(rank, world, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[..., Any], *args: Any, world: int = 2, timeout: float = 90.0) -> None:
    """fn(rank, world, *args) on `world` forked ranks; fails on an error or a hang."""
    context = mp.start_processes(_entry, args=(fn, world, free_port(), args), nprocs=world,
                                 join=False, start_method="fork")
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                raise AssertionError(f"ranks still running after {timeout} s: a hang")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
