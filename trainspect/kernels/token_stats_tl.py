"""Device code of the Triton backend, part 2: the fold and the kernel (token_stats_triton.py
describes the algorithm; token_rows_tl.py computes the rows).

`_rows_kernel` is persistent: program p takes tokens p, p + P, ... (a token is G
consecutive rows), computes each row with `_long_row` or `_short_row`, optionally
stores the per-row statistics, and folds every row into per-program accumulators
(`_fold_vals`, `_cal_vals`) that `_fold_commit` adds atomically to the stream's float64
state (kernels.token_sums) at the end.
"""

from __future__ import annotations

from .token_rows_tl import _constexpr, _jit, _long_row, _short_row, _zero_row, tl, triton
from .token_sums import COL, COUNTERS, CTR, N_BINS, SCRATCH, SUMS

CONF_WRONG = _constexpr(0.5)  # token_sums.CONFIDENT
# The fold's layout (kernels.token_sums): columns, bins and counters by index.
K_SUMS = _constexpr(len(SUMS))
KP = _constexpr(16)  # the sums' columns, padded to a power of two
N_BIN = _constexpr(N_BINS)
CALP = _constexpr(64)  # calibration cells: 16 bins (10 used) x 4 (3 used)
C_TOKENS, C_CORRECT, C_WRONG = (_constexpr(COL[k]) for k in ("tokens", "correct",
                                                              "confident_wrong"))
C_CE, C_ENT, C_CONF, C_LP = (_constexpr(COL[k]) for k in ("ce", "entropy", "conf",
                                                          "label_prob"))
C_AGREE, C_KL, C_ALPHA = (_constexpr(COL[k]) for k in ("teacher_agree", "kl", "alpha"))
C_CHAIN, C_BASE = _constexpr(COL["chain_correct"]), _constexpr(COL["chain_base"])
R_CALLS, R_EMPTY, R_BAD, R_TEACHER, R_NONFINITE = (_constexpr(CTR[k]) for k in COUNTERS)
S_TOKENS, S_DONE = (_constexpr(SCRATCH.index(k)) for k in ("call_tokens", "programs_done"))
assert len(SUMS) <= 16 and N_BINS <= 16  # KP and CALP (16 bins x 4) hold them

__all__ = ["_rows_kernel", "triton"]


def _jit_args(**kwargs):
    """``triton.jit(**kwargs)`` when triton is installed (sizes that change from call to
    call are not specialised on, so they do not compile new variants)."""
    return (lambda fn: fn) if triton is None else triton.jit(**kwargs)


# ---- the fold -----------------------------------------------------------------------------


@_jit
def _fold_vals(kk, counted, correct, conf, ce, entropy, label_prob, agree, kl, alpha,
               chain_hit, chain_base):
    """One row's contribution to the SUMS columns (`kk` indexes them), in fp32: a program's
    partial sums over its few rows; they reach the float64 state at the commit."""
    f32 = tl.float32
    v = tl.where(kk == C_TOKENS, counted.to(f32), 0.0)
    v += tl.where(kk == C_CORRECT, correct.to(f32), 0.0)
    v += tl.where(kk == C_WRONG, (counted & ~correct & (conf > CONF_WRONG)).to(f32), 0.0)
    v += tl.where((kk == C_CE) & counted, ce, 0.0)
    v += tl.where((kk == C_ENT) & counted, entropy, 0.0)
    v += tl.where((kk == C_CONF) & counted, conf, 0.0)
    v += tl.where((kk == C_LP) & counted, label_prob, 0.0)
    v += tl.where(kk == C_AGREE, agree.to(f32), 0.0)
    v += tl.where((kk == C_KL) & counted, kl, 0.0)
    v += tl.where((kk == C_ALPHA) & counted, alpha, 0.0)
    v += tl.where(kk == C_CHAIN, chain_hit.to(f32), 0.0)
    v += tl.where(kk == C_BASE, chain_base.to(f32), 0.0)
    return v


@_jit
def _cal_vals(cb, cq, counted, conf, correct):
    """One row's calibration cells; the bin floor(10 conf) is formed in float64, where it
    is exact for an fp32 conf (kernels.token_sums.calibration_bin)."""
    c = tl.where(counted, conf, 0.0)
    b = tl.minimum((c.to(tl.float64) * N_BIN).to(tl.int32), N_BIN - 1)
    q = tl.where(cq == 0, 1.0, tl.where(cq == 1, c, correct.to(tl.float32)))
    return tl.where((cb == b) & counted, q, 0.0)


@_jit
def _fold_commit(
    acc, cal, bad, nonfinite, tokens, sums_ptr, cal_ptr, ctr_ptr, scratch_ptr,
    G: tl.constexpr, G_PAD: tl.constexpr, HAS_TARGET: tl.constexpr, END_CALL: tl.constexpr,
):
    """Add a program's accumulators to the stream's state; the last program of a call
    counts the call (calls, empty calls, teacher calls) and zeroes the scratch."""
    gi = tl.arange(0, G_PAD)
    ki = tl.arange(0, KP)
    kmask = (ki < K_SUMS) & (HAS_TARGET | (ki < C_AGREE) | (ki > C_ALPHA))
    tl.atomic_add(sums_ptr + gi[:, None] * K_SUMS + ki[None, :], acc.to(tl.float64),
                  mask=(gi < G)[:, None] & kmask[None, :])
    ci = tl.arange(0, CALP)
    cb = ci // 4
    cq = ci % 4
    tl.atomic_add(cal_ptr + gi[:, None] * (N_BIN * 3) + (cb * 3 + cq)[None, :],
                  cal.to(tl.float64), mask=(gi < G)[:, None] & ((cb < N_BIN) & (cq < 3))[None, :])
    if bad > 0:
        tl.atomic_add(ctr_ptr + R_BAD, bad)
    if nonfinite > 0:
        tl.atomic_add(ctr_ptr + R_NONFINITE, nonfinite)
    if tokens > 0:
        tl.atomic_add(scratch_ptr + S_TOKENS, tokens)
    if END_CALL:
        done = tl.atomic_add(scratch_ptr + S_DONE, 1.0)  # acq_rel: the adds above land first
        if done == tl.num_programs(0) - 1:
            # Every other program of the call is done: read and zero the scratch (adds,
            # as the interpreter has no float64 exchange).
            call_tokens = tl.atomic_add(scratch_ptr + S_TOKENS, 0.0)
            tl.atomic_add(scratch_ptr + S_TOKENS, -call_tokens)
            tl.atomic_add(scratch_ptr + S_DONE, -(done + 1.0))
            tl.atomic_add(ctr_ptr + R_CALLS, 1.0)
            if call_tokens == 0.0:
                tl.atomic_add(ctr_ptr + R_EMPTY, 1.0)
            if HAS_TARGET:
                tl.atomic_add(ctr_ptr + R_TEACHER, 1.0)


# ---- the kernel ---------------------------------------------------------------------------


@_jit_args(do_not_specialize=["n_tokens", "D1", "D2", "ignore_index"])
def _rows_kernel(
    x_ptr, lab_ptr, mask_ptr, t_ptr, g_ptr,  # logits, labels, mask, teacher, gradient
    valid_out, finite_out, argmax_out, conf_out, lp_out, ce_out, ent_out,  # (N,) or dummies
    t_argmax_out, kl_out, alpha_out,
    sums_ptr, cal_ptr, ctr_ptr, scratch_ptr,  # the stream's float64 state, or dummies
    scale_ptr, scale, cap, n_tokens, D1, D2, V, ignore_index,
    xs0, xs1, xs2, xsg, xsv, ls0, ls1, ls2, lsg, ms0, ms1, ms2, msg,
    ts0, ts1, ts2, tsg, tsv, gs0, gs1, gs2, gsg, gsv,
    G: tl.constexpr, G_PAD: tl.constexpr, HAS_MASK: tl.constexpr, HAS_TARGET: tl.constexpr,
    HAS_GRAD: tl.constexpr, SCALE_PTR: tl.constexpr, SOFTCAP: tl.constexpr,
    STORE_ROWS: tl.constexpr, FOLD: tl.constexpr, END_CALL: tl.constexpr,
    SHORT: tl.constexpr, BLOCK_V: tl.constexpr, VM: tl.constexpr, VT: tl.constexpr,
    EVICT_PASS1: tl.constexpr,
):
    """Persistent: program p takes tokens p, p + P, ... (a token = G consecutive rows)."""
    g_scale = tl.load(scale_ptr).to(tl.float32) if SCALE_PTR else scale
    gi = tl.arange(0, G_PAD)
    acc = tl.zeros([G_PAD, KP], tl.float32)  # this program's partial sums per group
    cal = tl.zeros([G_PAD, CALP], tl.float32)
    ki = tl.arange(0, KP)
    ci = tl.arange(0, CALP)
    cb = ci // 4
    cq = ci % 4
    bad = tl.zeros([], tl.float64)
    nonfinite = tl.zeros([], tl.float64)
    tokens = tl.zeros([], tl.float64)
    for tok in range(tl.program_id(0), n_tokens, tl.num_programs(0)):
        tok64 = tl.cast(tok, tl.int64)
        i2 = tok64 % D2
        i1 = (tok64 // D2) % D1
        i0 = tok64 // D2 // D1
        x_row = x_ptr + i0 * xs0 + i1 * xs1 + i2 * xs2
        l_row = lab_ptr + i0 * ls0 + i1 * ls1 + i2 * ls2
        m_row = mask_ptr + i0 * ms0 + i1 * ms1 + i2 * ms2
        t_row = t_ptr + i0 * ts0 + i1 * ts1 + i2 * ts2
        g_row = g_ptr + i0 * gs0 + i1 * gs1 + i2 * gs2
        chain = tok64 >= 0  # True: every earlier position of this token was correct
        for g in range(0, G):
            label = tl.load(l_row + g * lsg).to(tl.int64)
            keep = tok64 >= 0
            if HAS_MASK:
                keep = tl.load(m_row + g * msg) != 0
            in_range = (label >= 0) & (label < V)
            valid = keep & in_range & (label != ignore_index)
            bad += (keep & ~in_range & (label != ignore_index)).to(tl.float64)
            finite = tok64 < 0
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
                        x_row + g * xsg, xsv, t_row + g * tsg, tsv, g_row + g * gsg, gsv,
                        label, V, cap, g_scale, HAS_TARGET, HAS_GRAD, SOFTCAP, VM, VT)
                else:
                    finite, amax, conf, lp, ce, ent, t_amax, kl, alpha = _long_row(
                        x_row + g * xsg, xsv, t_row + g * tsg, tsv, g_row + g * gsg, gsv,
                        label, V, cap, g_scale, HAS_TARGET, HAS_GRAD, SOFTCAP, BLOCK_V,
                        EVICT_PASS1)
            elif HAS_GRAD:
                _zero_row(g_row + g * gsg, gsv, V, BLOCK_V)
            counted = valid & finite
            correct = counted & (amax.to(tl.int64) == label)
            agree = counted & (amax == t_amax)  # its column is only added with a teacher
            chain_base = chain & counted
            chain = chain & correct
            if FOLD:
                vals = _fold_vals(ki, counted, correct, conf, ce, ent, lp, agree, kl,
                                  alpha, chain, chain_base)
                acc += tl.where((gi == g)[:, None], vals[None, :], 0.0)
                cells = _cal_vals(cb, cq, counted, conf, correct)
                cal += tl.where((gi == g)[:, None], cells[None, :], 0.0)
                nonfinite += (valid & ~finite).to(tl.float64)
                tokens += valid.to(tl.float64)
            if STORE_ROWS:
                out = tok64 * G + g
                tl.store(valid_out + out, valid.to(tl.int8))
                tl.store(finite_out + out, finite.to(tl.int8))
                tl.store(argmax_out + out, amax.to(tl.int64))
                tl.store(conf_out + out, conf)
                tl.store(lp_out + out, lp)
                tl.store(ce_out + out, ce)
                tl.store(ent_out + out, ent)
                if HAS_TARGET:
                    tl.store(t_argmax_out + out, t_amax.to(tl.int64))
                    tl.store(kl_out + out, kl)
                    tl.store(alpha_out + out, alpha)
    if FOLD:
        _fold_commit(acc, cal, bad, nonfinite, tokens, sums_ptr, cal_ptr, ctr_ptr,
                     scratch_ptr, G, G_PAD, HAS_TARGET, END_CALL)
