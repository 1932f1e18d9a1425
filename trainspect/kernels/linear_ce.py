"""Fused linear cross-entropy: the loss of ``hidden @ weight.T + bias`` without the logits.

The [N, V] logits are never built. Rows are taken in chunks of C rows: one matmul gives
the chunk's logits into a reused (C, V) buffer, one pass over that buffer gives each
row's cross-entropy, its token statistics and, in the same read, the gradient
d ce_row / d logits = softmax - onehot written over the logits in place; two more
matmuls turn that chunk of gradients into its rows of ``grad_hidden`` and add its
share to ``grad_weight`` (and ``grad_bias``). The loss's backward then only scales the
stored gradients by ``grad_output`` (and 1/n for ``reduction="mean"``, a device scalar:
nothing is read back to the host).

``reduction="none"`` cannot fold the per-row upstream gradient in before it is known,
so it stores nothing in the forward and recomputes each chunk's logits in the
backward (one more matmul, as Cut Cross-Entropy does).

The per-row pass is ``token_stats.row_stats(chunk, labels, grad_out=chunk)`` (the
row-statistics core, docs/architecture.md): one read of the chunk gives ce, the
statistics and the gradient. It is a callable (``RowPass``) so that a caller can keep
the chunk's statistics while the chunk is in memory; ``plain_row_pass`` is the one
without any bookkeeping. This module imports nothing of trainspect's
outside ``kernels/`` (docs/architecture.md, "Layers") and raises the built-in
``ValueError``/``TypeError`` for bad arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .token_stats import resolve_backend, row_stats

__all__ = ["CHUNK_CONFIG", "DEFAULT_CHUNK_BYTES", "REDUCTIONS", "RowPass", "chunk_row_stats",
           "chunk_rows", "fused_linear_ce", "plain_row_pass"]

REDUCTIONS = ("mean", "sum", "none")
DEFAULT_CHUNK_BYTES = 256 * 2**20  # the (C, V) logits buffer; see `chunk_rows`
# Floors of the default chunk: on CUDA, fewer rows stop filling a large GPU (matmuls and
# the row pass); elsewhere the smaller floor keeps the peak memory low.
MIN_CHUNK = {"cuda": (64 * 2**20, 256), "other": (32 * 2**20, 128)}  # (bytes, rows)
CHUNK_CONFIG: dict = {"block_v": 4096, "num_warps": 16}
"""Triton launch of the row pass on a chunk. token_stats' default (512 elements, 2 warps
a row) is tuned for a whole batch of rows; a chunk has a few hundred, so each row gets
more warps: on an H200 (benchmarks/linear_ce.py --sweep, docs/benchmarks.md) this took
forward + backward at N = 8192, V = 152064 from 72.0 to 65.1 ms."""

RowPass = Callable[[Tensor, Tensor, int, bool], Tensor]
"""row_pass(logits (C, V), labels (C,), first_row, grad) -> ce (C,) float32.

With ``grad`` True it also overwrites ``logits`` with d ce_row / d logits (0 on rows
that are not supervised). ``first_row`` is the chunk's offset in the whole batch.
"""


def chunk_row_stats(logits: Tensor, labels: Tensor, *, ignore_index: int = -100,
                    logit_softcap: float | None = None, grad: bool = False,
                    target_logits: Tensor | None = None):
    """``row_stats(logits, labels, grad_out=logits if grad)`` of one chunk, with the Triton
    launch of ``CHUNK_CONFIG`` on CUDA (the statistics and gradient are the same)."""
    if resolve_backend("auto", logits.device) != "triton":
        return row_stats(logits, labels, target_logits=target_logits, ignore_index=ignore_index,
                         logit_softcap=logit_softcap, grad_out=logits if grad else None)
    from .token_stats_triton import TritonConfig, row_stats_triton

    return row_stats_triton(logits, labels, ignore_index=ignore_index,
                            target_logits=target_logits, grad_out=logits if grad else None,
                            logit_softcap=None if logit_softcap is None else float(logit_softcap),
                            config=TritonConfig(**CHUNK_CONFIG))


def plain_row_pass(ignore_index: int = -100, logit_softcap: float | None = None) -> RowPass:
    """The row pass with no bookkeeping: cross-entropy, and the gradient when asked."""

    def row_pass(logits: Tensor, labels: Tensor, first_row: int, grad: bool) -> Tensor:
        return chunk_row_stats(logits, labels, ignore_index=ignore_index,
                               logit_softcap=logit_softcap, grad=grad).ce

    return row_pass


def chunk_rows(n_rows: int, vocab_size: int, hidden_size: int, itemsize: int,
               max_chunk_bytes: int | None = None, device_type: str = "cuda") -> int:
    """Rows per chunk: the (C, V) logits buffer stays within ``max_chunk_bytes``.

    Default: the larger of the hidden states' own size (N x H x itemsize, Liger's bound)
    and 64 MiB (32 MiB off CUDA), capped at 256 MiB, and never fewer than 256 rows (128
    off CUDA) unless N is smaller: a 256 x 256000 bf16 chunk is 125 MiB. Rounded down
    to a multiple of 64 rows.
    """
    if max_chunk_bytes is None:
        least_bytes, floor = MIN_CHUNK["cuda" if device_type == "cuda" else "other"]
        budget = min(DEFAULT_CHUNK_BYTES, max(least_bytes, n_rows * hidden_size * itemsize))
    else:
        if isinstance(max_chunk_bytes, bool) or not isinstance(max_chunk_bytes, int) or (
                max_chunk_bytes <= 0):
            raise ValueError(f"expected `max_chunk_bytes` to be a positive int, "
                             f"got {max_chunk_bytes!r}")
        budget, floor = max_chunk_bytes, 1
    rows = max(floor, budget // (vocab_size * itemsize))
    if rows >= 64:
        rows -= rows % 64
    return max(1, min(rows, n_rows))


def _check(hidden: Tensor, weight: Tensor, labels: Tensor, bias: Tensor | None,
           reduction: str) -> None:
    if not isinstance(hidden, Tensor) or hidden.dim() != 2 or not hidden.is_floating_point():
        got = (f"{tuple(hidden.shape)} {hidden.dtype}" if isinstance(hidden, Tensor)
               else type(hidden).__name__)
        raise ValueError(f"expected `hidden` to be a 2-D float tensor (N, H), got {got}")
    if not isinstance(weight, Tensor) or weight.dim() != 2 or weight.shape[1] != hidden.shape[1]:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"expected `weight` of shape (V, {hidden.shape[1]}) to match hidden "
                         f"{tuple(hidden.shape)}, got {got}")
    if not isinstance(labels, Tensor) or tuple(labels.shape) != (hidden.shape[0],):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"expected `labels` of shape ({hidden.shape[0]},), got {got}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"expected `labels` to be an integer tensor, got dtype {labels.dtype}")
    if bias is not None and (not isinstance(bias, Tensor) or tuple(bias.shape) != (
            weight.shape[0],)):
        got = tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__
        raise ValueError(f"expected `bias` of shape ({weight.shape[0]},), got {got}")
    for name, t in (("weight", weight), ("labels", labels), ("bias", bias)):
        if t is not None and t.device != hidden.device:
            raise ValueError(f"expected `{name}` on {hidden.device} like hidden, got {t.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"expected `reduction` to be one of {REDUCTIONS}, got {reduction!r}")


def _logits_into(out: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """out (C, V) = hidden (C, H) @ weight.T + bias, in the inputs' dtype."""
    if bias is None:
        return torch.mm(hidden, weight.t(), out=out)
    return torch.addmm(bias, hidden, weight.t(), out=out)


def _grads_of_chunk(dz: Tensor, h: Tensor, weight: Tensor, grad_h: Tensor | None,
                    grad_w: Tensor | None, grad_b: Tensor | None) -> None:
    """Add the chunk's share: grad_h rows = dz @ W, grad_w += dz.T @ h, grad_b += sum dz."""
    if grad_h is not None:
        torch.mm(dz, weight, out=grad_h)
    if grad_w is not None:
        grad_w.addmm_(dz.t(), h)
    if grad_b is not None:
        grad_b.add_(dz.sum(dim=0, dtype=torch.float32))


class _LinearCrossEntropy(torch.autograd.Function):
    """Autograd of the fused loss; see the module docstring for the two strategies."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, labels: Tensor,
                reduction: str, row_pass: RowPass, grad_pass: RowPass, rows: int,
                needs: tuple[bool, bool, bool], ignore_index: int) -> Tensor:
        n, v = hidden.shape[0], weight.shape[0]
        need_h, need_w, need_b = needs
        eager = reduction != "none" and any(needs)  # gradients formed in this very pass
        ce = torch.empty(n, dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if eager and need_h else None
        grad_w = torch.zeros_like(weight) if eager and need_w else None
        grad_b = (torch.zeros(v, dtype=torch.float32, device=hidden.device)
                  if eager and need_b else None)
        buffer = torch.empty(min(rows, n), v, dtype=hidden.dtype, device=hidden.device)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            h = hidden[start:stop]
            z = _logits_into(buffer[: stop - start], h, weight, bias)
            ce[start:stop] = row_pass(z, labels[start:stop], start, eager)
            if eager:
                _grads_of_chunk(z, h, weight, None if grad_h is None else grad_h[start:stop],
                                grad_w, grad_b)
        del buffer
        if reduction == "none":
            ctx.save_for_backward(hidden, weight, bias, labels)
            ctx.rows, ctx.grad_pass, ctx.needs = rows, grad_pass, needs
            ctx.mark_non_differentiable(labels)
            return ce
        total = ce.sum()
        if reduction == "mean":
            valid = (labels != ignore_index) & (labels >= 0) & (labels < v)
            count = valid.sum().to(torch.float32)  # a device scalar: no host sync
            scale = 1.0 / count
            loss = total / count
        else:
            scale = None
            loss = total
        ctx.grads = (grad_h, grad_w, grad_b)
        ctx.scale = scale
        ctx.bias_dtype = None if bias is None else bias.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        if getattr(ctx, "grad_pass", None) is not None:
            return _recomputed_backward(ctx, grad_output) + (None,) * 7
        return scale_saved_grads(ctx, grad_output) + (None,) * 7


def scale_saved_grads(ctx: Any, grad_output: Tensor) -> tuple:
    """The gradients of hidden, weight and bias that the forward computed and saved on
    `ctx`, scaled in place by the incoming gradient (and the mean's 1/N); once only."""
    if ctx.grads is None:
        raise RuntimeError("linear_cross_entropy: backward ran twice through the same "
                           "graph (retain_graph=True); the stored gradients were already "
                           "used. Recompute the loss for a second backward.")
    grad_h, grad_w, grad_b = ctx.grads
    ctx.grads = None  # scaled in place below: a second backward would be wrong
    scale = grad_output.to(torch.float32)
    if ctx.scale is not None:
        scale = scale * ctx.scale
    if grad_h is not None:
        grad_h.mul_(scale.to(grad_h.dtype))
    if grad_w is not None:
        grad_w.mul_(scale.to(grad_w.dtype))
    if grad_b is not None:
        grad_b = (grad_b * scale).to(ctx.bias_dtype)
    return grad_h, grad_w, grad_b


def _recomputed_backward(ctx, grad_rows: Tensor) -> tuple:
    """reduction="none": each chunk's logits again, gradients weighted per row."""
    hidden, weight, bias, labels = ctx.saved_tensors
    need_h, need_w, need_b = ctx.needs
    n, v = hidden.shape[0], weight.shape[0]
    grad_h = torch.empty_like(hidden) if need_h else None
    grad_w = torch.zeros_like(weight) if need_w else None
    grad_b = torch.zeros(v, dtype=torch.float32, device=hidden.device) if need_b else None
    buffer = torch.empty(min(ctx.rows, n), v, dtype=hidden.dtype, device=hidden.device)
    for start in range(0, n, ctx.rows):
        stop = min(n, start + ctx.rows)
        h = hidden[start:stop]
        z = _logits_into(buffer[: stop - start], h, weight, bias)
        ctx.grad_pass(z, labels[start:stop], start, True)
        z.mul_(grad_rows[start:stop, None].to(z.dtype))
        _grads_of_chunk(z, h, weight, None if grad_h is None else grad_h[start:stop], grad_w,
                        grad_b)
    if grad_b is not None:
        grad_b = grad_b.to(bias.dtype)
    return grad_h, grad_w, grad_b


def _compute_dtype(hidden: Tensor, weight: Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on for the device, else the promoted one."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return torch.promote_types(hidden.dtype, weight.dtype)


def fused_linear_ce(hidden: Tensor, weight: Tensor, labels: Tensor, *,
                    bias: Tensor | None = None, ignore_index: int = -100,
                    reduction: str = "mean", logit_softcap: float | None = None,
                    row_pass: RowPass | None = None, max_chunk_bytes: int | None = None,
                    ) -> Tensor:
    """``F.cross_entropy(hidden @ weight.T + bias, labels)`` without the (N, V) logits.

    Args:
        hidden: (N, H) float; weight: (V, H); labels: (N,) integers; bias: optional (V,).
        ignore_index: label of rows that do not count (-100). Labels outside [0, V) are
            treated as ignored too (no device assert; callers that care count them).
        reduction: "mean" (over supervised rows; NaN when there are none, as
            F.cross_entropy), "sum", or "none" (per-row values, 0 on ignored rows).
        logit_softcap: if set, logits are ``cap * tanh(z / cap)`` before the softmax
            (Gemma 2), and the gradient goes through the tanh.
        row_pass: what each chunk's pass runs (default ``plain_row_pass``); it must
            honour ``ignore_index`` and ``logit_softcap`` itself.
        max_chunk_bytes: bound of the (C, V) logits buffer (see ``chunk_rows``).

    Autograd reaches ``hidden``, ``weight`` and ``bias``. With "mean"/"sum" the
    gradients are formed in the forward (one matmul for the logits, two for the
    gradients); a second backward through the same graph raises. Under autocast the
    matmuls run in autocast's dtype and the gradients come back in the inputs' dtypes.
    """
    _check(hidden, weight, labels, bias, reduction)
    if logit_softcap is not None and not (isinstance(logit_softcap, (int, float))
                                          and logit_softcap > 0):
        raise ValueError(f"expected `logit_softcap` to be a positive number or None, "
                         f"got {logit_softcap!r}")
    dtype = _compute_dtype(hidden, weight)
    grad_on = torch.is_grad_enabled()
    needs = (grad_on and hidden.requires_grad, grad_on and weight.requires_grad,
             grad_on and bias is not None and bias.requires_grad)
    rows = chunk_rows(hidden.shape[0], weight.shape[0], hidden.shape[1],
                      torch.finfo(dtype).bits // 8, max_chunk_bytes, hidden.device.type)
    plain = plain_row_pass(ignore_index, logit_softcap)
    with torch.autocast(hidden.device.type, enabled=False):
        h, w = hidden.to(dtype), weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        loss = _LinearCrossEntropy.apply(h, w, b, labels, reduction, row_pass or plain, plain,
                                         rows, needs, ignore_index)
    return loss
