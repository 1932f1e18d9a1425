"""Device code of the Triton backend, part 1: the rows (token_stats_triton.py describes
the algorithm; token_stats_tl.py folds the results and holds the kernel).

- `_long_row`: one row of any length, walked in blocks with an online softmax (a uniform
  branch rescales only when the row max grows); a second walk only for a teacher's KL
  and alpha, a last one for the gradient;
- `_short_row`: one row of a short vocabulary held in registers (a power-of-two main
  piece and a small tail, so few lanes are wasted), exact max first, everything from
  registers: one read of the logits even with a gradient or a teacher.

Triton is imported under a guard, so this module imports without it (then nothing here
is compiled or called).
"""

from __future__ import annotations

try:  # optional dependency: the module must import without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

_constexpr = (lambda v: v) if tl is None else tl.constexpr  # kernels read globals as constexpr
LOG2E = _constexpr(1.4426950408889634)  # log2(e): exp(x) = 2^(x log2 e)
LN2 = _constexpr(0.6931471805599453)  # ln(2): from base 2 back to nats
T_FLOOR = _constexpr(-1.0e30)  # 2^t is 0 below this; keeps 0 * (-inf) out of the sums
NEG_INF = _constexpr(float("-inf"))


def _jit(fn):
    """``triton.jit`` when triton is installed; the plain function otherwise (never run)."""
    return fn if triton is None else triton.jit(fn)


# ---- pieces of a row ----------------------------------------------------------------------


@_jit
def _softcap(x, cap):
    """cap * tanh(x / cap) in fp32, through exp2 (tanh(y) = sign(y) (1 - e) / (1 + e),
    e = exp(-2|y|), no overflow); NaN stays NaN and +-inf become +-cap."""
    y = x / cap
    e = tl.exp2(tl.abs(y) * (-2.0 * LOG2E))
    th = (1.0 - e) / (1.0 + e)
    return cap * tl.where(y < 0.0, -th, th)


@_jit
def _load_z(ptr, cols, stride_col, inb, cap, SOFTCAP: tl.constexpr, MASKED: tl.constexpr,
            EVICT: tl.constexpr):
    """A block of logits as fp32 z (soft-capped when SOFTCAP); -inf outside the row."""
    if MASKED:
        x = tl.load(ptr + cols * stride_col, mask=inb, other=NEG_INF).to(tl.float32)
    else:
        x = tl.load(ptr + cols * stride_col, eviction_policy=EVICT).to(tl.float32)
    if SOFTCAP:
        x = _softcap(x, cap)
        if MASKED:
            x = tl.where(inb, x, NEG_INF)
    return x


@_jit
def _online_block(z, cols, m_run, m_ref, s, a, amax, V, ENTROPY: tl.constexpr):
    """Fold one block z (BLOCK_V,) fp32 into the online softmax state of a row.

    m_run: row max so far (scalar; -inf before any finite value); m_ref = m_run * log2(e)
    (0 while m_run is -inf); s, a: per-lane sums of 2^t and (ENTROPY) 2^t t; amax: argmax.
    """
    block_max = tl.max(z, axis=0)
    if block_max > m_run:  # uniform branch: a new row max, a few times per row
        new_ref = block_max * LOG2E
        # (<= 0) moves the old t's to the new reference; nothing to move before a finite max
        shift = tl.where(m_run > NEG_INF, m_ref - new_ref, 0.0)
        scale = tl.exp2(shift)
        if ENTROPY:
            a = scale * (a + s * shift)
        s = scale * s
        amax = tl.min(tl.where(z == block_max, cols, V), axis=0)  # first index in the block
        m_run = block_max
        m_ref = new_ref
    # one fma and ex2: 2^-inf = 0 exactly, and a NaN logit (or +inf, then m_ref is +inf)
    # makes t and e NaN, so the row's sum S is NaN instead of the NaN vanishing. Only the
    # entropy's product is clamped (a plain max), so that 0 * -inf never forms.
    t = z * LOG2E - m_ref
    e = tl.exp2(t)
    if ENTROPY:
        a = a + e * tl.maximum(t, T_FLOOR)
    return m_run, m_ref, s + e, a, amax


@_jit
def _grad_terms(z, cols, label, lse2, scale, cap, SOFTCAP: tl.constexpr):
    """(softmax(z) - onehot(label)) * dz/dx * scale, elementwise."""
    g = tl.exp2(z * LOG2E - lse2) - tl.where(cols == label, 1.0, 0.0)
    if SOFTCAP:
        th = z / cap
        g = g * (1.0 - th * th)
    return g * scale


@_jit
def _kl_alpha_terms(z, tz, lse2, lse2_t):
    """Elementwise KL terms q (log2 q - log2 p) (0 where q = 0) and min(p, q)."""
    log2_p = z * LOG2E - lse2
    log2_q = tz * LOG2E - lse2_t
    q = tl.exp2(log2_q)
    return tl.where(q > 0.0, q * (log2_q - log2_p), 0.0), tl.minimum(tl.exp2(log2_p), q)


@_jit
def _is_finite(x):
    return (x == x) & (tl.abs(x) < float("inf"))


@_jit
def _long_row(
    row_ptr, sv, t_row_ptr, tv, g_row_ptr, gv, label, V, cap, g_scale,
    HAS_TARGET: tl.constexpr, HAS_GRAD: tl.constexpr, SOFTCAP: tl.constexpr,
    BLOCK_V: tl.constexpr, EVICT_PASS1: tl.constexpr,
):
    """Statistics of one valid row of any length (see token_stats_triton.py, "long rows")."""
    lanes = tl.arange(0, BLOCK_V)
    v_full = (V // BLOCK_V) * BLOCK_V
    m_run = tl.full([], NEG_INF, tl.float32)
    m_ref = tl.zeros([], tl.float32)
    s = tl.zeros([BLOCK_V], tl.float32)
    a = tl.zeros([BLOCK_V], tl.float32)
    amax = tl.zeros([], tl.int32)
    mt_run = tl.full([], NEG_INF, tl.float32)
    mt_ref = tl.zeros([], tl.float32)
    st = tl.zeros([BLOCK_V], tl.float32)
    t_amax = tl.zeros([], tl.int32)
    for start in range(0, v_full, BLOCK_V):  # full blocks without a mask
        cols = start + lanes
        z = _load_z(row_ptr, cols, sv, cols < V, cap, SOFTCAP, False, EVICT_PASS1)
        m_run, m_ref, s, a, amax = _online_block(z, cols, m_run, m_ref, s, a, amax, V, True)
        if HAS_TARGET:
            tz = _load_z(t_row_ptr, cols, tv, cols < V, cap, False, False, EVICT_PASS1)
            mt_run, mt_ref, st, _, t_amax = _online_block(tz, cols, mt_run, mt_ref, st, st,
                                                          t_amax, V, False)
    if v_full < V:  # the ragged tail, masked
        cols = v_full + lanes
        inb = cols < V
        z = _load_z(row_ptr, cols, sv, inb, cap, SOFTCAP, True, EVICT_PASS1)
        m_run, m_ref, s, a, amax = _online_block(z, cols, m_run, m_ref, s, a, amax, V, True)
        if HAS_TARGET:
            tz = _load_z(t_row_ptr, cols, tv, inb, cap, False, True, EVICT_PASS1)
            mt_run, mt_ref, st, _, t_amax = _online_block(tz, cols, mt_run, mt_ref, st, st,
                                                          t_amax, V, False)
    big_s = tl.sum(s, axis=0)
    log2_s = tl.log2(big_s)
    lse2 = m_ref + log2_s  # NaN after a NaN or +inf logit, -inf when every logit is -inf
    finite = _is_finite(lse2)
    z_label = tl.load(row_ptr + label * sv).to(tl.float32)  # the one label read
    if SOFTCAP:
        z_label = _softcap(z_label, cap)
    log2_p_label = z_label * LOG2E - lse2
    conf = tl.exp2(m_run * LOG2E - lse2)
    ce = -log2_p_label * LN2
    entropy = (log2_s - tl.sum(a, axis=0) / big_s) * LN2
    kl = tl.zeros([], tl.float32)
    alpha = tl.zeros([], tl.float32)
    if HAS_TARGET:
        lse2_t = mt_ref + tl.log2(tl.sum(st, axis=0))
        finite = finite & _is_finite(lse2_t)
        # second walk: both normalisers known; newest blocks first (likeliest in L2)
        kl_v = tl.zeros([BLOCK_V], tl.float32)
        al_v = tl.zeros([BLOCK_V], tl.float32)
        if v_full < V:
            cols = v_full + lanes
            inb = cols < V
            z = _load_z(row_ptr, cols, sv, inb, cap, SOFTCAP, True, "")
            tz = _load_z(t_row_ptr, cols, tv, inb, cap, False, True, "")
            k_t, a_t = _kl_alpha_terms(z, tz, lse2, lse2_t)
            kl_v += k_t
            al_v += a_t
        for start in range(v_full - BLOCK_V, -1, -BLOCK_V):
            cols = start + lanes
            z = _load_z(row_ptr, cols, sv, cols < V, cap, SOFTCAP, False, "evict_first")
            tz = _load_z(t_row_ptr, cols, tv, cols < V, cap, False, False, "evict_first")
            k_t, a_t = _kl_alpha_terms(z, tz, lse2, lse2_t)
            kl_v += k_t
            al_v += a_t
        # min() and the q > 0 test would drop a NaN: NaN when a row is not finite
        kl = tl.where(finite, tl.sum(kl_v, axis=0) * LN2, float("nan"))
        alpha = tl.where(finite, tl.sum(al_v, axis=0), float("nan"))
    if HAS_GRAD:  # re-read the row after every read above, so in place is safe
        for start in range(0, v_full, BLOCK_V):
            cols = start + lanes
            z = _load_z(row_ptr, cols, sv, cols < V, cap, SOFTCAP, False, "evict_first")
            g = _grad_terms(z, cols, label, lse2, g_scale, cap, SOFTCAP)
            tl.store(g_row_ptr + cols * gv, g.to(g_row_ptr.dtype.element_ty))
        if v_full < V:
            cols = v_full + lanes
            inb = cols < V
            z = _load_z(row_ptr, cols, sv, inb, cap, SOFTCAP, True, "")
            g = _grad_terms(z, cols, label, lse2, g_scale, cap, SOFTCAP)
            tl.store(g_row_ptr + cols * gv, g.to(g_row_ptr.dtype.element_ty), mask=inb)
    return finite, amax, conf, tl.exp2(log2_p_label), ce, entropy, t_amax, kl, alpha


@_jit
def _zero_row(g_row_ptr, gv, V, BLOCK_V: tl.constexpr):
    """The gradient of a row that is not valid: zeros."""
    lanes = tl.arange(0, BLOCK_V)
    zeros = tl.zeros([BLOCK_V], tl.float32).to(g_row_ptr.dtype.element_ty)
    for start in range(0, V, BLOCK_V):
        cols = start + lanes
        tl.store(g_row_ptr + cols * gv, zeros, mask=cols < V)


@_jit
def _piece_sums(z, m_ref, cols, label):
    """Sum 2^t, sum 2^t t (t = z log2 e - m_ref; NaN kept in the first, t clamped in the
    second so that 0 * -inf never forms) and z_label of a piece."""
    t = z * LOG2E - m_ref
    e = tl.exp2(t)
    return (tl.sum(e, axis=0), tl.sum(e * tl.maximum(t, T_FLOOR), axis=0),
            tl.sum(tl.where(cols == label, z, 0.0), axis=0))


@_jit
def _piece_max(z, cols, V):
    """Max of a piece and the first column holding it (V when none)."""
    m = tl.max(z, axis=0)
    return m, tl.min(tl.where(z == m, cols, V), axis=0)


@_jit
def _short_row(
    row_ptr, sv, t_row_ptr, tv, g_row_ptr, gv, label, V, cap, g_scale,
    HAS_TARGET: tl.constexpr, HAS_GRAD: tl.constexpr, SOFTCAP: tl.constexpr,
    VM: tl.constexpr, VT: tl.constexpr,
):
    """Statistics of one valid row of V <= VM + VT logits held in registers: a main piece
    of VM (a power of two <= V) and a tail of VT (0: none). The exact max first, then
    every sum, the teacher's KL and alpha and the gradient from registers: one read."""
    cols = tl.arange(0, VM)
    z = _load_z(row_ptr, cols, sv, cols < V, cap, SOFTCAP, False, "evict_first")
    m, amax = _piece_max(z, cols, V)
    if VT > 0:
        tcols = VM + tl.arange(0, VT)
        inb = tcols < V
        zt = _load_z(row_ptr, tcols, sv, inb, cap, SOFTCAP, True, "")
        m_t, amax_t = _piece_max(zt, tcols, V)
        amax = tl.where(m_t > m, amax_t, amax)  # ties: the main piece's index comes first
        m = tl.maximum(m, m_t)
    m_ref = tl.where(m > NEG_INF, m * LOG2E, 0.0)
    s, a, z_label = _piece_sums(z, m_ref, cols, label)
    if VT > 0:
        s_t, a_t, zl_t = _piece_sums(zt, m_ref, tcols, label)
        s += s_t
        a += a_t
        z_label += zl_t
    log2_s = tl.log2(s)
    lse2 = m_ref + log2_s
    finite = _is_finite(lse2)
    log2_p_label = z_label * LOG2E - lse2
    kl = tl.zeros([], tl.float32)
    alpha = tl.zeros([], tl.float32)
    t_amax = tl.zeros([], tl.int32)
    if HAS_TARGET:
        tz = _load_z(t_row_ptr, cols, tv, cols < V, cap, False, False, "evict_first")
        mt, t_amax = _piece_max(tz, cols, V)
        if VT > 0:
            tzt = _load_z(t_row_ptr, tcols, tv, inb, cap, False, True, "")
            mt_t, t_amax_t = _piece_max(tzt, tcols, V)
            t_amax = tl.where(mt_t > mt, t_amax_t, t_amax)
            mt = tl.maximum(mt, mt_t)
        mt_ref = tl.where(mt > NEG_INF, mt * LOG2E, 0.0)
        st, _, _ = _piece_sums(tz, mt_ref, cols, label)
        if VT > 0:
            st_t, _, _ = _piece_sums(tzt, mt_ref, tcols, label)
            st += st_t
        lse2_t = mt_ref + tl.log2(st)
        finite = finite & _is_finite(lse2_t)
        k_v, a_v = _kl_alpha_terms(z, tz, lse2, lse2_t)
        kl = tl.sum(k_v, axis=0)
        alpha = tl.sum(a_v, axis=0)
        if VT > 0:
            k_v, a_v = _kl_alpha_terms(zt, tzt, lse2, lse2_t)
            kl += tl.sum(k_v, axis=0)
            alpha += tl.sum(a_v, axis=0)
        # min() and the q > 0 test would drop a NaN: NaN when a row is not finite
        kl = tl.where(finite, kl * LN2, float("nan"))
        alpha = tl.where(finite, alpha, float("nan"))
    if HAS_GRAD:  # from registers: the row is not read again
        g = _grad_terms(z, cols, label, lse2, g_scale, cap, SOFTCAP)
        tl.store(g_row_ptr + cols * gv, g.to(g_row_ptr.dtype.element_ty))
        if VT > 0:
            g = _grad_terms(zt, tcols, label, lse2, g_scale, cap, SOFTCAP)
            tl.store(g_row_ptr + tcols * gv, g.to(g_row_ptr.dtype.element_ty), mask=inb)
    return (finite, amax, tl.exp2(m * LOG2E - lse2), tl.exp2(log2_p_label),
            -log2_p_label * LN2, (log2_s - a / s) * LN2, t_amax, kl, alpha)
