"""Chunked PyTorch backend of the row-statistics pass, and the kernel's reference.

Rows are processed in chunks of C rows so that the fp32 temporaries (C, V) fit in a
fixed workspace (unless told otherwise 64 MiB on the CPU, where a chunk is also kept to
about 256 Ki elements per thread, and 1 GiB on CUDA, where fewer chunks mean fewer
launches): memory does not grow with N. Per chunk, with z the (soft-capped) logits as fp32:

- max and first-index argmax from a blocked ``amax`` (the row max of each block of
  64 columns, then the first block holding the row max, then ``argmax`` inside it):
  one vectorised read instead of ``torch.max(dim)``'s slow index-tracking reduction;
- y = z - max (one workspace buffer; a non-fp32 chunk is converted into it once),
  e = exp(y) (the second), s = sum e, d = sum e * y; then lse = max + log s,
  conf = 1 / s, ce = lse - z_label, label_prob = exp(-ce), entropy = log s - d / s. The
  same algebra as the Triton kernel, one exp per logit, no full-size output.
- grad_out: p = e / s, minus 1 at the label, times (1 - tanh^2) with a soft cap, times
  ``grad_scale``; written into ``grad_out`` (the logits themselves may be given: a
  chunk's logits are fully read before its gradient is written).

-inf logits: 0 * -inf would make d NaN. On CUDA d is a ``nansum`` (a NaN logit still
shows: it makes s NaN); on the CPU the rare rows where it happened are redone with y
clamped at -1e30. A row whose log-normaliser is not finite (a NaN or +inf logit, or
every logit -inf) gives NaN in every float field and ``finite`` False.

- On the CPU the host decides per chunk: a chunk with no supervised row is skipped, a
  mostly unsupervised one gathers its valid rows, the rest are read as slices.
- On CUDA (the fallback without Triton) every row is computed on contiguous slices and
  rows that are not valid are zeroed with ``masked_fill``: no host sync, no
  data-dependent shapes.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from .token_stats import RowStats

__all__ = ["DEFAULT_WORKSPACE_BYTES", "row_stats_torch", "rows_per_chunk"]

DEFAULT_WORKSPACE_BYTES = 64 * 2**20  # 64 MiB of fp32 temporaries per chunk
# fp32 (C, V) tensors alive at once in a chunk, rounded up: the workspace's y and e (and
# the soft cap's z); a teacher adds yt, et and a clamped y.
_F32_ROWS_STUDENT = 3
_F32_ROWS_TEACHER = 6
# On the CPU a chunk is also kept small enough to stay in the caches between its passes:
# about this many elements per thread.
CPU_CHUNK_ELEMENTS_PER_THREAD = 2**18  # best or near it of 2**16..2**20 (docs/benchmarks.md)
CUDA_WORKSPACE_BYTES = 2**30  # without Triton, larger chunks mean fewer launches
CPU_CONVERT_FIRST = True  # bf16/fp16 on the CPU: convert a chunk to fp32, then reduce
ARGMAX_BLOCK = 64  # columns per block of the blocked argmax
Y_FLOOR = -1.0e30  # y below this is exp(y) = 0 exactly; keeps 0 * -inf out of the sums


def rows_per_chunk(vocab_size: int, has_target: bool, max_workspace_bytes: int | None,
                   cpu: bool = False) -> int:
    """Rows per chunk so that the fp32 temporaries stay within the workspace (at least 1);
    on the CPU also within the caches (CPU_CHUNK_ELEMENTS_PER_THREAD per thread)."""
    if max_workspace_bytes is not None:
        budget = max_workspace_bytes
    else:
        budget = DEFAULT_WORKSPACE_BYTES if cpu else CUDA_WORKSPACE_BYTES
    per_row = vocab_size * 4 * (_F32_ROWS_TEACHER if has_target else _F32_ROWS_STUDENT)
    rows = budget // per_row
    if cpu:
        rows = min(rows, torch.get_num_threads() * CPU_CHUNK_ELEMENTS_PER_THREAD // vocab_size)
    return max(1, rows)


@functools.lru_cache(maxsize=8)
def _block_lanes(device: torch.device) -> Tensor:
    return torch.arange(ARGMAX_BLOCK, device=device)


def max_and_argmax(z: Tensor) -> tuple[Tensor, Tensor]:
    """Row max (fp32) and first index of it, like ``torch.max(z, -1)`` but one fast read.

    NaN rows give a NaN max (their argmax is unspecified).
    """
    c, vocab = z.shape
    full = (vocab // ARGMAX_BLOCK) * ARGMAX_BLOCK
    if full == 0 or z.stride(-1) != 1:
        m, idx = torch.max(z, dim=-1)
        return m.float(), idx
    block_max = torch.amax(z[:, :full].unflatten(1, (-1, ARGMAX_BLOCK)), dim=-1)  # (C, B)
    if full < vocab:
        block_max = torch.cat([block_max, torch.amax(z[:, full:], dim=-1, keepdim=True)], 1)
    m = torch.amax(block_max, dim=-1)  # (C,)
    first = torch.argmax((block_max == m[:, None]).to(torch.uint8), dim=-1)  # first block
    start = first * ARGMAX_BLOCK  # (C,)
    cols = (start[:, None] + _block_lanes(z.device)).clamp_(max=vocab - 1)
    inner = torch.argmax(z.gather(1, cols), dim=-1)  # first index inside that block
    return m.float(), start + inner


def _row_dot(a: Tensor, b: Tensor, out: Tensor | None = None, nan_as_zero: bool = False
             ) -> Tensor:
    """sum_v a * b per row (C,), the product formed in ``out`` and summed by torch.sum's
    cascade (a BLAS dot accumulates in order and lost 1e-5 of entropy at V = 32k)."""
    product = torch.mul(a, b, out=out)
    return product.nansum(dim=-1) if nan_as_zero else product.sum(dim=-1)


class _Workspace:
    """Three fp32 (C, V) buffers reused by every chunk of a call (y, e and a product)."""

    def __init__(self, rows: int, vocab: int, device: torch.device) -> None:
        self.y = torch.empty(rows, vocab, dtype=torch.float32, device=device)
        self.e = torch.empty(rows, vocab, dtype=torch.float32, device=device)
        self.prod = torch.empty(rows, vocab, dtype=torch.float32, device=device)


def _shifted(x: Tensor, cap: float | None, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y = z - max in ``y``, max, argmax, z_label source) for rows x (C, V).

    z is x as fp32 (soft-capped with a cap). Without a cap, the max is read from x itself
    and the subtraction writes fp32 into ``y``, except for a non-fp32 x on the CPU, where
    reductions of bf16/fp16 are slow: x is converted into ``y`` once and shifted there.
    """
    if cap is None and (x.dtype == torch.float32 or x.device.type != "cpu"
                        or not CPU_CONVERT_FIRST):
        m, argmax = max_and_argmax(x)
        torch.sub(x, m[:, None], out=y)
        return y, m, argmax, x
    y.copy_(x)  # fp32 z: one vectorised conversion, never a copy of the caller's tensor
    if cap is not None:
        y.div_(cap).tanh_().mul_(cap)
    m, argmax = max_and_argmax(y)
    z_label_source = y.clone() if cap is not None else x  # z itself is shifted in place
    y.sub_(m[:, None])
    return y, m, argmax, z_label_source


def _chunk_stats(
    x: Tensor, labels: Tensor, t: Tensor | None, cap: float | None, grad: Tensor | None,
    grad_scale: float | Tensor | None, ws: _Workspace,
) -> dict[str, Tensor]:
    """Statistics of rows ``x`` (C, V) with ``labels`` (C,) in [0, V); teacher ``t`` (C, V).

    Writes the gradient of each row's ce into ``grad`` (C, V) when given.
    """
    c = x.shape[0]
    host = x.device.type == "cpu"  # a host branch costs nothing there
    y, m, argmax, z_src = _shifted(x, cap, ws.y[:c])
    z_label = z_src.gather(1, labels[:, None]).squeeze(1).float()
    del z_src
    e = torch.exp(y, out=ws.e[:c])
    s = e.sum(dim=-1)
    # sum e * y; a -inf logit gives 0 * -inf = NaN there. On CUDA nansum drops those terms
    # with no data-dependent branch (a NaN logit still makes the row NaN: s is NaN then).
    d = _row_dot(e, y, ws.prod[:c], nan_as_zero=not host)
    if host:  # on the CPU the rare rows with a -inf logit are redone, clamped
        redo = (d.isnan() & ~s.isnan()).nonzero().squeeze(1)
        if redo.numel():
            y.index_copy_(0, redo, y.index_select(0, redo).clamp_min_(Y_FLOOR))
            d.index_copy_(0, redo, _row_dot(e.index_select(0, redo), y.index_select(0, redo)))
    log_s = s.log()
    lse = m + log_s
    ce = lse - z_label  # +inf when the label's logit is -inf; NaN when lse is not finite
    stats = {
        "argmax": argmax,
        "conf": s.reciprocal(),  # exp(max - lse)
        "label_prob": torch.exp(-ce),
        "ce": ce,
        "entropy": log_s - d / s,
    }
    finite = torch.isfinite(lse)
    if t is not None:
        stats.update(_teacher_stats(t, y, e, s, log_s))
        finite &= stats.pop("teacher_finite")
    stats["finite"] = finite
    if grad is not None:
        p = e.div_(s[:, None])  # softmax(z), in place
        p.scatter_add_(1, labels[:, None], torch.full_like(p[:, :1], -1.0))  # minus one-hot
        if cap is not None:  # dz/dx = 1 - tanh^2(x / cap), tanh = z / cap = (y + max) / cap
            tanh = y.add_(m[:, None]).div_(cap)
            p.mul_(tanh.square_().neg_().add_(1.0))
        if grad_scale is not None:
            p.mul_(grad_scale)
        grad.copy_(p)
    return stats


def _teacher_stats(t: Tensor, y: Tensor, e: Tensor, s: Tensor, log_s: Tensor
                   ) -> dict[str, Tensor]:
    """teacher_argmax, KL(q || p) and sum min(p, q) against the student's y, e = exp(y), s."""
    mt, t_argmax = max_and_argmax(t)
    yt = torch.sub(t, mt[:, None])
    if yt.dtype != torch.float32:
        yt = yt.float()
    yt.clamp_min_(Y_FLOOR)
    y_clamped = y.clamp_min(Y_FLOOR)
    et = torch.exp(yt)
    st = et.sum(dim=-1)
    log_st = st.log()
    # KL(q || p) = sum q (log q - log p), log q - log p = (yt - y) - log st + log s
    kl = _row_dot(et, yt.sub_(y_clamped)) / st + (log_s - log_st)
    # A student logit of -inf under teacher mass makes KL infinite (y was clamped).
    unreachable = ((y_clamped <= Y_FLOOR) & (et > 0)).any(dim=-1)
    q = et.div_(st[:, None])
    alpha = torch.minimum(torch.div(e, s[:, None], out=y_clamped), q).sum(dim=-1)
    return {"teacher_argmax": t_argmax,
            "kl": torch.where(unreachable, torch.full_like(kl, float("inf")), kl),
            "alpha": alpha, "teacher_finite": torch.isfinite(mt + log_st)}


def _empty_outputs(n: int, device: torch.device, has_target: bool) -> dict[str, Tensor]:
    """Zero-filled (N,) outputs, so rows that are skipped read 0."""
    f32 = dict(dtype=torch.float32, device=device)
    i64 = dict(dtype=torch.int64, device=device)
    out = {
        "argmax": torch.zeros(n, **i64),
        "conf": torch.zeros(n, **f32),
        "label_prob": torch.zeros(n, **f32),
        "ce": torch.zeros(n, **f32),
        "entropy": torch.zeros(n, **f32),
        "finite": torch.zeros(n, dtype=torch.bool, device=device),
    }
    if has_target:
        out.update(teacher_argmax=torch.zeros(n, **i64), kl=torch.zeros(n, **f32),
                   alpha=torch.zeros(n, **f32))
    return out


def _gathered_chunk(logits: Tensor, safe_labels: Tensor, valid: Tensor, target: Tensor | None,
                    grad_out: Tensor | None, start: int, stop: int, cap: float | None,
                    grad_scale: float | Tensor | None, ws: _Workspace,
                    out: dict[str, Tensor]) -> None:
    """The valid rows of logits[start:stop] only (CPU): gathered, computed, scattered back."""
    idx = valid[start:stop].nonzero().squeeze(1) + start  # no device sync on the CPU
    x = logits.index_select(0, idx)
    t = None if target is None else target.index_select(0, idx)
    grad = None if grad_out is None else torch.empty(x.shape, dtype=grad_out.dtype)
    stats = _chunk_stats(x, safe_labels[idx], t, cap, grad, grad_scale, ws)
    for name, value in stats.items():
        out[name].index_copy_(0, idx, value)
    if grad is not None:
        grad_out[start:stop] = 0.0
        grad_out.index_copy_(0, idx, grad)


def row_stats_torch(
    logits: Tensor,
    safe_labels: Tensor,
    valid: Tensor,
    *,
    target_logits: Tensor | None = None,
    max_workspace_bytes: int | None = None,
    grad_out: Tensor | None = None,
    logit_softcap: float | None = None,
    grad_scale: float | Tensor | None = None,
) -> RowStats:
    """Row statistics of ``logits`` (N, V) in row chunks with a bounded fp32 workspace.

    ``safe_labels`` (N,) int64 and ``valid`` (N,) bool come from ``token_stats.valid_rows``:
    labels are in [0, V) where valid and -1 elsewhere. Use ``token_stats.row_stats``,
    which checks the arguments, rather than calling this directly.
    """
    n, vocab = logits.shape
    has_target = target_logits is not None
    cpu = logits.device.type == "cpu"
    chunk = min(max(n, 1), rows_per_chunk(vocab, has_target, max_workspace_bytes, cpu))
    ws = _Workspace(chunk, vocab, logits.device)
    out = _empty_outputs(n, logits.device, has_target)
    valid_rows = valid.tolist() if cpu else None  # the CPU path branches on the host
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        if cpu:
            count = sum(valid_rows[start:stop])
            if count == 0:  # nothing supervised: zeros, and the rows are never read
                if grad_out is not None:
                    grad_out[start:stop] = 0.0
                continue
            if 2 * count < stop - start:  # mostly unsupervised: gather the few valid rows
                _gathered_chunk(logits, safe_labels, valid, target_logits, grad_out, start,
                                stop, logit_softcap, grad_scale, ws, out)
                continue
        # Every row of the slice is computed, the invalid ones zeroed: no host sync.
        t = target_logits[start:stop] if has_target else None
        labels = safe_labels[start:stop].clamp(min=0)  # (C,) -1 -> 0, zeroed below
        grad = None if grad_out is None else grad_out[start:stop]
        stats = _chunk_stats(logits[start:stop], labels, t, logit_softcap, grad, grad_scale,
                             ws)
        invalid = ~valid[start:stop]
        for name, value in stats.items():
            out[name][start:stop] = value.masked_fill(invalid, 0)
        if grad is not None:
            grad.masked_fill_(invalid[:, None], 0.0)
    return RowStats(valid=valid, **out)
