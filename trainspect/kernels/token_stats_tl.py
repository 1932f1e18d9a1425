"""Device code of the Triton backend, part 2: the row kernel (token_stats_triton.py
describes the algorithm; token_rows_tl.py and token_slots_tl.py compute one row,
token_fold_tl.py folds the rows into a stream's sums).

`_rows_kernel` takes rows r of logits (*lead, [G], V): one program per row, or a
persistent grid where program p takes rows p, p + P, ... Row r is group r % G of token
r // G; the token's leading index is split into up to three axes read through their
own strides. It writes the per-row statistics (`RowStats`) and/or the fold's per-row
record: the flags (valid, finite, correct, teacher agrees, bad label) and the float
statistics, which `_fold_kernel` adds up in a second, small launch.
"""

from __future__ import annotations

from .token_rows_tl import (
    F_AGREE,
    F_BAD,
    F_CORRECT,
    F_FINITE,
    F_VALID,
    _jit,
    _long_row,
    _short_row,
    _store_rows,
    _zero_row,
    tl,
    triton,
)
from .token_slots_tl import _long_row_slots
from .token_tile_tl import _tile_rows

__all__ = ["F_AGREE", "F_BAD", "F_CORRECT", "F_FINITE", "F_VALID", "_rows_kernel", "triton"]


def _jit_args(**kwargs):
    """``triton.jit(**kwargs)`` when triton is installed (sizes that change from call to
    call are not specialised on, so they do not compile new variants)."""
    return (lambda fn: fn) if triton is None else triton.jit(**kwargs)


@_jit
def _one_row(
    r, x_ptr, lab_ptr, mask_ptr, t_ptr, g_ptr,
    valid_out, finite_out, argmax_out, t_argmax_out,
    flags_out, conf_out, lp_out, ce_out, ent_out, kl_out, alpha_out,
    g_scale, cap, G, D1, D2, V, ignore_index,
    xs0, xs1, xs2, xsg, xsv, ls0, ls1, ls2, lsg, ms0, ms1, ms2, msg,
    ts0, ts1, ts2, tsg, tsv, gs0, gs1, gs2, gsg, gsv,
    HAS_MASK: tl.constexpr, HAS_TARGET: tl.constexpr, HAS_GRAD: tl.constexpr,
    SOFTCAP: tl.constexpr, STORE_ROWS: tl.constexpr, FOLD: tl.constexpr,
    SHORT: tl.constexpr, SLOTS: tl.constexpr, BLOCK_V: tl.constexpr, VM: tl.constexpr,
    VT: tl.constexpr, EVICT_PASS1: tl.constexpr, SLOT: tl.constexpr,
):
    """Row r: read its label (and mask), its logits only when it is valid, store its
    statistics and/or its fold record."""
    r = tl.cast(r, tl.int32)  # rows are fewer than 2**31 (a Python int when interpreted)
    tok = r // G
    g = (r - tok * G).to(tl.int64)
    i2 = (tok % D2).to(tl.int64)
    i1 = ((tok // D2) % D1).to(tl.int64)
    i0 = (tok // D2 // D1).to(tl.int64)
    label = tl.load(lab_ptr + i0 * ls0 + i1 * ls1 + i2 * ls2 + g * lsg).to(tl.int64)
    keep = r >= 0
    if HAS_MASK:
        keep = tl.load(mask_ptr + i0 * ms0 + i1 * ms1 + i2 * ms2 + g * msg) != 0
    in_range = (label >= 0) & (label < V)
    valid = keep & in_range & (label != ignore_index)
    bad = keep & ~in_range & (label != ignore_index)
    x_row = x_ptr + i0 * xs0 + i1 * xs1 + i2 * xs2 + g * xsg
    t_row = t_ptr + i0 * ts0 + i1 * ts1 + i2 * ts2 + g * tsg
    g_row = g_ptr + i0 * gs0 + i1 * gs1 + i2 * gs2 + g * gsg
    finite = r < 0
    amax = tl.zeros([], tl.int32)
    t_amax = tl.zeros([], tl.int32)
    conf = tl.zeros([], tl.float32)
    lp = tl.zeros([], tl.float32)
    ce = tl.zeros([], tl.float32)
    ent = tl.zeros([], tl.float32)
    kl = tl.zeros([], tl.float32)
    alpha = tl.zeros([], tl.float32)
    if valid:
        if SHORT:
            finite, amax, conf, lp, ce, ent, t_amax, kl, alpha = _short_row(
                x_row, xsv, t_row, tsv, g_row, gsv, label, V, cap, g_scale, HAS_TARGET,
                HAS_GRAD, SOFTCAP, VM, VT)
        elif SLOTS:
            finite, amax, conf, lp, ce, ent, t_amax, kl, alpha = _long_row_slots(
                x_row, xsv, t_row, tsv, g_row, gsv, label, V, cap, g_scale, HAS_TARGET,
                HAS_GRAD, SOFTCAP, BLOCK_V, EVICT_PASS1, SLOT)
        else:
            finite, amax, conf, lp, ce, ent, t_amax, kl, alpha = _long_row(
                x_row, xsv, t_row, tsv, g_row, gsv, label, V, cap, g_scale, HAS_TARGET,
                HAS_GRAD, SOFTCAP, BLOCK_V, EVICT_PASS1)
    elif HAS_GRAD:
        _zero_row(g_row, gsv, V, BLOCK_V)
    _store_rows(r.to(tl.int64), r >= 0, valid, finite, bad, label, amax, t_amax, conf, lp,
                ce, ent, kl, alpha, valid_out, finite_out, argmax_out, t_argmax_out, flags_out,
                conf_out, lp_out, ce_out, ent_out, kl_out, alpha_out, HAS_TARGET, STORE_ROWS,
                FOLD)


@_jit_args(do_not_specialize=["n_rows", "G", "D1", "D2", "ignore_index"])
def _rows_kernel(
    x_ptr, lab_ptr, mask_ptr, t_ptr, g_ptr,  # logits, labels, mask, teacher, gradient
    valid_out, finite_out, argmax_out, t_argmax_out,  # RowStats' (N,) outputs, or dummies
    flags_out, conf_out, lp_out, ce_out, ent_out, kl_out, alpha_out,  # (N,) or dummies
    scale_ptr, scale, cap, n_rows, G, D1, D2, V, ignore_index,
    xs0, xs1, xs2, xsg, xsv, ls0, ls1, ls2, lsg, ms0, ms1, ms2, msg,
    ts0, ts1, ts2, tsg, tsv, gs0, gs1, gs2, gsg, gsv,
    HAS_MASK: tl.constexpr, HAS_TARGET: tl.constexpr, HAS_GRAD: tl.constexpr,
    SCALE_PTR: tl.constexpr, SOFTCAP: tl.constexpr, STORE_ROWS: tl.constexpr,
    FOLD: tl.constexpr, SHORT: tl.constexpr, SLOTS: tl.constexpr, PERSISTENT: tl.constexpr,
    BLOCK_V: tl.constexpr, VM: tl.constexpr, VT: tl.constexpr, EVICT_PASS1: tl.constexpr,
    SLOT: tl.constexpr, RB: tl.constexpr,
):
    """One program per row, or (PERSISTENT) program p takes rows p, p + P, ...; with RB > 1
    (short rows, no gradient) the same with tiles of RB rows."""
    g_scale = tl.load(scale_ptr).to(tl.float32) if SCALE_PTR else scale
    if RB > 1:
        if PERSISTENT:
            for tile in range(tl.program_id(0), tl.cdiv(n_rows, RB), tl.num_programs(0)):
                _tile_rows(tile * RB, n_rows, x_ptr, lab_ptr, mask_ptr, t_ptr, valid_out,
                           finite_out, argmax_out, t_argmax_out, flags_out, conf_out, lp_out,
                           ce_out, ent_out, kl_out, alpha_out, cap, G, D1, D2, V,
                           ignore_index, xs0, xs1, xs2, xsg, xsv, ls0, ls1, ls2, lsg,
                           ms0, ms1, ms2, msg, ts0, ts1, ts2, tsg, tsv,
                           HAS_MASK, HAS_TARGET, SOFTCAP, STORE_ROWS, FOLD, VM, VT, RB)
        else:
            _tile_rows(tl.program_id(0) * RB, n_rows, x_ptr, lab_ptr, mask_ptr, t_ptr,
                       valid_out, finite_out, argmax_out, t_argmax_out, flags_out, conf_out,
                       lp_out, ce_out, ent_out, kl_out, alpha_out, cap, G, D1, D2, V,
                       ignore_index, xs0, xs1, xs2, xsg, xsv, ls0, ls1, ls2, lsg,
                       ms0, ms1, ms2, msg, ts0, ts1, ts2, tsg, tsv,
                       HAS_MASK, HAS_TARGET, SOFTCAP, STORE_ROWS, FOLD, VM, VT, RB)
    elif PERSISTENT:
        for r in range(tl.program_id(0), n_rows, tl.num_programs(0)):
            _one_row(r, x_ptr, lab_ptr, mask_ptr, t_ptr, g_ptr, valid_out, finite_out,
                     argmax_out, t_argmax_out, flags_out, conf_out, lp_out, ce_out, ent_out,
                     kl_out, alpha_out, g_scale, cap, G, D1, D2, V, ignore_index,
                     xs0, xs1, xs2, xsg, xsv, ls0, ls1, ls2, lsg, ms0, ms1, ms2, msg,
                     ts0, ts1, ts2, tsg, tsv, gs0, gs1, gs2, gsg, gsv,
                     HAS_MASK, HAS_TARGET, HAS_GRAD, SOFTCAP, STORE_ROWS, FOLD, SHORT, SLOTS,
                     BLOCK_V, VM, VT, EVICT_PASS1, SLOT)
    else:
        _one_row(tl.program_id(0), x_ptr, lab_ptr, mask_ptr, t_ptr, g_ptr, valid_out,
                 finite_out, argmax_out, t_argmax_out, flags_out, conf_out, lp_out, ce_out,
                 ent_out, kl_out, alpha_out, g_scale, cap, G, D1, D2, V, ignore_index,
                 xs0, xs1, xs2, xsg, xsv, ls0, ls1, ls2, lsg, ms0, ms1, ms2, msg,
                 ts0, ts1, ts2, tsg, tsv, gs0, gs1, gs2, gsg, gsv,
                 HAS_MASK, HAS_TARGET, HAS_GRAD, SOFTCAP, STORE_ROWS, FOLD, SHORT, SLOTS,
                 BLOCK_V, VM, VT, EVICT_PASS1, SLOT)
