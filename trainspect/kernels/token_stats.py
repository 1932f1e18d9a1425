"""The row-statistics core: one read of the logits gives every per-row statistic.

For each supervised row of ``logits`` (N, V) this computes, in fp32 whatever the input
float dtype: the first-index argmax (as ``torch.argmax``), the top-1 probability, the
probability of the label, the cross-entropy, and the softmax entropy in nats; with a
teacher's ``target_logits`` also the teacher's argmax, KL(teacher || student) and the
expected speculative acceptance alpha = sum_v min(p_teacher, p_student). Optionally it
applies a soft cap first (z = cap * tanh(x / cap), Gemma 2) and writes each row's
gradient d ce / d x = (softmax(z) - onehot(label)) * dz/dx into ``grad_out``, so a fused
linear cross-entropy gets its loss, its gradient and every statistic from one pass.
docs/architecture.md, "The row-statistics core", is the contract.

Two backends compute the same function:

- ``"triton"`` (token_stats_triton.py): a fused kernel on CUDA that reads each row
  once (again for the gradient, and with a teacher; see there) and allocates only the
  N-length outputs.
- ``"torch"`` (token_stats_torch.py): chunked PyTorch with a bounded fp32 workspace;
  it runs anywhere and is the reference the kernel is tested against.

Rows whose label is ``ignore_index``, negative, ``>= V``, or whose ``mask`` is False are
not valid: every output is 0 there, ``valid`` is False and their gradient is 0.
Out-of-range labels are never used to index memory, so they cannot trip a device-side
assert; the caller counts them. A valid row whose log-normaliser is not finite (a NaN
or +inf logit, or every logit -inf) has ``finite`` False and NaN statistics, as
``F.cross_entropy`` gives NaN there.

On CUDA nothing here synchronises with the host (no ``.item()``, no boolean indexing,
no data-dependent shapes), so it is safe on the training hot path.

This module must import nothing else of trainspect's (docs/architecture.md, "Layers"); it
raises the built-in ``ValueError``/``TypeError`` for bad arguments and lets callers wrap them.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["BACKENDS", "RowStats", "check_arguments", "resolve_backend", "row_stats",
           "triton_available", "valid_rows"]

BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class RowStats:
    """Per-row statistics: 1-D tensors of length N on ``logits.device``.

    Rows that are not valid hold 0 in every field (``valid`` False, argmax 0).
    """

    valid: Tensor
    """bool: the label is in [0, V), is not ``ignore_index``, and ``mask`` (if any) is True."""
    argmax: Tensor
    """int64: index of the largest logit; ties go to the first index, as ``torch.argmax``."""
    conf: Tensor
    """float32: top-1 probability, softmax(logits)[argmax]."""
    label_prob: Tensor
    """float32: softmax(logits)[label]; 0 when the label's logit is -inf."""
    ce: Tensor
    """float32: cross-entropy -log softmax(logits)[label]; +inf when the label's logit is -inf."""
    entropy: Tensor
    """float32: entropy of softmax(logits), in nats."""
    teacher_argmax: Tensor | None = None
    """int64: argmax of ``target_logits`` (first index on ties); None without a teacher."""
    kl: Tensor | None = None
    """float32: KL(teacher || student) = sum_v p_t (log p_t - log p_s), nats; None without."""
    alpha: Tensor | None = None
    """float32: sum_v min(p_teacher, p_student), expected acceptance; None without a teacher."""
    finite: Tensor | None = None
    """bool: valid, and the row's log-normaliser (the teacher's too, with one) is finite.
    A valid row that is not finite holds NaN in its float fields (kl and alpha too when
    only the teacher's row is not finite); its argmaxes are unspecified."""


def triton_available() -> bool:
    """True when the ``triton`` package can be imported (it is not imported here)."""
    return importlib.util.find_spec("triton") is not None


def _triton_interpreting() -> bool:
    """True when Triton's CPU interpreter is switched on (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def resolve_backend(backend: str, device: torch.device) -> str:
    """Turn ``backend`` ("auto", "torch" or "triton") into the one that will run on ``device``.

    "auto" picks Triton on CUDA when triton imports, else torch. "triton" on a CPU tensor
    is accepted only under Triton's interpreter (TRITON_INTERPRET=1), which tests use.
    """
    if backend not in BACKENDS:
        raise ValueError(f"expected `backend` to be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError(
                "backend='triton' needs the `triton` package, which is not installed "
                "(pip install triton), or use backend='torch'"
            )
        if device.type != "cuda" and not _triton_interpreting():
            raise ValueError(
                f"backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1), "
                f"got logits on {device}"
            )
    return backend


def _check_inputs(
    logits: Tensor,
    labels: Tensor,
    target_logits: Tensor | None,
    mask: Tensor | None,
    max_workspace_bytes: int | None,
) -> None:
    """Raise a clear ValueError/TypeError naming the argument that is off."""
    if not isinstance(logits, Tensor) or logits.dim() != 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"expected `logits` to be a 2-D tensor (N, V), got {got}")
    if not logits.is_floating_point():
        raise TypeError(f"expected `logits` to be a float tensor, got dtype {logits.dtype}")
    n, v = logits.shape
    if v == 0:
        raise ValueError("expected `logits` to have a vocabulary of at least 1, got V=0")
    if not isinstance(labels, Tensor) or tuple(labels.shape) != (n,):
        got = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise ValueError(f"expected `labels` of shape ({n},) to match logits "
                         f"{tuple(logits.shape)}, got {got}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"expected `labels` to be an integer tensor, got dtype {labels.dtype}")
    if labels.device != logits.device:
        raise ValueError(f"expected `labels` on {logits.device} like logits, got {labels.device}")
    if target_logits is not None:
        if not isinstance(target_logits, Tensor) or target_logits.shape != logits.shape:
            got = (tuple(target_logits.shape) if isinstance(target_logits, Tensor)
                   else type(target_logits).__name__)
            raise ValueError(f"expected `target_logits` of shape {tuple(logits.shape)} like "
                             f"logits, got {got}")
        if not target_logits.is_floating_point():
            raise TypeError(f"expected `target_logits` to be a float tensor, "
                            f"got dtype {target_logits.dtype}")
        if target_logits.device != logits.device:
            raise ValueError(f"expected `target_logits` on {logits.device} like logits, "
                             f"got {target_logits.device}")
    if mask is not None:
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (n,):
            got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"expected `mask` of shape ({n},), got {got}")
        if mask.device != logits.device:
            raise ValueError(f"expected `mask` on {logits.device} like logits, got {mask.device}")
    if max_workspace_bytes is not None and (
        not isinstance(max_workspace_bytes, int) or max_workspace_bytes <= 0
    ):
        raise ValueError(f"expected `max_workspace_bytes` to be a positive int or None, "
                         f"got {max_workspace_bytes!r}")


def valid_rows(
    labels: Tensor, vocab_size: int, ignore_index: int, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Which rows are supervised, and labels that are safe to index with.

    Returns ``valid`` (N,) bool and ``safe_labels`` (N,) int64, equal to the label where
    valid and -1 elsewhere. Elementwise only: no host synchronisation on CUDA.
    """
    labels = labels.to(torch.int64)  # (N,) int32/uint8/... -> int64; no copy when int64
    valid = (labels != ignore_index) & (labels >= 0) & (labels < vocab_size)
    if mask is not None:
        valid &= mask.to(torch.bool)
    safe_labels = torch.where(valid, labels, torch.full_like(labels, -1))
    return valid, safe_labels


def _check_gradient_args(
    logits: Tensor,
    target_logits: Tensor | None,
    grad_out: Tensor | None,
    logit_softcap: float | None,
    grad_scale: float | Tensor | None,
) -> None:
    """Raise a clear ValueError/TypeError for ``grad_out``, ``logit_softcap``, ``grad_scale``."""
    if logit_softcap is not None and (
        isinstance(logit_softcap, bool) or not isinstance(logit_softcap, (int, float))
        or not logit_softcap > 0 or logit_softcap == float("inf")
    ):
        raise ValueError(f"expected `logit_softcap` to be a positive finite number or None, "
                         f"got {logit_softcap!r}")
    if grad_out is not None:
        if not isinstance(grad_out, Tensor) or grad_out.shape != logits.shape:
            got = tuple(grad_out.shape) if isinstance(grad_out, Tensor) else type(
                grad_out).__name__
            raise ValueError(f"expected `grad_out` of shape {tuple(logits.shape)} like logits, "
                             f"got {got}")
        if not grad_out.is_floating_point():
            raise TypeError(f"expected `grad_out` to be a float tensor, got {grad_out.dtype}")
        if grad_out.device != logits.device:
            raise ValueError(f"expected `grad_out` on {logits.device} like logits, "
                             f"got {grad_out.device}")
        if target_logits is not None and _same_memory(grad_out, target_logits):
            raise ValueError("`grad_out` must not share memory with `target_logits` "
                             "(the teacher is read after the gradient is written)")
    if grad_scale is not None:
        if grad_out is None:
            raise ValueError("`grad_scale` needs `grad_out`")
        if isinstance(grad_scale, Tensor):
            if grad_scale.numel() != 1 or not grad_scale.is_floating_point() or (
                    grad_scale.device != logits.device):
                raise ValueError(f"expected `grad_scale` to be a float or a one-element float "
                                 f"tensor on {logits.device}, got {tuple(grad_scale.shape)} "
                                 f"{grad_scale.dtype} on {grad_scale.device}")
        elif isinstance(grad_scale, bool) or not isinstance(grad_scale, (int, float)):
            raise ValueError(f"expected `grad_scale` to be a float or a one-element tensor, "
                             f"got {grad_scale!r}")


def check_arguments(
    logits: Tensor,
    labels: Tensor,
    *,
    target_logits: Tensor | None = None,
    mask: Tensor | None = None,
    max_workspace_bytes: int | None = None,
    grad_out: Tensor | None = None,
    logit_softcap: float | None = None,
    grad_scale: float | Tensor | None = None,
) -> None:
    """Raise one clear ValueError/TypeError naming the argument of `row_stats` that is off."""
    _check_inputs(logits, labels, target_logits, mask, max_workspace_bytes)
    _check_gradient_args(logits, target_logits, grad_out, logit_softcap, grad_scale)


def _same_memory(a: Tensor, b: Tensor) -> bool:
    """True when the two tensors' storages are the same (a cheap, conservative check)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def row_stats(
    logits: Tensor,
    labels: Tensor,
    *,
    target_logits: Tensor | None = None,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    backend: str = "auto",
    max_workspace_bytes: int | None = None,
    grad_out: Tensor | None = None,
    logit_softcap: float | None = None,
    grad_scale: float | Tensor | None = None,
) -> RowStats:
    """Per-row statistics of ``logits`` (N, V) against ``labels`` (N,), in one pass.

    Args:
        logits: (N, V) float logits (bf16, fp16, fp32 or fp64), any strides; read in
            place, never cast as a whole: the maths is fp32 in registers (Triton) or per
            chunk (torch).
        labels: (N,) integer labels; ``ignore_index``, negative and >= V mean "not valid".
        target_logits: optional (N, V) teacher logits; adds teacher_argmax, kl, alpha.
        mask: optional (N,) bool; False rows are not valid, as if their label were ignored.
        ignore_index: label value of unsupervised rows (-100, as PyTorch and HF use).
        backend: "auto" (Triton on CUDA when available, else torch), "torch" or "triton".
        max_workspace_bytes: fp32 workspace bound of the torch backend (default 64 MiB
            on the CPU, 1 GiB on CUDA); the Triton backend needs none.
        grad_out: optional (N, V) float tensor (any float dtype and strides; ``logits``
            itself for an in-place gradient) that receives d ce_row / d logits:
            (softmax(z) - onehot(label)) * dz/dx * grad_scale, and 0 on rows that are
            not valid. Must not share memory with ``target_logits``.
        logit_softcap: optional cap c > 0: every statistic and the gradient are of
            z = c * tanh(logits / c) (dz/dx = 1 - tanh^2), as Gemma 2 applies.
        grad_scale: optional float, or one-element float tensor on the logits' device
            (read on the device, no sync), multiplying the gradient (e.g. 1 / tokens).

    Returns:
        RowStats of 1-D tensors of length N on ``logits.device``.
    """
    check_arguments(logits, labels, target_logits=target_logits, mask=mask,
                    max_workspace_bytes=max_workspace_bytes, grad_out=grad_out,
                    logit_softcap=logit_softcap, grad_scale=grad_scale)
    chosen = resolve_backend(backend, logits.device)
    cap = None if logit_softcap is None else float(logit_softcap)
    # Backends import this module (for RowStats), so they are imported here, not at the top.
    if chosen == "triton":
        from .token_stats_triton import row_stats_triton

        return row_stats_triton(logits, labels, mask=mask, ignore_index=ignore_index,
                                target_logits=target_logits, grad_out=grad_out,
                                logit_softcap=cap, grad_scale=grad_scale)
    from .token_stats_torch import row_stats_torch

    valid, safe_labels = valid_rows(labels, logits.shape[1], ignore_index, mask)

    return row_stats_torch(
        logits, safe_labels, valid, target_logits=target_logits,
        max_workspace_bytes=max_workspace_bytes, grad_out=grad_out, logit_softcap=cap,
        grad_scale=grad_scale,
    )
