"""Chunked PyTorch backend of the token-statistics pass, and the kernel's reference.

Rows are processed in chunks of C rows so that the fp32 temporaries (C, V) fit in a
fixed workspace (64 MiB unless told otherwise): memory does not grow with N. Within a
chunk everything is plain, obviously-correct PyTorch: a full-row ``log_softmax`` in fp32,
``torch.argmax`` on the raw logits for the first-index tie rule, ``gather`` for the label.

- On the CPU, ignored rows are dropped before any work (``nonzero`` costs no device
  synchronisation there), so they cost nothing.
- On CUDA (the fallback when Triton is missing) every row of a chunk is computed on
  contiguous slices and invalid rows are zeroed with ``masked_fill``: no host sync,
  no data-dependent shapes.

-inf logits: ``log_softmax`` gives -inf there and ``exp`` gives 0; the terms 0 * (-inf)
of the entropy and KL sums are set to 0 explicitly, so they never turn into NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .token_stats import RowStats

__all__ = ["DEFAULT_WORKSPACE_BYTES", "row_stats_torch", "rows_per_chunk"]

DEFAULT_WORKSPACE_BYTES = 64 * 2**20  # 64 MiB of fp32 temporaries per chunk
# fp32 (C, V) tensors alive at once in `_chunk_stats`, rounded up: student logp, p and
# p*logp plus its mask and the row copy; a teacher adds logq, q, and the KL/min terms.
_F32_ROWS_STUDENT = 4
_F32_ROWS_TEACHER = 8


def rows_per_chunk(vocab_size: int, has_target: bool, max_workspace_bytes: int | None) -> int:
    """Rows per chunk so that the fp32 temporaries stay within the workspace (at least 1)."""
    budget = DEFAULT_WORKSPACE_BYTES if max_workspace_bytes is None else max_workspace_bytes
    per_row = vocab_size * 4 * (_F32_ROWS_TEACHER if has_target else _F32_ROWS_STUDENT)
    return max(1, budget // per_row)


def _xlogy_terms_sum(weight: Tensor, log_ratio: Tensor) -> Tensor:
    """sum_v weight * log_ratio over the last axis, with 0 where weight == 0 (no 0 * inf)."""
    terms = weight * log_ratio  # (C, V)
    terms.masked_fill_(weight == 0, 0.0)
    return terms.sum(dim=-1)  # (C,)


def _chunk_stats(x: Tensor, labels: Tensor, t: Tensor | None) -> dict[str, Tensor]:
    """Statistics of rows ``x`` (C, V) with ``labels`` (C,) in [0, V); teacher ``t`` (C, V)."""
    stats: dict[str, Tensor] = {}
    argmax = torch.argmax(x, dim=-1)  # (C,) on the raw values: first index on ties
    logp = torch.log_softmax(x.float(), dim=-1)  # (C, V) fp32
    stats["argmax"] = argmax
    stats["conf"] = logp.gather(1, argmax[:, None]).squeeze(1).exp()
    label_logp = logp.gather(1, labels[:, None]).squeeze(1)  # (C,); -inf if its logit is -inf
    stats["ce"] = -label_logp
    stats["label_prob"] = label_logp.exp()
    p = logp.exp()  # (C, V)
    stats["entropy"] = -_xlogy_terms_sum(p, logp)
    if t is not None:
        stats["teacher_argmax"] = torch.argmax(t, dim=-1)  # (C,)
        logq = torch.log_softmax(t.float(), dim=-1)  # (C, V) fp32
        q = logq.exp()
        stats["kl"] = _xlogy_terms_sum(q, logq - logp)  # sum q (log q - log p)
        stats["alpha"] = torch.minimum(p, q).sum(dim=-1)
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
    }
    if has_target:
        out.update(teacher_argmax=torch.zeros(n, **i64), kl=torch.zeros(n, **f32),
                   alpha=torch.zeros(n, **f32))
    return out


def row_stats_torch(
    logits: Tensor,
    safe_labels: Tensor,
    valid: Tensor,
    *,
    target_logits: Tensor | None = None,
    max_workspace_bytes: int | None = None,
) -> RowStats:
    """Token statistics of ``logits`` (N, V) in row chunks with a bounded fp32 workspace.

    ``safe_labels`` (N,) int64 and ``valid`` (N,) bool come from ``token_stats.valid_rows``:
    labels are in [0, V) where valid and -1 elsewhere. Use ``token_stats.row_stats``,
    which checks the arguments, rather than calling this directly.
    """
    n, vocab = logits.shape
    has_target = target_logits is not None
    chunk = rows_per_chunk(vocab, has_target, max_workspace_bytes)
    out = _empty_outputs(n, logits.device, has_target)
    if logits.device.type == "cpu":
        rows = valid.nonzero().squeeze(1)  # (M,) supervised rows only; no sync cost on CPU
        for start in range(0, rows.numel(), chunk):
            idx = rows[start:start + chunk]  # (C,)
            t = target_logits.index_select(0, idx) if has_target else None
            stats = _chunk_stats(logits.index_select(0, idx), safe_labels[idx], t)
            for name, value in stats.items():
                out[name].index_copy_(0, idx, value)
    else:
        # Every row is computed, invalid ones zeroed: nothing depends on label values.
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            t = target_logits[start:stop] if has_target else None
            labels = safe_labels[start:stop].clamp(min=0)  # (C,) -1 -> 0, zeroed below
            stats = _chunk_stats(logits[start:stop], labels, t)
            invalid = ~valid[start:stop]
            for name, value in stats.items():
                out[name][start:stop] = value.masked_fill(invalid, 0)
    return RowStats(valid=valid, **out)
