"""Device code of the Triton backend, part 1b: long rows with a per-slot online softmax
(token_stats_triton.py describes the algorithm; token_rows_tl.py holds the per-block one).

A block of BLOCK_V logits is read as (R, SLOT): slot r holds the SLOT contiguous
columns start + r * SLOT + c, all in one thread (one 16-byte load for bf16). Each slot
keeps its own running max m, reference m log2(e), sums S = sum 2^t and A = sum 2^t t,
and the block in which its max first appeared. A block is folded with reductions inside
the thread only: no shuffle, no shared memory and no barrier in the loop, where the
per-block form (`_online_block`) needs a block-wide max and a uniform branch each step.
The price is one extra 2^x per slot and block (the rescale, branch-free).

At the end of the row the slots are merged against the row max M; the argmax is the
first column holding M: each slot whose max is M re-reads its SLOT columns of the block
that first held it (16 bytes, usually one slot) and the smallest such column wins,
as ``torch.argmax``. Ties, -inf, NaN and +inf behave as in the per-block form.
"""

from __future__ import annotations

from .token_rows_tl import (
    LN2,
    LOG2E,
    NEG_INF,
    T_FLOOR,
    _grad_walk,
    _is_finite,
    _jit,
    _kl_alpha_walk,
    _load_z,
    _softcap,
    tl,
)

__all__ = ["_long_row_slots"]


@_jit
def _slot_cols(start, R: tl.constexpr, SLOT: tl.constexpr):
    """(R, SLOT) column indices of the block starting at ``start``."""
    return start + tl.arange(0, R)[:, None] * SLOT + tl.arange(0, SLOT)[None, :]


@_jit
def _slot_block(z, blk, m, ref, s, a, blk_at, ENTROPY: tl.constexpr):
    """Fold one block z (R, SLOT) fp32 into the per-slot state (each (R,)): max m, its
    reference ref = m log2(e) (0 while m is -inf), S, A (ENTROPY) and the block of the
    max (``blk``: this block's number; a later block wins only if strictly greater)."""
    bm = tl.max(z, axis=1)
    new_m = tl.maximum(m, bm)
    blk_at = tl.where(bm > m, blk, blk_at)
    new_ref = tl.where(new_m > NEG_INF, new_m * LOG2E, 0.0)
    shift = tl.where(m > NEG_INF, ref - new_ref, 0.0)  # <= 0: old t's to the new reference
    scale = tl.exp2(shift)
    t = z * LOG2E - new_ref[:, None]
    e = tl.exp2(t)  # NaN or +inf logits make t and e NaN: the row's S becomes NaN
    if ENTROPY:
        a = scale * (a + s * shift) + tl.sum(e * tl.maximum(t, T_FLOOR), axis=1)
    s = scale * s + tl.sum(e, axis=1)
    return new_m, new_ref, s, a, blk_at


@_jit
def _slot_merge(m, ref, s, a):
    """Row max M, its reference, S and A of the whole row from the slots (-inf slots
    weigh 0)."""
    big_m = tl.max(m, axis=0)
    big_ref = tl.where(big_m > NEG_INF, big_m * LOG2E, 0.0)
    d = ref - big_ref
    w = tl.where(m > NEG_INF, tl.exp2(d), 0.0)
    return big_m, big_ref, tl.sum(w * s, axis=0), tl.sum(w * (a + s * d), axis=0)


@_jit
def _slot_argmax(row_ptr, sv, m, big_m, blk_at, V, cap, SOFTCAP: tl.constexpr,
                 BLOCK_V: tl.constexpr, R: tl.constexpr, SLOT: tl.constexpr):
    """First column holding the row max: re-read the slots whose max is it, in the block
    that first held it (masked loads: other slots read nothing)."""
    cand = m == big_m
    cols = _slot_cols(0, R, SLOT) + blk_at[:, None] * BLOCK_V
    inb = cand[:, None] & (cols < V)
    z = _load_z(row_ptr, cols, sv, inb, cap, SOFTCAP, True, "")
    first = tl.min(tl.min(tl.where(inb & (z == big_m), cols, V), axis=1), axis=0)
    return tl.where(first < V, first, 0)  # none found: a row of NaN (not finite)


@_jit
def _long_row_slots(
    row_ptr, sv, t_row_ptr, tv, g_row_ptr, gv, label, V, cap, g_scale,
    HAS_TARGET: tl.constexpr, HAS_GRAD: tl.constexpr, SOFTCAP: tl.constexpr,
    BLOCK_V: tl.constexpr, EVICT_PASS1: tl.constexpr, SLOT: tl.constexpr,
):
    """Statistics of one valid row of any length; the same results as `_long_row`."""
    R: tl.constexpr = BLOCK_V // SLOT
    v_full = (V // BLOCK_V) * BLOCK_V
    m = tl.full([R], NEG_INF, tl.float32)
    ref = tl.zeros([R], tl.float32)
    s = tl.zeros([R], tl.float32)
    a = tl.zeros([R], tl.float32)
    blk_at = tl.zeros([R], tl.int32)
    mt = tl.full([R], NEG_INF, tl.float32)
    reft = tl.zeros([R], tl.float32)
    st = tl.zeros([R], tl.float32)
    blkt = tl.zeros([R], tl.int32)
    for start in range(0, v_full, BLOCK_V):  # full blocks without a mask
        cols = _slot_cols(start, R, SLOT)
        blk = start // BLOCK_V
        z = _load_z(row_ptr, cols, sv, cols < V, cap, SOFTCAP, False, EVICT_PASS1)
        m, ref, s, a, blk_at = _slot_block(z, blk, m, ref, s, a, blk_at, True)
        if HAS_TARGET:
            tz = _load_z(t_row_ptr, cols, tv, cols < V, cap, False, False, EVICT_PASS1)
            mt, reft, st, _, blkt = _slot_block(tz, blk, mt, reft, st, st, blkt, False)
    if v_full < V:  # the ragged tail, masked
        cols = _slot_cols(v_full, R, SLOT)
        blk = v_full // BLOCK_V
        inb = cols < V
        z = _load_z(row_ptr, cols, sv, inb, cap, SOFTCAP, True, EVICT_PASS1)
        m, ref, s, a, blk_at = _slot_block(z, blk, m, ref, s, a, blk_at, True)
        if HAS_TARGET:
            tz = _load_z(t_row_ptr, cols, tv, inb, cap, False, True, EVICT_PASS1)
            mt, reft, st, _, blkt = _slot_block(tz, blk, mt, reft, st, st, blkt, False)
    big_m, m_ref, big_s, big_a = _slot_merge(m, ref, s, a)
    amax = _slot_argmax(row_ptr, sv, m, big_m, blk_at, V, cap, SOFTCAP, BLOCK_V, R, SLOT)
    log2_s = tl.log2(big_s)
    lse2 = m_ref + log2_s  # NaN after a NaN or +inf logit, -inf when every logit is -inf
    finite = _is_finite(lse2)
    z_label = tl.load(row_ptr + label * sv).to(tl.float32)  # the one label read
    if SOFTCAP:
        z_label = _softcap(z_label, cap)
    log2_p_label = z_label * LOG2E - lse2
    conf = tl.exp2(big_m * LOG2E - lse2)
    ce = -log2_p_label * LN2
    entropy = (log2_s - big_a / big_s) * LN2
    t_amax = tl.zeros([], tl.int32)
    kl = tl.zeros([], tl.float32)
    alpha = tl.zeros([], tl.float32)
    if HAS_TARGET:
        big_mt, mt_ref, big_st, _ = _slot_merge(mt, reft, st, st)
        t_amax = _slot_argmax(t_row_ptr, tv, mt, big_mt, blkt, V, cap, False, BLOCK_V, R, SLOT)
        lse2_t = mt_ref + tl.log2(big_st)
        finite = finite & _is_finite(lse2_t)
        kl, alpha = _kl_alpha_walk(row_ptr, sv, t_row_ptr, tv, V, cap, lse2, lse2_t, finite,
                                   SOFTCAP, BLOCK_V)
    if HAS_GRAD:
        _grad_walk(row_ptr, sv, g_row_ptr, gv, label, V, cap, lse2, g_scale, SOFTCAP, BLOCK_V)
    return finite, amax, conf, tl.exp2(log2_p_label), ce, entropy, t_amax, kl, alpha
