"""Fused linear cross-entropy with a vocab-sharded LM head (tensor parallel).

Each rank of the group holds rows [vocab_start, vocab_start + V_r) of the head's weight
(and bias), and the same hidden states and labels. As in linear_ce.py the (N, V) logits
are never built: rows go in chunks, and per chunk one matmul gives the shard's logits
(C, V_r), one read of them gives the shard's partials (kernels/vocab_shard.py), two
small all_reduces over the group merge them into each row's log-normaliser, loss and
statistics, and the same buffer then becomes the shard's gradient
softmax(z) - onehot = exp(z - lse) - onehot (the label's column only on the rank that
holds it) before two matmuls add the chunk's share to grad_hidden and grad_weight.

grad_hidden is a sum over the shards (each holds part of the vocabulary): one SUM
all_reduce over the group after the last chunk gives every rank the whole gradient, as
the input gradient of a column-parallel linear is reduced. ``reduction="none"`` stores
each row's log-normaliser and forms the gradients in the backward (one more matmul per
chunk, and no collective but that SUM). Autocast and dtypes are handled as in
linear_ce.py. This module imports nothing of trainspect's outside ``kernels/``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .linear_ce import (
    REDUCTIONS,
    _compute_dtype,
    _grads_of_chunk,
    _logits_into,
    chunk_rows,
    scale_saved_grads,
)
from .token_stats import RowStats, valid_rows
from .vocab_shard import merge_shards, shard_partials, top_candidates

__all__ = ["HeadSlice", "vocab_parallel_linear_ce"]

RowSink = Callable[[int, RowStats, Tensor, Tensor | None], None]
"""sink(first_row, stats, fold_labels, candidates) for each chunk's merged rows (the
statistics); candidates: the chunk's sample rows' summed ``top_candidates`` table, else None.
"""


@dataclass(frozen=True)
class HeadSlice:
    """Where this rank's rows of the head lie in the vocabulary, and the group of shards."""

    start: int
    size: int  # the whole vocabulary
    group: Any  # a process group; None when this rank holds every row
    rank: int = 0  # this rank's place in the group
    ranks: int = 1  # the group's size


def _softmax_grad_(z: Tensor, lse: Tensor, labels: Tensor, valid: Tensor, start: int) -> Tensor:
    """z (C, V_r) := exp(z - lse) - onehot(label) in place; 0 on rows that are not valid."""
    width = z.shape[1]
    z.copy_(z.float().sub_(lse[:, None]).exp_())  # in place when z is fp32 already
    here = valid & (labels >= start) & (labels < start + width)
    local = torch.where(here, labels - start, torch.zeros_like(labels))
    z.scatter_add_(1, local[:, None], -here[:, None].to(z.dtype))
    return z.masked_fill_(~valid[:, None], 0.0)


def _reduce_grad_h(grad_h: Tensor | None, group: Any) -> None:
    if grad_h is not None and group is not None:
        import torch.distributed as dist

        dist.all_reduce(grad_h, op=dist.ReduceOp.SUM, group=group)


class _VocabParallelCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                where: HeadSlice, reduction: str, rows: int, needs: tuple[bool, bool, bool],
                ignore_index: int, sink: RowSink | None, samples: tuple[int, int]) -> Tensor:
        n, width = hidden.shape[0], weight.shape[0]
        need_h, need_w, need_b = needs
        eager = reduction != "none" and any(needs)
        ce = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse_rows = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if eager and need_h else None
        grad_w = torch.zeros_like(weight) if eager and need_w else None
        grad_b = (torch.zeros(width, dtype=torch.float32, device=hidden.device)
                  if eager and need_b else None)
        buffer = torch.empty(min(rows, n), width, dtype=hidden.dtype, device=hidden.device)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            h, y = hidden[start:stop], labels[start:stop].to(torch.int64)
            z = _logits_into(buffer[: stop - start], h, weight, bias)
            sample_rows, k = samples
            extra = None  # the sample rows' top-k, read before the gradient overwrites z
            if start < sample_rows:
                extra = top_candidates(z[: min(stop, sample_rows) - start], where.start,
                                       where.rank, where.ranks, k)
            stats, fold_labels, lse, candidates = merge_shards(
                shard_partials(z, y, where.start), y, where.size, group=where.group,
                ignore_index=ignore_index, extra=extra)
            ce[start:stop] = stats.ce
            lse_rows[start:stop] = lse
            if sink is not None:
                sink(start, stats, fold_labels, candidates)
            if eager:
                _softmax_grad_(z, lse, y, stats.valid, where.start)
                _grads_of_chunk(z, h, weight, None if grad_h is None else grad_h[start:stop],
                                grad_w, grad_b)
        del buffer
        if reduction == "none":
            ctx.save_for_backward(hidden, weight, bias, labels, lse_rows)
            ctx.where, ctx.rows, ctx.needs, ctx.ignore_index = where, rows, needs, ignore_index
            ctx.mark_non_differentiable(labels)
            return ce
        _reduce_grad_h(grad_h, where.group)
        total = ce.sum()
        valid, _ = valid_rows(labels, where.size, ignore_index)
        count = valid.sum().to(torch.float32)  # the same on every rank: labels are global
        ctx.scale = 1.0 / count if reduction == "mean" else None
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return total / count if reduction == "mean" else total

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        none = (None,) * 8
        if getattr(ctx, "where", None) is not None:
            return _recomputed_backward(ctx, grad_output) + none
        return scale_saved_grads(ctx, grad_output) + none


def _recomputed_backward(ctx, grad_rows: Tensor) -> tuple:
    """reduction="none": each chunk's logits again, softmax from the stored lse, weighted
    per row; no collective but the SUM of grad_hidden."""
    hidden, weight, bias, labels, lse_rows = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs
    where = ctx.where
    n, width = hidden.shape[0], weight.shape[0]
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros_like(weight) if need_w else None
    grad_b = torch.zeros(width, dtype=torch.float32, device=hidden.device) if need_b else None
    buffer = torch.empty(min(ctx.rows, n), width, dtype=hidden.dtype, device=hidden.device)
    for start in range(0, n, ctx.rows):
        stop = min(n, start + ctx.rows)
        h, y = hidden[start:stop], labels[start:stop].to(torch.int64)
        z = _logits_into(buffer[: stop - start], h, weight, bias)
        valid, _ = valid_rows(y, where.size, ctx.ignore_index)
        _softmax_grad_(z, lse_rows[start:stop], y, valid, where.start)
        z.mul_(grad_rows[start:stop, None].to(z.dtype))
        _grads_of_chunk(z, h, weight, None if grad_h is None else grad_h[start:stop], grad_w,
                        grad_b)
    _reduce_grad_h(grad_h, where.group)
    if grad_b is not None:
        grad_b = grad_b.to(bias.dtype)
    return grad_h, grad_w, grad_b


def vocab_parallel_linear_ce(hidden: Tensor, weight: Tensor, labels: Tensor, where: HeadSlice,
                             *, bias: Tensor | None = None, ignore_index: int = -100,
                             reduction: str = "mean", sink: RowSink | None = None,
                             sample_rows: int = 0, sample_k: int = 5,
                             max_chunk_bytes: int | None = None) -> Tensor:
    """``F.cross_entropy(hidden @ W.T + b, labels)`` where this rank holds rows
    [where.start, where.start + V_r) of W (``weight``, (V_r, H)) and b (``bias``, (V_r,)).

    ``hidden`` (N, H) and ``labels`` (N,) (global ids) are the same on every rank of
    ``where.group``; every rank gets the same loss. Autograd reaches ``hidden`` (its
    gradient summed over the group), ``weight`` and ``bias`` (this rank's rows).
    ``sink`` receives each chunk's merged rows (their statistics) and, for rows
    [0, sample_rows), every shard's top-``sample_k`` candidates. Raises ValueError for
    bad arguments.
    """
    if not isinstance(hidden, Tensor) or hidden.dim() != 2 or not hidden.is_floating_point():
        got = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
        raise ValueError(f"expected `hidden` to be a 2-D float tensor (N, H), got {got}")
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"expected `weight` of shape (V_r, {hidden.shape[1]}), got {got}")
    if not isinstance(labels, Tensor) or tuple(labels.shape) != (hidden.shape[0],) or (
            labels.is_floating_point() or labels.dtype == torch.bool):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"expected integer `labels` of shape ({hidden.shape[0]},), got {got}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (
            weight.shape[0],)):
        got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"expected `bias` of shape ({weight.shape[0]},), got {got}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"expected `reduction` to be one of {REDUCTIONS}, got {reduction!r}")
    dtype = _compute_dtype(hidden, weight)
    grad_on = torch.is_grad_enabled()
    needs = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
             grad_on and bias is not None and bias.requires_grad)
    # by the whole vocabulary: every rank must cut the same chunks (their collectives pair up)
    rows = chunk_rows(hidden.shape[0], where.size, hidden.shape[1],
                      torch.finfo(dtype).bits // 8, max_chunk_bytes, hidden.device.type)
    with torch.autocast(hidden.device.type, enabled=False):
        h, w = hidden.to(dtype), weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        return _VocabParallelCE.apply(h, w, b, labels, where, reduction, rows, needs,
                                      ignore_index, sink, (sample_rows, sample_k))
