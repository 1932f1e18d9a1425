"""Sharding the fixed eval over the ranks of torch.distributed, and pooling the results.

Each rank takes every world-th example of the length-sorted order (so ranks get
similar lengths), padded with placeholder rows to the same count: every rank then
runs the same number of batches, and greedy decoding runs the same number of steps
per batch (the maximum over ranks, one small all_reduce per batch), so a model
whose forward communicates (FSDP, ZeRO-3) never waits on a rank that finished.
Placeholder rows are computed and thrown away; they add nothing to any sum.

The sums of all ranks are pooled with one all_reduce of one float64 vector; the
per-example results (a few numbers and the output text each) are gathered to every
rank with `all_gather_object`. Without an initialised process group (or with one
rank) all of this is the identity.
"""

from __future__ import annotations

from typing import Any


def _dist() -> Any:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def rank_and_world() -> tuple[int, int]:
    dist = _dist()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def shard(order: list[int], rank: int, world: int) -> list[int | None]:
    """This rank's example indices; None marks a placeholder row (same count on every rank)."""
    mine: list[int | None] = list(order[rank::world])
    per_rank = -(-len(order) // world)
    return mine + [None] * (per_rank - len(mine))


def sum_across_ranks(flat: Any) -> Any:
    dist = _dist()
    if dist is not None:
        dist.all_reduce(flat)
    return flat


def max_across_ranks(value: int, device: Any) -> int:
    dist = _dist()
    if dist is None:
        return value
    import torch

    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_lists(items: list[Any]) -> list[Any]:
    """Concatenate every rank's list, in rank order."""
    dist = _dist()
    if dist is None:
        return items
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, items)
    return [item for part in gathered for item in part]
