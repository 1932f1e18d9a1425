"""Device code of the Triton backend, part 1c: short rows a tile at a time
(token_stats_triton.py describes the algorithm; token_rows_tl.py holds one row at a time).

`_tile_rows` takes RB consecutive rows of V <= VM + VT logits (``TritonConfig.short_rows``)
as one (RB, VM) register tile plus an (RB, VT) tail: every reduction runs along the rows
at once, so a program has RB rows' loads in flight and pays each reduction's latency
once per tile instead of once per row (a short row is mostly that latency). The maths
is `_short_row`'s, row by row: the exact max first (the first index on ties), then every
sum, the teacher's KL and alpha from registers; rows that are not valid are not read
(masked loads) and store zeros, as one row at a time. No gradient here: with
``grad_out`` short rows go one at a time.
"""

from __future__ import annotations

from .token_rows_tl import (
    LN2,
    LOG2E,
    NEG_INF,
    T_FLOOR,
    _is_finite,
    _jit,
    _kl_alpha_terms,
    _softcap,
    _store_rows,
    tl,
)

__all__ = ["_tile_rows"]


@_jit
def _tile_load(rows_ptr, cols, sv, ok, cap, SOFTCAP: tl.constexpr):
    """(RB, C) logits of the rows at ``rows_ptr`` (RB,) as fp32 (soft-capped when SOFTCAP);
    -inf where not ``ok``."""
    x = tl.load(rows_ptr[:, None] + cols[None, :] * sv, mask=ok, other=NEG_INF).to(tl.float32)
    if SOFTCAP:
        x = tl.where(ok, _softcap(x, cap), NEG_INF)
    return x


@_jit
def _tile_max(z, cols, V):
    """Per row: the max of a piece and the first column holding it (V when none)."""
    m = tl.max(z, axis=1)
    return m, tl.min(tl.where(z == m[:, None], cols[None, :], V), axis=1)


@_jit
def _tile_sums(z, m_ref, cols, label):
    """Per row: sum 2^t, sum 2^t t (t clamped, as `_piece_sums`) and z_label of a piece."""
    t = z * LOG2E - m_ref[:, None]
    e = tl.exp2(t)
    return (tl.sum(e, axis=1), tl.sum(e * tl.maximum(t, T_FLOOR), axis=1),
            tl.sum(tl.where(cols[None, :] == label[:, None], z, 0.0), axis=1))


@_jit
def _tile_kl_alpha(z, tz, lse2, lse2_t):
    """Per row: sum of the KL terms (log2) and of min(p, q) over a piece."""
    k_v, a_v = _kl_alpha_terms(z, tz, lse2[:, None], lse2_t[:, None])
    return tl.sum(k_v, axis=1), tl.sum(a_v, axis=1)


@_jit
def _tile_rows(
    r0, n_rows, x_ptr, lab_ptr, mask_ptr, t_ptr,
    valid_out, finite_out, argmax_out, t_argmax_out,
    flags_out, conf_out, lp_out, ce_out, ent_out, kl_out, alpha_out,
    cap, G, D1, D2, V, ignore_index,
    xs0, xs1, xs2, xsg, xsv, ls0, ls1, ls2, lsg, ms0, ms1, ms2, msg,
    ts0, ts1, ts2, tsg, tsv,
    HAS_MASK: tl.constexpr, HAS_TARGET: tl.constexpr, SOFTCAP: tl.constexpr,
    STORE_ROWS: tl.constexpr, FOLD: tl.constexpr, VM: tl.constexpr, VT: tl.constexpr,
    RB: tl.constexpr,
):
    """Rows r0 .. r0 + RB - 1 (those < n_rows): statistics and/or fold records."""
    r = r0 + tl.arange(0, RB)
    live = r < n_rows
    tok = r // G
    g = (r - tok * G).to(tl.int64)
    i2 = (tok % D2).to(tl.int64)
    i1 = ((tok // D2) % D1).to(tl.int64)
    i0 = (tok // D2 // D1).to(tl.int64)
    label = tl.load(lab_ptr + i0 * ls0 + i1 * ls1 + i2 * ls2 + g * lsg, mask=live,
                    other=0).to(tl.int64)
    keep = live
    if HAS_MASK:
        keep = live & (tl.load(mask_ptr + i0 * ms0 + i1 * ms1 + i2 * ms2 + g * msg, mask=live,
                               other=0) != 0)
    in_range = (label >= 0) & (label < V)
    valid = keep & in_range & (label != ignore_index)
    bad = keep & ~in_range & (label != ignore_index)
    x_rows = x_ptr + (i0 * xs0 + i1 * xs1 + i2 * xs2 + g * xsg)
    cols = tl.arange(0, VM)
    ok = valid[:, None] & (cols < V)[None, :]
    z = _tile_load(x_rows, cols, xsv, ok, cap, SOFTCAP)
    m, amax = _tile_max(z, cols, V)
    if VT > 0:
        tcols = VM + tl.arange(0, VT)
        ok_t = valid[:, None] & (tcols < V)[None, :]
        zt = _tile_load(x_rows, tcols, xsv, ok_t, cap, SOFTCAP)
        m_t, amax_t = _tile_max(zt, tcols, V)
        amax = tl.where(m_t > m, amax_t, amax)  # ties: the main piece's index comes first
        m = tl.maximum(m, m_t)
    m_ref = tl.where(m > NEG_INF, m * LOG2E, 0.0)
    s, a, z_label = _tile_sums(z, m_ref, cols, label)
    if VT > 0:
        s_t, a_t, zl_t = _tile_sums(zt, m_ref, tcols, label)
        s += s_t
        a += a_t
        z_label += zl_t
    log2_s = tl.log2(s)
    lse2 = m_ref + log2_s
    finite = valid & _is_finite(lse2)
    log2_p_label = z_label * LOG2E - lse2
    kl = tl.zeros([RB], tl.float32)
    alpha = tl.zeros([RB], tl.float32)
    t_amax = tl.zeros([RB], tl.int32)
    if HAS_TARGET:
        t_rows = t_ptr + (i0 * ts0 + i1 * ts1 + i2 * ts2 + g * tsg)
        tz = _tile_load(t_rows, cols, tsv, ok, cap, False)
        mt, t_amax = _tile_max(tz, cols, V)
        if VT > 0:
            tzt = _tile_load(t_rows, tcols, tsv, ok_t, cap, False)
            mt_t, t_amax_t = _tile_max(tzt, tcols, V)
            t_amax = tl.where(mt_t > mt, t_amax_t, t_amax)
            mt = tl.maximum(mt, mt_t)
        mt_ref = tl.where(mt > NEG_INF, mt * LOG2E, 0.0)
        st, _, _ = _tile_sums(tz, mt_ref, cols, label)
        if VT > 0:
            st_t, _, _ = _tile_sums(tzt, mt_ref, tcols, label)
            st += st_t
        lse2_t = mt_ref + tl.log2(st)
        finite = finite & _is_finite(lse2_t)
        kl, alpha = _tile_kl_alpha(z, tz, lse2, lse2_t)
        if VT > 0:
            kl_t, alpha_t = _tile_kl_alpha(zt, tzt, lse2, lse2_t)
            kl += kl_t
            alpha += alpha_t
        # min() and the q > 0 test would drop a NaN: NaN when a row is not finite
        kl = tl.where(valid, tl.where(finite, kl * LN2, float("nan")), 0.0)
        alpha = tl.where(valid, tl.where(finite, alpha, float("nan")), 0.0)
        t_amax = tl.where(valid, t_amax, 0)
    _store_rows(r.to(tl.int64), live, valid, finite, bad, label, tl.where(valid, amax, 0),
                t_amax, tl.where(valid, tl.exp2(m * LOG2E - lse2), 0.0),
                tl.where(valid, tl.exp2(log2_p_label), 0.0),
                tl.where(valid, -log2_p_label * LN2, 0.0),
                tl.where(valid, (log2_s - a / s) * LN2, 0.0), kl, alpha,
                valid_out, finite_out, argmax_out, t_argmax_out, flags_out, conf_out, lp_out,
                ce_out, ent_out, kl_out, alpha_out, HAS_TARGET, STORE_ROWS, FOLD)
