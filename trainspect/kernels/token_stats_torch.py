"""Chunked PyTorch backend of the row-statistics pass, and the kernel's reference.

Rows are processed in chunks of C rows so that the fp32 temporaries (C, V) fit in a
fixed workspace (64 MiB unless told otherwise): memory does not grow with N. Per chunk,
with z the (soft-capped) logits:

- max and first-index argmax from a blocked ``amax`` (the row max of each block of
  64 columns, then the first block holding the row max, then ``argmax`` inside it):
  one vectorised read instead of ``torch.max(dim)``'s slow index-tracking reduction;
- y = z - max (fp32, one workspace buffer), e = exp(y) (a second one), s = sum e,
  d = sum e * y; then lse = max + log s, conf = 1 / s, ce = lse - z_label,
  label_prob = exp(-ce), entropy = log s - d / s. The same algebra as the Triton
  kernel, and no full-size ``log_softmax`` output.
- grad_out: p = e / s, minus 1 at the label, times (1 - tanh^2) with a soft cap, times
  ``grad_scale``; written row by row into ``grad_out`` (the logits themselves may be
  given: a chunk's logits are fully read before its gradient is written).

-inf logits: y is clamped at -1e30 before the sum d, so exp(y) = 0 and 0 * -1e30 = 0
(never 0 * -inf = NaN). A row whose log-normaliser is not finite (a NaN or +inf logit,
or every logit -inf) gives NaN in every float field and ``finite`` False.

- On the CPU, unsupervised rows are skipped (``nonzero`` costs no device sync there):
  runs of consecutive supervised rows are read as slices, other rows gathered.
- On CUDA (the fallback without Triton) every row of a chunk is computed on contiguous
  slices and rows that are not valid are zeroed with ``masked_fill``: no host sync,
  no data-dependent shapes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .token_stats import RowStats

__all__ = ["DEFAULT_WORKSPACE_BYTES", "row_stats_torch", "rows_per_chunk"]

DEFAULT_WORKSPACE_BYTES = 64 * 2**20  # 64 MiB of fp32 temporaries per chunk
# fp32 (C, V) tensors alive at once in a chunk, rounded up: y and e (plus torch's own
# temporaries); a teacher adds yt, et and yt - y.
_F32_ROWS_STUDENT = 3
_F32_ROWS_TEACHER = 6
ARGMAX_BLOCK = 64  # columns per block of the blocked argmax
Y_FLOOR = -1.0e30  # y below this is exp(y) = 0 exactly; keeps 0 * -inf out of the sums


def rows_per_chunk(vocab_size: int, has_target: bool, max_workspace_bytes: int | None) -> int:
    """Rows per chunk so that the fp32 temporaries stay within the workspace (at least 1)."""
    budget = DEFAULT_WORKSPACE_BYTES if max_workspace_bytes is None else max_workspace_bytes
    per_row = vocab_size * 4 * (_F32_ROWS_TEACHER if has_target else _F32_ROWS_STUDENT)
    return max(1, budget // per_row)


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
    cols = (start[:, None] + torch.arange(ARGMAX_BLOCK, device=z.device)).clamp_(max=vocab - 1)
    inner = torch.argmax(z.gather(1, cols), dim=-1)  # first index inside that block
    return m.float(), start + inner


def _softcapped(x: Tensor, cap: float) -> Tensor:
    """cap * tanh(x / cap) in a new fp32 tensor (never in place on the caller's logits)."""
    z = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    z.copy_(x)
    return z.div_(cap).tanh_().mul_(cap)


def _normaliser(z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(max, argmax, y = max(z - max, Y_FLOOR), e = exp(y), s = sum e) of rows z (C, V)."""
    m, argmax = max_and_argmax(z)
    y = torch.sub(z, m[:, None])  # fp32 for bf16/fp16/fp32 rows (m is fp32)
    if y.dtype != torch.float32:  # fp64 rows
        y = y.float()
    y.clamp_min_(Y_FLOOR)
    e = torch.exp(y)
    s = e.sum(dim=-1)
    return m, argmax, y, e, s


def _chunk_stats(
    x: Tensor, labels: Tensor, t: Tensor | None, cap: float | None, grad: Tensor | None,
    grad_scale: float | Tensor | None,
) -> dict[str, Tensor]:
    """Statistics of rows ``x`` (C, V) with ``labels`` (C,) in [0, V); teacher ``t`` (C, V).

    Writes the gradient of each row's ce into ``grad`` (C, V) when given.
    """
    z = x if cap is None else _softcapped(x, cap)
    z_label = z.gather(1, labels[:, None]).squeeze(1).float()  # before y is formed (in place)
    m, argmax, y, e, s = _normaliser(z)
    log_s = s.log()
    lse = m + log_s
    ce = lse - z_label  # +inf when the label's logit is -inf; NaN when lse is not finite
    d = torch.linalg.vecdot(e, y)  # sum e * y, y clamped so 0 * -inf never happens
    stats = {
        "argmax": argmax,
        "conf": s.reciprocal(),  # exp(max - lse)
        "label_prob": torch.exp(-ce),
        "ce": ce,
        "entropy": log_s - d / s,
    }
    finite = torch.isfinite(lse)
    if t is not None:
        mt, t_argmax, yt, et, st = _normaliser(t)
        log_st = st.log()
        stats["teacher_argmax"] = t_argmax
        # KL(q || p) = sum q (log q - log p), log q - log p = (yt - y) - log st + log s
        gap = torch.sub(yt, y)
        kl = torch.linalg.vecdot(et, gap) / st + (log_s - log_st)
        del gap
        # A student logit of -inf under teacher mass makes KL infinite (y was clamped).
        unreachable = ((y <= Y_FLOOR) & (et > 0)).any(dim=-1)
        stats["kl"] = torch.where(unreachable, torch.full_like(kl, float("inf")), kl)
        q = et.div_(st[:, None])
        p = torch.div(e, s[:, None])
        stats["alpha"] = torch.minimum(p, q).sum(dim=-1)
        finite &= torch.isfinite(mt + log_st)
        del q, p, yt
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


def _cpu_row_runs(valid: Tensor, chunk: int) -> list[tuple[int, int] | Tensor]:
    """Chunks of at most ``chunk`` valid rows: (start, stop) for consecutive runs, else indices."""
    rows = valid.nonzero().squeeze(1)  # (M,) supervised rows only; no sync cost on CPU
    out: list[tuple[int, int] | Tensor] = []
    for begin in range(0, rows.numel(), chunk):
        idx = rows[begin:begin + chunk]
        first, last = int(idx[0]), int(idx[-1])
        out.append((first, last + 1) if last - first + 1 == idx.numel() else idx)
    return out


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
    chunk = rows_per_chunk(vocab, has_target, max_workspace_bytes)
    out = _empty_outputs(n, logits.device, has_target)
    if logits.device.type == "cpu":
        if grad_out is not None:  # rows skipped below get a zero gradient
            grad_out.index_fill_(0, (~valid).nonzero().squeeze(1), 0.0)
        for part in _cpu_row_runs(valid, chunk):
            if isinstance(part, tuple):
                rows = slice(*part)
                x, labels = logits[rows], safe_labels[rows]
                t = target_logits[rows] if has_target else None
                grad = grad_out[rows] if grad_out is not None else None
            else:
                x, labels = logits.index_select(0, part), safe_labels[part]
                t = target_logits.index_select(0, part) if has_target else None
                grad = None if grad_out is None else torch.empty(x.shape, dtype=grad_out.dtype)
            stats = _chunk_stats(x, labels, t, logit_softcap, grad, grad_scale)
            if isinstance(part, tuple):
                for name, value in stats.items():
                    out[name][rows] = value
            else:
                for name, value in stats.items():
                    out[name].index_copy_(0, part, value)
                if grad is not None:
                    grad_out.index_copy_(0, part, grad)
    else:
        # Every row is computed, invalid ones zeroed: nothing depends on label values.
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            t = target_logits[start:stop] if has_target else None
            labels = safe_labels[start:stop].clamp(min=0)  # (C,) -1 -> 0, zeroed below
            grad = None if grad_out is None else grad_out[start:stop]
            stats = _chunk_stats(logits[start:stop], labels, t, logit_softcap, grad, grad_scale)
            invalid = ~valid[start:stop]
            for name, value in stats.items():
                out[name][start:stop] = value.masked_fill(invalid, 0)
            if grad is not None:
                grad.masked_fill_(invalid[:, None], 0.0)
    return RowStats(valid=valid, **out)
