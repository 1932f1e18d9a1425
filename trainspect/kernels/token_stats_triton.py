"""Triton backend of the row-statistics pass: one launch reads the logits once and writes
the per-row statistics; when folding into a stream's sums a second, small launch adds
the rows up. Device code: token_stats_tl.py (rows), token_fold_tl.py (the fold).

Rows: row r of logits (*lead, [G], V) is group r % G of token r // G (G consecutive
rows per position: draft positions, audio codebooks; G = 1 for text). Labels, mask and
logits are read in place through their own strides (up to three leading axes after
merging): no padding, no copies. One program per row (the default for long rows), or
a persistent grid where program p takes rows p, p + P, ...

The fold: the row launch writes a small record per row (flags and four float
statistics, six with a teacher: 20 or 28 bytes, under 1% of a bf16 row of 1026 or
more logits), and `_fold_kernel`, a few hundred programs, adds them to the stream's
float64 state with a few dozen atomics each and counts the call (a ticket in the
stream's scratch). An earlier version folded inside the row kernel, each program adding
its rows with float64 atomics: one program per row then meant tens of thousands of
atomics on the same 42 addresses per call, 10-20% of the pass (docs/benchmarks.md).

Long rows (V > SHORT_MAX_VOCAB), one row at a time:

- The label is read first; a row that is not valid (ignored, masked, or outside [0, V),
  never used to index memory) is not read at all.
- The row is walked in blocks of ``BLOCK_V`` contiguous elements: vectorised loads of the
  native dtype converted to fp32 in registers (never cast as a whole); only the ragged
  tail is masked. Online softmax in base 2: the max so far m and S = sum 2^t and
  A = sum 2^t t with t = z log2(e) - m log2(e). Per block (token_rows_tl.py) m is the
  row's, and a block whose max exceeds it (a uniform branch, taken a handful of times
  per row) rescales S and A and records the block's first index of its max; per slot
  (token_slots_tl.py, ``TritonConfig.slots``) each thread's SLOT columns keep their own
  m, S and A, merged at the end of the row, so the loop has no block-wide reduction.
  lse = (m log2 e + log2 S) ln 2, entropy = (log2 S - A / S) ln 2, conf = p(argmax),
  ce = lse - z_label (the label logit is read once, by a scalar load).
- Ties: the first index of the row max, as ``torch.argmax``.
- -inf logits: t is clamped at -1e30 in A, so a -inf logit adds exactly 0 to S and A.
  A NaN logit makes S NaN; +inf makes the reference +inf: either way the row's lse is
  not finite, the row is flagged and its statistics are NaN.
- With ``target_logits`` the first walk also reads the teacher's row (its online max, sum
  and argmax); alpha = sum min(p_t, p_s) needs both final normalisers, so a second walk
  re-reads both rows (newest blocks first, the likeliest still in L2) for alpha and the
  per-element KL. The gradient (``grad_out``) is a last walk: p - onehot, times the soft
  cap's 1 - tanh^2, times the scale, written after every read of the row (in place safe).

Short rows (V <= SHORT_MAX_VOCAB, e.g. audio codebooks of 1026), one row at a time in
registers: a power-of-two main piece plus a small tail, so few lanes are wasted; the
exact max first, then every sum, the teacher's KL and alpha and the gradient from
registers: one read even with a teacher or a gradient. With ``TritonConfig.short_rows``
> 1 a program holds that many rows at once as one tile (token_tile_tl.py, no gradient),
so the reductions' latency is paid once per tile.

Extra device memory: the per-row outputs when asked for (row_stats), the fold's
records otherwise. Triton is imported under a guard, so this module imports on
machines without it. Its CPU interpreter works only when TRITON_INTERPRET=1 is set
before triton is imported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from .token_stats import RowStats
from .token_stats import _triton_interpreting as _interpreting
from .token_stats_tl import _rows_kernel, triton

__all__ = ["DEFAULT_CONFIG", "SHORT_CONFIG", "SHORT_MAX_VOCAB",
           "TEACHER_CONFIG", "TritonConfig", "fold_triton", "row_stats_triton"]

SHORT_MAX_VOCAB = 4096  # rows up to this length are held in registers
SLOT = 8  # columns per slot of the per-slot long rows: 16 bytes of bf16


@dataclass(frozen=True)
class TritonConfig:
    """Launch configuration of the row kernel; the benchmark tries a few."""

    block_v: int = 512
    """Elements of a long row per loop step (power of two; capped at next_pow2(V))."""
    num_warps: int = 2
    """Warps per program. 512 / (2 x 32) = 8 bf16 per thread, one 16-byte load."""
    num_stages: int = 2
    """Software-pipelining depth of the loop over a long row."""
    programs_per_sm: int = -1
    """Programs of a persistent grid per multiprocessor; 0: as many as can be resident
    (by the compiled kernel's registers); -1: one program per row (not persistent)."""
    slots: bool = False
    """Long rows with a per-slot online softmax (token_slots_tl.py) instead of the
    per-block one."""
    short_rows: int = 1
    """Short rows held at once by a program (a power of two; token_tile_tl.py); 1: one
    at a time. Rows with a gradient always go one at a time."""

    def __post_init__(self) -> None:
        if self.block_v < 16 or self.block_v & (self.block_v - 1):
            raise ValueError(f"expected `block_v` to be a power of two >= 16, got {self.block_v}")
        if self.num_warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"expected `num_warps` in 1, 2, 4, 8, 16, 32, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"expected `num_stages` >= 1, got {self.num_stages}")
        if self.programs_per_sm < -1:
            raise ValueError(f"expected `programs_per_sm` >= -1, got {self.programs_per_sm}")
        if self.short_rows < 1 or self.short_rows & (self.short_rows - 1):
            raise ValueError(f"expected `short_rows` to be a power of two, got {self.short_rows}")


# Defaults: benchmarks/token_stats_kernel.py times the variants of each (its LONG_VARIANTS
# and SHORT_VARIANTS) and prints the pick (docs/benchmarks.md).
# Picked on one H200 (docs/benchmarks.md): per-slot 512/2 took 0.87x (worst 0.98x) of
# per-block 512/2's time on the four long-row cases and 0.86x on the teacher's.
DEFAULT_CONFIG = TritonConfig(512, 2, 2, slots=True)  # long rows, with or without the fold
TEACHER_CONFIG = TritonConfig(512, 2, 2, slots=True)  # long rows with target_logits
# Short rows (audio codebooks, V = 1026): 1 warp, one program per row took 0.67x of 2 warps
# on a resident grid, on the same H200 run.
SHORT_CONFIG = TritonConfig(16, 1, 1, programs_per_sm=-1)  # short rows: warps and grid only
FOLD_WARPS = 4
FOLD_TILE = 128  # tokens x padded groups per tile of the fold
FOLD_PROGRAMS_PER_SM = 2


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

    ints: tuple  # n_rows, G, D1, D2, V, ignore_index and the five tensors' strides
    constexprs: tuple  # HAS_MASK ... RB, in the kernel's order
    n_tokens: int
    n_rows: int
    n_units: int  # rows, or tiles of rows, the grid takes (one program each, or persistent)
    num_warps: int
    num_stages: int
    per_sm: int  # programs per multiprocessor of a persistent grid; -1: one per row
    device: int
    programs: int = 0  # the persistent grid, once known


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
           logits.device, SHORT_MAX_VOCAB, SHORT_CONFIG, DEFAULT_CONFIG, TEACHER_CONFIG)
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

    has_mask, has_target, has_grad, scale_dtype, store_rows, fold = flags
    main = _pow2_at_most(vocab)
    tail = 0 if main == vocab else max(16, _pow2_at_least(vocab - main))
    short = vocab <= SHORT_MAX_VOCAB
    cfg = config or (SHORT_CONFIG if short else TEACHER_CONFIG if has_target else
                     DEFAULT_CONFIG)
    block_v = max(16, min(cfg.block_v, _pow2_at_least(vocab)))
    ints = (n_tokens * n_groups, n_groups, merged[1][0], merged[2][0], vocab, ignore_index,
            *strides(logits, True), *strides(labels, False), *strides(mask, False),
            *strides(target, True), *strides(grad, True))
    tile_rows = cfg.short_rows if short and not has_grad else 1
    constexprs = (has_mask, has_target, has_grad, scale_dtype is not False, cap is not None,
                  store_rows, fold, short, cfg.slots and block_v >= 16 * SLOT,
                  cfg.programs_per_sm >= 0, block_v, main, tail,
                  "evict_last" if has_target or has_grad else "evict_first", SLOT, tile_rows)
    n_rows = n_tokens * n_groups
    plan = _Plan(ints, constexprs, n_tokens, n_rows, -(-n_rows // tile_rows),
                 cfg.num_warps, 1 if short else cfg.num_stages, cfg.programs_per_sm,
                 logits.device.index or 0)
    if len(_PLANS) > 256:  # bounded: layouts of a training run are few
        _PLANS.clear()
    _PLANS[key] = plan
    return plan


def _grid(plan: _Plan, device: torch.device) -> int:
    """Programs of the row launch: one per row, or a persistent grid of as many as can be
    resident at once (by registers, once the kernel is compiled; 8 per multiprocessor
    before) or ``programs_per_sm`` per multiprocessor."""
    if plan.per_sm < 0:
        return plan.n_units
    if _interpreting() or device.type != "cuda":
        return min(plan.n_units, 3)  # several programs, several rows (or tiles) each
    if plan.programs:
        return min(plan.n_units, plan.programs)
    return min(plan.n_units, _multiprocessors(plan.device) * (plan.per_sm or 8))


def _resident(kernel, num_warps: int) -> int:
    """Programs of ``num_warps`` that fit on one multiprocessor by registers (65536 a
    multiprocessor, allocated per warp in units of 256) and warps (64)."""
    regs_per_warp = -(-max(int(kernel.n_regs), 1) * 32 // 256) * 256
    return max(1, min(MAX_PROGRAMS_PER_SM, 64 // num_warps, 65536 // regs_per_warp // num_warps))


def _run_rows(plan: _Plan, device: torch.device, tensors: list, floats: tuple) -> None:
    """Launch the row kernel; the first launch of a resident persistent plan sizes its grid."""
    if plan.n_rows == 0:
        return
    args = (*tensors, *floats, *plan.ints, *plan.constexprs)
    kernel = _rows_kernel[(_grid(plan, device),)](*args, num_warps=plan.num_warps,
                                                  num_stages=plan.num_stages)
    if (not plan.programs and plan.per_sm == 0 and device.type == "cuda"
            and not _interpreting() and hasattr(kernel, "n_regs")):
        plan.programs = _multiprocessors(plan.device) * _resident(kernel, plan.num_warps)


def _run_fold(records: list[Tensor], state: tuple[Tensor, ...], n_tokens: int, n_groups: int,
              has_target: bool, last_chunk: bool, device: torch.device) -> None:
    """Launch the fold over a call's records (flags, conf, label_prob, ce, entropy, kl,
    alpha; each (n_tokens * G,)) into the stream's state; counts the call at its end."""
    from .token_fold_tl import _fold_kernel

    g_pad = _pow2_at_least(n_groups)
    tile_tokens = max(1, FOLD_TILE // g_pad)
    tiles = -(-n_tokens // tile_tokens)
    if _interpreting() or device.type != "cuda":
        programs = min(max(tiles, 1), 3)  # several, so the call's ticket is exercised
    else:
        programs = min(max(tiles, 1), _multiprocessors(device.index or 0) * FOLD_PROGRAMS_PER_SM)
    _fold_kernel[(programs,)](*records, *state, n_tokens, n_groups, g_pad, tile_tokens,
                              has_target, last_chunk, num_warps=FOLD_WARPS)


_ROW_OUTPUTS = ("valid", "finite", "argmax", "teacher_argmax")
_RECORD_FIELDS = ("flags", "conf", "label_prob", "ce", "entropy", "kl", "alpha")


def _launch(logits: Tensor, labels: Tensor, mask: Tensor | None, target: Tensor | None,
            grad: Tensor | None, n_groups: int, ignore_index: int, *,
            rows: dict[str, Tensor] | None, fold: tuple[Tensor, ...] | None, last_chunk: bool,
            cap: float | None, grad_scale: float | Tensor | None,
            config: TritonConfig | None) -> bool:
    """The row launch over logits (*lead, [G], V), and the fold's when ``fold`` is given;
    False (nothing launched) when the layout has too many axes."""
    scale_is_ptr = isinstance(grad_scale, Tensor)
    flags = (mask is not None, target is not None, grad is not None,
             grad_scale.dtype if scale_is_ptr else False, rows is not None, fold is not None)
    plan = _plan(logits, labels, mask, target, grad, n_groups, ignore_index, flags, cap, config)
    if plan is None:
        return False
    dummy = labels
    out = dict(rows or {})
    if fold is not None:
        n_fields = 7 if target is not None else 5
        if rows is None:  # one buffer of records: 4 bytes per field and row, each
            # field 16-byte aligned (so every call of a layout runs one compiled variant)
            records = torch.empty(n_fields, -(-plan.n_rows // 4) * 4, dtype=torch.float32,
                                  device=logits.device)
            out.update(zip(_RECORD_FIELDS, records[:, :plan.n_rows]))
        else:
            out["flags"] = torch.empty(plan.n_rows, dtype=torch.float32, device=logits.device)
    tensors = [logits, labels, dummy if mask is None else mask,
               logits if target is None else target, logits if grad is None else grad,
               *(out.get(k, dummy) for k in _ROW_OUTPUTS),
               *(out.get(k, out.get("conf", dummy)) for k in _RECORD_FIELDS),
               grad_scale if scale_is_ptr else dummy]
    floats = (1.0 if grad_scale is None or scale_is_ptr else float(grad_scale),
              1.0 if cap is None else float(cap))
    _run_rows(plan, logits.device, tensors, floats)
    if fold is not None:
        records = [out.get(k, out["conf"]) for k in _RECORD_FIELDS]
        _run_fold(records, fold, plan.n_tokens, n_groups, target is not None, last_chunk,
                  logits.device)
    return True


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
    adds every row to that state, as `token_sums.accumulate_rows` does, in a second
    launch. Any strides are read in place. Allocates only the N-length outputs; never
    synchronises with the host. Use ``token_stats.row_stats``, which checks the
    arguments; call this directly to fold or to pick a ``config``.
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
    """Fold logits (*lead, [G], V) with labels (*lead, [G]) into a stream's state: the row
    launch and the fold's, no per-row output (the records are 20 or 28 bytes a row).

    Returns False (and does nothing) when the leading axes do not merge into three; the
    caller then splits along the first axis.
    """
    return _launch(logits, labels, _as_bytes(mask), target_logits, None, n_groups,
                   ignore_index, rows=None, fold=fold, last_chunk=last_chunk, cap=None,
                   grad_scale=None, config=config)
