"""One chunk's row pass for the fused linear cross-entropy: statistics, and the gradient.

``rows_with_grad`` gives the chunk's ``RowStats`` (token_stats.row_stats) of the
soft-capped logits and, with ``grad``, writes d ce_row / d z = (softmax - onehot) of
every supervised row over ``logits`` in place (0 on other rows; times 1 - tanh^2 of the
cap when ``logit_softcap`` is set, so the gradient is the raw logits').

Imports nothing of trainspect's outside kernels/.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .token_stats import RowStats, row_stats, valid_rows

__all__ = ["rows_with_grad"]


def rows_with_grad(logits: Tensor, labels: Tensor, *, ignore_index: int = -100,
                   logit_softcap: float | None = None, grad: bool = False,
                   target_logits: Tensor | None = None, mask: Tensor | None = None) -> RowStats:
    """Statistics of ``logits`` (C, V) against ``labels`` (C,); with ``grad`` the gradient
    of each row's cross-entropy replaces ``logits`` (same dtype, in place)."""
    capped = logits
    if logit_softcap is not None:
        capped = torch.tanh(logits.float() / logit_softcap).mul_(logit_softcap)
    stats = row_stats(capped, labels, target_logits=target_logits, mask=mask,
                      ignore_index=ignore_index)
    if grad:
        valid, safe = valid_rows(labels, logits.shape[1], ignore_index, mask)
        p = torch.softmax(capped.float(), dim=-1)  # (C, V) fp32
        p.scatter_add_(1, safe.clamp(min=0)[:, None], -valid.to(p.dtype)[:, None])
        p.mul_(valid[:, None])
        if logit_softcap is not None:
            p.mul_(1.0 - (capped / logit_softcap).square())
        logits.copy_(p)
    return stats
