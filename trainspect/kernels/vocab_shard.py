"""Row statistics of logits sharded over the vocabulary (tensor / loss parallel).

Each rank of a tensor-parallel group holds columns [start, start + V_r) of every row of
the logits. Per row and shard r, one read of the shard gives its partials (fp32, as the
row-statistics core computes):

- m_r, the shard's max, and its first-index argmax as a global index;
- s_r = sum exp(z - m_r) and d_r = sum exp(z - m_r) (z - m_r) (-inf entries add 0);
- the label's logit, where the label falls in the shard.

Two all_reduces over the group merge them, with M = max_r m_r and w_r = exp(m_r - M):

1. MAX of one int64 key per row, the float32 max in the high 32 bits (bits mapped to an
   order-preserving int) and 2**32 - 1 - global argmax in the low 32: the largest key
   is the largest value, and among equal values the lowest global index, as
   ``torch.argmax`` picks on the whole row. M and the argmax both come out of it.
2. SUM of (w_r s_r, w_r (d_r + s_r (m_r - M)), label logit, label hits) per row in
   float64, plus whatever the caller appends (the sample rows' top-k candidates).

Then S = sum w_r s_r, lse = M + log S, conf = 1 / S, ce = lse - z_label,
label_prob = exp(-ce), entropy = log S - D / S: the algebra of token_stats_torch.py,
pooled over shards. The result is a ``RowStats``, folded by the same code as
``row_stats``' (``token_sums.accumulate_rows``). A supervised label that no shard (or
more than one) holds means the shards do not tile [0, vocab_size): such rows are
returned as out-of-range labels.

On CUDA nothing here reads back to the host; the collectives are queued on the
device's stream. Logits of float64 are compared across shards at float32 (the key),
so two float64 values within one float32 step on different shards tie there.
This module imports nothing else of trainspect's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .token_stats import RowStats, valid_rows
from .token_stats_torch import Y_FLOOR, max_and_argmax, rows_per_chunk

__all__ = ["ShardPartials", "best_candidates", "merge_shards", "shard_partials",
           "top_candidates"]

_LOW = 2**32  # the argmax key: value bits * 2**32 + (2**32 - 1 - global index)
_SUM_COLUMNS = 4  # w s, w (d + s (m - M)), label logit, label hits


@dataclass(frozen=True)
class ShardPartials:
    """One shard's per-row partials: 1-D tensors of length N."""

    max: Tensor  # float32: the shard's row max (-inf when every entry is -inf)
    argmax: Tensor  # int64: global index of the first entry equal to the shard's max
    sumexp: Tensor  # float32: sum exp(z - max)
    dot: Tensor  # float32: sum exp(z - max) * (z - max), -inf entries counted as 0
    label_logit: Tensor  # float32: the label's logit where the label is in the shard, else 0
    label_here: Tensor  # bool: the label is in [start, start + V_r)


def shard_partials(logits: Tensor, labels: Tensor, vocab_start: int,
                   max_workspace_bytes: int | None = None) -> ShardPartials:
    """Partials of rows ``logits`` (N, V_r), columns [vocab_start, vocab_start + V_r) of the
    full vocabulary, against global ``labels`` (N,), in row chunks (bounded fp32 workspace)."""
    n, width = logits.shape
    labels = labels.to(torch.int64)
    here = (labels >= vocab_start) & (labels < vocab_start + width)
    local = torch.where(here, labels - vocab_start, torch.zeros_like(labels))
    cpu = logits.device.type == "cpu"
    chunk = min(max(n, 1), rows_per_chunk(width, False, max_workspace_bytes, cpu))
    y = torch.empty(chunk, width, dtype=torch.float32, device=logits.device)
    e = torch.empty_like(y)
    parts: list[tuple[Tensor, ...]] = []
    for start in range(0, n, chunk):
        x = logits[start:start + chunk]
        c = x.shape[0]
        m, argmax = max_and_argmax(x)
        m = m + 0.0  # -0.0 -> +0.0: the key orders them apart, torch.argmax ties them
        shift = torch.where(m == float("-inf"), torch.zeros_like(m), m)  # all -inf: s = 0
        yc = torch.sub(x, shift[:, None], out=y[:c])
        ec = torch.exp(yc, out=e[:c])
        s = ec.sum(dim=-1)
        d = yc.clamp_min_(Y_FLOOR).mul_(ec).sum(dim=-1)  # 0 * -inf kept out; NaN stays NaN
        z_label = x.gather(1, local[start:start + c, None]).squeeze(1).float()
        parts.append((m, argmax + vocab_start, s, d, z_label))
    m, argmax, s, d, z_label = (torch.cat(p) for p in zip(*parts)) if parts else (
        torch.empty(0, device=logits.device),) * 5
    zero = torch.zeros((), dtype=torch.float32, device=logits.device)
    return ShardPartials(max=m, argmax=argmax.to(torch.int64), sumexp=s, dot=d,
                         label_logit=torch.where(here, z_label, zero), label_here=here)


def _argmax_key(m: Tensor, argmax: Tensor) -> Tensor:
    """int64 keys whose order is (value, then lower index first)."""
    bits = m.contiguous().view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).to(torch.int64)
    return ordered * _LOW + (_LOW - 1 - argmax)


def _decode_key(key: Tensor) -> tuple[Tensor, Tensor]:
    ordered = torch.div(key, _LOW, rounding_mode="floor")
    argmax = _LOW - 1 - (key - ordered * _LOW)
    ordered = ordered.to(torch.int32)
    bits = torch.where(ordered >= 0, ordered, ordered ^ 0x7FFFFFFF)
    return bits.view(torch.float32), argmax


def merge_shards(
    partials: ShardPartials,
    labels: Tensor,
    vocab_size: int,
    *,
    group: Any = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    extra: Tensor | None = None,
) -> tuple[RowStats, Tensor, Tensor, Tensor | None]:
    """Merge every rank's partials over ``group`` (two all_reduces; none without one).

    Returns the rows' ``RowStats`` (the same on every rank of the group), the labels to
    fold (a supervised label no shard or several shards hold is replaced by
    ``vocab_size``: out of range), each row's log-normaliser ``lse`` (float32, for a
    gradient softmax(z) = exp(z - lse)) and ``extra`` (a float64 tensor appended to the
    SUM) summed over the group.
    """
    import torch.distributed as dist

    n = partials.max.shape[0]
    f64 = torch.float64
    key = _argmax_key(partials.max, partials.argmax)
    if group is not None:
        dist.all_reduce(key, op=dist.ReduceOp.MAX, group=group)
    m_all, argmax = _decode_key(key)
    weight = torch.exp(partials.max.to(f64) - m_all.to(f64))  # exp(m_r - M): 0 for -inf
    s = partials.sumexp.to(f64)
    d = partials.dot.to(f64) + s * (partials.max.to(f64) - m_all.to(f64))
    empty = partials.max == float("-inf")  # a shard of -inf only: w = 0, s = 0, d * w NaN
    weighted_d = torch.where(empty, torch.zeros_like(d), weight * d)
    packed = torch.stack([weight * s, weighted_d, partials.label_logit.to(f64),
                          partials.label_here.to(f64)], dim=1).reshape(-1)
    if extra is not None:
        packed = torch.cat([packed, extra.reshape(-1).to(f64)])
    if group is not None:
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    total = packed[: n * _SUM_COLUMNS].view(n, _SUM_COLUMNS)
    summed_extra = None if extra is None else packed[n * _SUM_COLUMNS:].view(extra.shape)

    raw = labels.to(torch.int64)
    valid, _ = valid_rows(raw, vocab_size, ignore_index, mask)
    untiled = valid & (total[:, 3] != 1)  # shards that do not tile the vocabulary
    fold_labels = torch.where(untiled, torch.full_like(raw, vocab_size), raw)
    valid &= ~untiled
    big_s, big_d, z_label = total[:, 0], total[:, 1], total[:, 2]
    log_s = big_s.log()
    lse = m_all.to(f64) + log_s
    ce = lse - z_label
    fields = {"conf": big_s.reciprocal(), "label_prob": torch.exp(-ce), "ce": ce,
              "entropy": log_s - big_d / big_s}
    zero = torch.zeros((), dtype=torch.float32, device=key.device)
    stats = RowStats(
        valid=valid,
        finite=valid & torch.isfinite(lse),
        argmax=torch.where(valid, argmax, torch.zeros_like(argmax)),
        **{name: torch.where(valid, value.to(torch.float32), zero)
           for name, value in fields.items()},
    )
    return stats, fold_labels, lse.to(torch.float32), summed_extra


def top_candidates(rows: Tensor, vocab_start: int, rank: int, ranks: int, k: int) -> Tensor:
    """This shard's top-k (value, global id) of ``rows`` (R, V_r), in its slot of a
    (ranks, R, k, 2) float64 table that is zero elsewhere: summed over the group (the
    ``extra`` of ``merge_shards``), it holds every shard's candidates."""
    table = torch.zeros(ranks, rows.shape[0], k, 2, dtype=torch.float64, device=rows.device)
    table[rank, :, :, 0] = float("-inf")
    top = torch.topk(rows, min(k, rows.shape[1]), dim=-1)
    width = top.values.shape[1]
    table[rank, :, :width, 0] = top.values.to(torch.float64)
    table[rank, :, :width, 1] = (top.indices + vocab_start).to(torch.float64)
    return table


def best_candidates(table: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The top-k (values float32, global ids int64) of each row among every shard's
    candidates in a summed ``top_candidates`` table."""
    ranks, n_rows = table.shape[:2]
    merged = table.permute(1, 0, 2, 3).reshape(n_rows, ranks * table.shape[2], 2)
    best = torch.topk(merged[..., 0], k, dim=-1)
    return best.values.to(torch.float32), merged[..., 1].gather(1, best.indices).to(torch.int64)
