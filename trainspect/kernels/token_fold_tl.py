"""Device code of the Triton backend, part 3: the fold (token_stats_triton.py describes
the algorithm; token_stats_tl.py writes the per-row records it reads).

`_fold_kernel` adds the records of one call's rows, (tokens, G) in row order, to a
stream's float64 state (kernels.token_sums): per group the SUMS columns (the draft
chains from each token's G consecutive rows), the calibration cells and the counters.
Program p takes tiles p, p + P, ... of TB tokens x G_PAD groups and accumulates
elementwise in float64 registers, reduces once at the end and adds its partial sums
with a few dozen atomics: a few hundred programs, so no address is hit by more than
a few hundred atomics per call (the row kernel's own programs, one per row, would hit
the same addresses tens of thousands of times). The last program of a call (a ticket
in the stream's scratch) counts the call. Nothing here reads the logits.
"""

from __future__ import annotations

from .token_rows_tl import _constexpr, _jit, tl
from .token_stats_tl import F_AGREE, F_BAD, F_CORRECT, F_FINITE, F_VALID, _jit_args
from .token_sums import COL, COUNTERS, CTR, N_BINS, SCRATCH, SUMS

CONF_WRONG = _constexpr(0.5)  # token_sums.CONFIDENT
K_SUMS = _constexpr(len(SUMS))
N_BIN = _constexpr(N_BINS)
BINS_PAD = _constexpr(16)  # the calibration bins, padded to a power of two
C_TOKENS, C_CORRECT, C_WRONG = (_constexpr(COL[k]) for k in ("tokens", "correct",
                                                              "confident_wrong"))
C_CE, C_ENT, C_CONF, C_LP = (_constexpr(COL[k]) for k in ("ce", "entropy", "conf",
                                                          "label_prob"))
C_AGREE, C_KL, C_ALPHA = (_constexpr(COL[k]) for k in ("teacher_agree", "kl", "alpha"))
C_CHAIN, C_BASE = _constexpr(COL["chain_correct"]), _constexpr(COL["chain_base"])
R_CALLS, R_EMPTY, R_BAD, R_TEACHER, R_NONFINITE = (_constexpr(CTR[k]) for k in COUNTERS)
S_TOKENS, S_DONE = (_constexpr(SCRATCH.index(k)) for k in ("call_tokens", "programs_done"))
assert N_BINS <= 16  # BINS_PAD holds them

__all__ = ["_fold_kernel"]


@_jit
def _add_column(sums_ptr, acc, col, gi, gmask):
    """Add one column's (TB, G_PAD) float64 accumulator to the state's sums[:, col]."""
    tl.atomic_add(sums_ptr + gi * K_SUMS + col, tl.sum(acc, axis=0), mask=gmask)


@_jit
def _count_call(call_tokens_part, ctr_ptr, scratch_ptr, HAS_TARGET: tl.constexpr,
                END_CALL: tl.constexpr):
    """Add this program's supervised rows to the call's; the last program of the last
    chunk of a call counts the call (calls, empty calls, teacher calls) and zeroes the
    scratch."""
    if call_tokens_part > 0:
        tl.atomic_add(scratch_ptr + S_TOKENS, call_tokens_part)
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


@_jit_args(do_not_specialize=["n_tokens", "G"])
def _fold_kernel(
    flags_ptr, conf_ptr, lp_ptr, ce_ptr, ent_ptr, kl_ptr, alpha_ptr,  # (tokens * G,) records
    sums_ptr, cal_ptr, ctr_ptr, scratch_ptr,  # the stream's float64 state
    n_tokens, G,
    G_PAD: tl.constexpr, TB: tl.constexpr, HAS_TARGET: tl.constexpr, END_CALL: tl.constexpr,
):
    """Program p folds tiles p, p + P, ... of TB tokens into the state (see the module)."""
    f64 = tl.float64
    ti = tl.arange(0, TB)
    gi = tl.arange(0, G_PAD)
    bb = tl.arange(0, BINS_PAD)
    zero = tl.zeros([TB, G_PAD], f64)
    n_ok, n_hit, n_wrong, s_ce, s_ent, s_conf, s_lp = zero, zero, zero, zero, zero, zero, zero
    n_agree, s_kl, s_alpha, n_chain, n_base = zero, zero, zero, zero, zero
    n_bad, n_nonfinite, n_valid = zero, zero, zero
    cal_n = tl.zeros([TB, G_PAD, BINS_PAD], f64)
    cal_conf = tl.zeros([TB, G_PAD, BINS_PAD], f64)
    cal_hit = tl.zeros([TB, G_PAD, BINS_PAD], f64)
    n_tiles = tl.cdiv(n_tokens, TB)
    for tile in range(tl.program_id(0), n_tiles, tl.num_programs(0)):
        tok = tile * TB + ti
        inb = (tok < n_tokens)[:, None] & (gi < G)[None, :]
        row = tok.to(tl.int64)[:, None] * G + gi[None, :]
        flags = tl.load(flags_ptr + row, mask=inb, other=0.0).to(tl.int32)
        valid = (flags & F_VALID) != 0
        ok = valid & ((flags & F_FINITE) != 0)  # counted
        hit = (flags & F_CORRECT) != 0  # counted and correct
        conf = tl.load(conf_ptr + row, mask=inb & ok, other=0.0).to(f64)
        n_ok += ok.to(f64)
        n_hit += hit.to(f64)
        n_wrong += (ok & ~hit & (conf > CONF_WRONG)).to(f64)
        s_conf += conf
        s_ce += tl.load(ce_ptr + row, mask=inb & ok, other=0.0).to(f64)
        s_ent += tl.load(ent_ptr + row, mask=inb & ok, other=0.0).to(f64)
        s_lp += tl.load(lp_ptr + row, mask=inb & ok, other=0.0).to(f64)
        if HAS_TARGET:
            n_agree += ((flags & F_AGREE) != 0).to(f64)
            s_kl += tl.load(kl_ptr + row, mask=inb & ok, other=0.0).to(f64)
            s_alpha += tl.load(alpha_ptr + row, mask=inb & ok, other=0.0).to(f64)
        # chains: a token's rows 0..g all correct; its base: rows 0..g-1 correct, g counted
        miss = (~hit).to(tl.int32)
        misses = tl.cumsum(miss, axis=1)
        n_chain += (misses == 0).to(f64)
        n_base += (((misses - miss) == 0) & ok).to(f64)
        n_bad += ((flags & F_BAD) != 0).to(f64)
        n_nonfinite += (valid & ~ok).to(f64)
        n_valid += valid.to(f64)
        # calibration: bin floor(10 conf) formed in float64 (kernels.token_sums)
        b = tl.minimum((conf * N_BIN).to(tl.int32), N_BIN - 1)
        cell = (b[:, :, None] == bb[None, None, :]) & ok[:, :, None]
        cal_n += cell.to(f64)
        cal_conf += tl.where(cell, conf[:, :, None], 0.0)
        cal_hit += (cell & hit[:, :, None]).to(f64)
    gmask = gi < G
    _add_column(sums_ptr, n_ok, C_TOKENS, gi, gmask)
    _add_column(sums_ptr, n_hit, C_CORRECT, gi, gmask)
    _add_column(sums_ptr, n_wrong, C_WRONG, gi, gmask)
    _add_column(sums_ptr, s_ce, C_CE, gi, gmask)
    _add_column(sums_ptr, s_ent, C_ENT, gi, gmask)
    _add_column(sums_ptr, s_conf, C_CONF, gi, gmask)
    _add_column(sums_ptr, s_lp, C_LP, gi, gmask)
    if HAS_TARGET:
        _add_column(sums_ptr, n_agree, C_AGREE, gi, gmask)
        _add_column(sums_ptr, s_kl, C_KL, gi, gmask)
        _add_column(sums_ptr, s_alpha, C_ALPHA, gi, gmask)
    _add_column(sums_ptr, n_chain, C_CHAIN, gi, gmask)
    _add_column(sums_ptr, n_base, C_BASE, gi, gmask)
    cells = gi[:, None] * (N_BIN * 3) + bb[None, :] * 3
    cmask = gmask[:, None] & (bb < N_BIN)[None, :]
    tl.atomic_add(cal_ptr + cells, tl.sum(cal_n, axis=0), mask=cmask)
    tl.atomic_add(cal_ptr + cells + 1, tl.sum(cal_conf, axis=0), mask=cmask)
    tl.atomic_add(cal_ptr + cells + 2, tl.sum(cal_hit, axis=0), mask=cmask)
    bad = tl.sum(tl.sum(n_bad, axis=1), axis=0)
    if bad > 0:
        tl.atomic_add(ctr_ptr + R_BAD, bad)
    nonfinite = tl.sum(tl.sum(n_nonfinite, axis=1), axis=0)
    if nonfinite > 0:
        tl.atomic_add(ctr_ptr + R_NONFINITE, nonfinite)
    _count_call(tl.sum(tl.sum(n_valid, axis=1), axis=0), ctr_ptr, scratch_ptr, HAS_TARGET,
                END_CALL)
