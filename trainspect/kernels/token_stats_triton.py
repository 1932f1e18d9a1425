"""Triton backend of the row-statistics pass: one launch reads the logits once, writes the
per-row statistics and/or folds them into a stream's sums. Device code: token_stats_tl.py.

Work is split by token: a token is the G consecutive rows of one position (draft
positions, audio codebooks; G = 1 for text). The grid is persistent: program p takes
tokens p, p + P, ..., so it can fold every row it reads into per-program accumulators
(per group: the `token_sums.SUMS` columns and the calibration cells) and add them to
the stream's float64 state with a few atomics at the end; the last program of a call
(a ticket counter in the stream's scratch) counts the call. One observe is one launch
whatever the grouping, with no padding, copies or per-row outputs; labels, mask and
logits are read through their own strides (up to three leading axes after merging).

Long rows (V > SHORT_MAX_VOCAB), one row at a time:

- The label is read first; a row that is not valid (ignored, masked, or outside [0, V),
  never used to index memory) is not read at all.
- The row is walked in blocks of ``BLOCK_V`` contiguous elements: vectorised loads of the
  native dtype converted to fp32 in registers (never cast as a whole); only the ragged
  tail is masked. Online softmax in base 2: the row max so far m and per lane
  S = sum 2^t and A = sum 2^t t with t = z log2(e) - m log2(e) (one fma, one ex2, one
  add and one fma per element). A block whose max exceeds m (a uniform branch, taken a
  handful of times per row) rescales S and A and records the block's first index of its
  max. lse = (m log2 e + log2 S) ln 2, entropy = (log2 S - A / S) ln 2, conf = p(argmax),
  ce = lse - z_label (the label logit is read once, by a scalar load).
- Ties: within a block the smallest index holding the block max; across blocks a later
  block wins only if its max is strictly greater: the first index, as ``torch.argmax``.
- -inf logits: t is clamped at -1e30, so a -inf logit adds exactly 0 to S and A. A NaN
  logit passes the clamp (max.NaN) and makes S NaN; +inf makes the reference +inf: either
  way the row's lse is not finite, the row is flagged and its statistics are NaN.
- With ``target_logits`` the first walk also reads the teacher's row (its online max, sum
  and argmax); alpha = sum min(p_t, p_s) needs both final normalisers, so a second walk
  re-reads both rows (newest blocks first, the likeliest still in L2) for alpha and the
  per-element KL. The gradient (``grad_out``) is a last walk: p - onehot, times the soft
  cap's 1 - tanh^2, times the scale, written after every read of the row (in place safe).

Short rows (V <= SHORT_MAX_VOCAB, e.g. audio codebooks of 1026), one row at a time in
registers: a power-of-two main piece plus a small tail, so few lanes are wasted; the
exact max first, then every sum, the teacher's KL and alpha and the gradient from
registers: one read even with a teacher or a gradient.

Extra device memory: the per-row outputs when asked for (row_stats), nothing else.
Triton is imported under a guard, so this module imports on machines without it. Its
CPU interpreter works only when TRITON_INTERPRET=1 is set before triton is imported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .token_stats import RowStats
from .token_stats import _triton_interpreting as _interpreting
from .token_stats_tl import _rows_kernel, triton

__all__ = ["BENCH_CONFIGS", "DEFAULT_CONFIG", "SHORT_MAX_VOCAB", "TritonConfig", "fold_triton",
           "row_stats_triton"]

SHORT_MAX_VOCAB = 4096  # rows up to this length are held in registers
SHORT_WARPS = 2  # warps a short row: the best of 2, 4 and 8 for audio codebooks on an H200


@dataclass(frozen=True)
class TritonConfig:
    """Launch configuration of long rows; the benchmark tries a few."""

    block_v: int = 512
    """Elements of a row per loop step (power of two; capped at next_pow2(V))."""
    num_warps: int = 2
    """Warps per program. 512 / (2 x 32) = 8 bf16 per thread, one 16-byte load."""
    num_stages: int = 2
    """Software-pipelining depth of the loop over the row."""
    programs_per_sm: int = 0
    """Programs of the persistent grid per multiprocessor; 0: as many as can be resident
    (by the compiled kernel's registers); -1: one program per token (not persistent)."""

    def __post_init__(self) -> None:
        if self.block_v < 16 or self.block_v & (self.block_v - 1):
            raise ValueError(f"expected `block_v` to be a power of two >= 16, got {self.block_v}")
        if self.num_warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"expected `num_warps` in 1, 2, 4, 8, 16, 32, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"expected `num_stages` >= 1, got {self.num_stages}")
        if self.programs_per_sm < -1:
            raise ValueError(f"expected `programs_per_sm` >= -1, got {self.programs_per_sm}")


# The best of benchmarks/token_stats_kernel.py's sweep on an H200 (docs/benchmarks.md):
DEFAULT_CONFIG = TritonConfig(512, 2, 2, programs_per_sm=-1)  # per-row outputs, no fold
FOLD_CONFIG = TritonConfig(1024, 4, 2, programs_per_sm=-1)  # observe: the fold, no outputs
TEACHER_CONFIG = TritonConfig(1024, 4, 2, programs_per_sm=4)  # with target_logits
BENCH_CONFIGS = (
    TritonConfig(512, 2, 2),
    TritonConfig(1024, 4, 2),
    TritonConfig(512, 2, 2, programs_per_sm=-1),
    TritonConfig(1024, 4, 2, programs_per_sm=-1),
    TritonConfig(512, 2, 3),
)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _pow2_at_most(n: int) -> int:
    return 1 << (n.bit_length() - 1)


@functools.lru_cache(maxsize=16)
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _merge_lead(sizes: tuple[int, ...], strides: list[tuple[int, ...]]
                ) -> list[tuple[int, list[int]]] | None:
    """The leading axes as at most three (size, [stride per tensor]), merging axes that
    are contiguous in every tensor; None when more than three remain."""
    merged: list[tuple[int, list[int]]] = []
    for k, size in enumerate(sizes):
        if size == 1:
            continue
        st = [s[k] for s in strides]
        if merged:
            prev_size, prev = merged[-1]
            if all(p == s * size for p, s in zip(prev, st)):
                merged[-1] = (prev_size * size, st)
                continue
        merged.append((size, st))
    if len(merged) > 3:
        return None
    while len(merged) < 3:
        merged.insert(0, (1, [0] * len(strides)))
    return merged


@dataclass
class _Plan:
    """What a layout needs to launch, computed once per layout (shapes, strides, flags)."""

    ints: tuple  # n_tokens, D1, D2, V, ignore_index and the five tensors' strides
    constexprs: tuple  # G ... EVICT_PASS1, in the kernel's order
    n_tokens: int
    num_warps: int
    num_stages: int
    per_sm: int  # programs per multiprocessor of the persistent grid; -1: one per token
    device: int
    programs: int = 0  # the grid, once known


_PLANS: dict = {}
MAX_PROGRAMS_PER_SM = 32  # the hardware's resident-block limit on sm_80 / sm_90


def _tensor_key(t: Tensor | None) -> tuple:
    return () if t is None else (t.dtype, t.shape, t.stride())


def _plan(logits: Tensor, labels: Tensor, mask: Tensor | None, target: Tensor | None,
          grad: Tensor | None, n_groups: int, ignore_index: int, flags: tuple,
          cap: float | None, config: TritonConfig | None) -> _Plan | None:
    """The launch plan of a layout, cached; None when the leading axes do not merge."""
    key = (_tensor_key(logits), _tensor_key(labels), _tensor_key(mask), _tensor_key(target),
           _tensor_key(grad), n_groups, ignore_index, flags, cap is not None, config,
           logits.device, SHORT_MAX_VOCAB, SHORT_WARPS)
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    n_lead = logits.dim() - (2 if n_groups > 1 else 1)
    vocab = logits.shape[-1]
    parts = [logits, labels] + [t for t in (mask, target, grad) if t is not None]
    merged = _merge_lead(tuple(logits.shape[:n_lead]), [t.stride()[:n_lead] for t in parts])
    if merged is None:
        return None
    n_tokens = merged[0][0] * merged[1][0] * merged[2][0]
    lead = {id(t): [m[1][i] for m in merged] for i, t in enumerate(parts)}

    def strides(t: Tensor | None, with_vocab: bool) -> list[int]:
        if t is None:
            return [0] * (5 if with_vocab else 4)
        group = [t.stride(n_lead)] if n_groups > 1 else [0]
        return lead[id(t)] + group + ([t.stride(-1)] if with_vocab else [])

    has_mask, has_target, has_grad, scale_dtype, store_rows, fold, end_call = flags
    scale_ptr = scale_dtype is not False
    main = _pow2_at_most(vocab)
    tail = 0 if main == vocab else max(16, _pow2_at_least(vocab - main))
    short = vocab <= SHORT_MAX_VOCAB
    if config is not None:
        cfg = config
    else:
        cfg = TEACHER_CONFIG if has_target else FOLD_CONFIG if fold and not store_rows else \
            DEFAULT_CONFIG
    if short:
        num_warps, num_stages, per_sm = SHORT_WARPS, 1, 0
    else:
        num_warps, num_stages, per_sm = cfg.num_warps, cfg.num_stages, cfg.programs_per_sm
    ints = (n_tokens, merged[1][0], merged[2][0], vocab, ignore_index,
            *strides(logits, True), *strides(labels, False), *strides(mask, False),
            *strides(target, True), *strides(grad, True))
    constexprs = (n_groups, _pow2_at_least(n_groups), has_mask, has_target, has_grad, scale_ptr,
                  cap is not None, store_rows, fold, end_call, short,
                  max(16, min(cfg.block_v, _pow2_at_least(vocab))), main, tail,
                  "evict_last" if has_target or has_grad else "evict_first")
    plan = _Plan(ints, constexprs, n_tokens, num_warps, num_stages, per_sm,
                 logits.device.index or 0)
    if len(_PLANS) > 256:  # bounded: layouts of a training run are few
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _grid(plan: _Plan, device: torch.device) -> int:
    """Programs of the persistent grid: as many as can be resident at once (by registers,
    once the kernel is compiled; 8 per multiprocessor before), or one per token."""
    if _interpreting() or device.type != "cuda":
        return min(max(plan.n_tokens, 1), 3)  # several, so the fold's ticket is exercised
    if plan.per_sm < 0:
        return max(plan.n_tokens, 1)
    if plan.programs:
        return min(max(plan.n_tokens, 1), plan.programs)
    per_sm = plan.per_sm or 8
    return min(max(plan.n_tokens, 1), _multiprocessors(plan.device) * per_sm)


def _resident(kernel, num_warps: int) -> int:
    """Programs of ``num_warps`` that fit on one multiprocessor by registers (65536 a
    multiprocessor, allocated per warp in units of 256) and warps (64)."""
    regs_per_warp = -(-max(int(kernel.n_regs), 1) * 32 // 256) * 256
    return max(1, min(MAX_PROGRAMS_PER_SM, 64 // num_warps, 65536 // regs_per_warp // num_warps))


def _run(plan: _Plan, device: torch.device, tensors: list, floats: tuple) -> None:
    """Launch the kernel; the first launch of a persistent plan sizes its grid."""
    args = (*tensors, *floats, *plan.ints, *plan.constexprs)
    kernel = _rows_kernel[(_grid(plan, device),)](*args, num_warps=plan.num_warps,
                                                  num_stages=plan.num_stages)
    if (not plan.programs and plan.per_sm == 0 and device.type == "cuda"
            and not _interpreting() and hasattr(kernel, "n_regs")):
        plan.programs = _multiprocessors(plan.device) * _resident(kernel, plan.num_warps)


def _launch(logits: Tensor, labels: Tensor, mask: Tensor | None, target: Tensor | None,
            grad: Tensor | None, n_groups: int, ignore_index: int, *,
            rows: dict[str, Tensor] | None, fold: tuple[Tensor, ...] | None, last_chunk: bool,
            cap: float | None, grad_scale: float | Tensor | None,
            config: TritonConfig | None) -> bool:
    """One launch over logits (*lead, [G], V); False when the layout has too many axes."""
    scale_is_ptr = isinstance(grad_scale, Tensor)
    flags = (mask is not None, target is not None, grad is not None,
             grad_scale.dtype if scale_is_ptr else False, rows is not None, fold is not None,
             last_chunk)
    plan = _plan(logits, labels, mask, target, grad, n_groups, ignore_index, flags, cap, config)
    if plan is None:
        return False
    dummy = labels
    out = rows or {}
    tensors = [logits, labels, dummy if mask is None else mask,
               logits if target is None else target, logits if grad is None else grad,
               *(out.get(k, dummy) for k in _ROW_OUTPUTS), *(fold or (dummy,) * 4),
               grad_scale if scale_is_ptr else dummy]
    floats = (1.0 if grad_scale is None or scale_is_ptr else float(grad_scale),
              1.0 if cap is None else float(cap))
    _run(plan, logits.device, tensors, floats)
    return True


_ROW_OUTPUTS = ("valid", "finite", "argmax", "conf", "label_prob", "ce", "entropy",
                "teacher_argmax", "kl", "alpha")


def _as_bytes(mask: Tensor | None) -> Tensor | None:
    """A bool mask as uint8 (one byte a row, the same memory), for the kernel."""
    return None if mask is None else (mask.view(torch.uint8) if mask.dtype == torch.bool
                                      else mask)


def row_stats_triton(
    logits: Tensor,
    labels: Tensor,
    *,
    mask: Tensor | None = None,
    ignore_index: int = -100,
    target_logits: Tensor | None = None,
    grad_out: Tensor | None = None,
    logit_softcap: float | None = None,
    grad_scale: float | Tensor | None = None,
    fold: tuple[Tensor, Tensor, Tensor, Tensor] | None = None,
    last_chunk: bool = True,
    config: TritonConfig | None = None,
) -> RowStats:
    """Row statistics of ``logits`` (N, V) against raw ``labels`` (N,) in one launch.

    ``fold`` (a stream's (sums, calibration, counters, scratch), kernels.token_sums) also
    adds every row to that state, as `token_sums.accumulate_rows` does. Any strides are
    read in place. Allocates only the N-length outputs; never synchronises with the
    host. Use ``token_stats.row_stats``, which checks the arguments; call this directly
    to fold or to pick a ``config``.
    """
    if triton is None:
        raise ValueError("backend='triton' needs the `triton` package (pip install triton)")
    n = logits.shape[0]
    device = logits.device
    has_target = target_logits is not None

    def new(dtype: torch.dtype) -> Tensor:
        return torch.empty(n, dtype=dtype, device=device)

    names = ["valid", "finite", "argmax", "conf", "label_prob", "ce", "entropy"]
    dtypes = [torch.int8, torch.int8, torch.int64] + [torch.float32] * 4
    if has_target:
        names += ["teacher_argmax", "kl", "alpha"]
        dtypes += [torch.int64, torch.float32, torch.float32]
    rows = {name: new(dtype) for name, dtype in zip(names, dtypes)}
    if n > 0 or fold is not None:
        _launch(logits, labels, _as_bytes(mask), target_logits, grad_out, 1, ignore_index,
                rows=rows, fold=fold, last_chunk=last_chunk, cap=logit_softcap,
                grad_scale=grad_scale, config=config)
    rows["valid"] = rows["valid"].view(torch.bool)
    rows["finite"] = rows["finite"].view(torch.bool)
    return RowStats(**rows)


def fold_triton(
    logits: Tensor,
    labels: Tensor,
    mask: Tensor | None,
    target_logits: Tensor | None,
    n_groups: int,
    fold: tuple[Tensor, Tensor, Tensor, Tensor],
    ignore_index: int = -100,
    *,
    last_chunk: bool = True,
    config: TritonConfig | None = None,
) -> bool:
    """Fold logits (*lead, [G], V) with labels (*lead, [G]) into a stream's state, one launch.

    No per-row output. Returns False (and does nothing) when the leading axes do not
    merge into three; the caller then splits along the first axis.
    """
    return _launch(logits, labels, _as_bytes(mask), target_logits, None, n_groups,
                   ignore_index, rows=None, fold=fold, last_chunk=last_chunk, cap=None,
                   grad_scale=None, config=config)
