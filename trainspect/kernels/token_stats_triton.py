"""Triton backend of the token-statistics pass: one program per row, one read of the logits.

Design (one program = one row of V logits):

- The label is read first. A row that is not valid (label -1 from ``valid_rows``, or
  anything outside [0, V), checked again here so that no label can ever index out of
  bounds) stores zeros and does nothing else: ignored rows cost one load and a few stores.
- Pass 1 walks the row in blocks of ``BLOCK_V`` contiguous elements: vectorised loads of
  the native dtype, converted to fp32 in registers (the tensor is never cast as a whole);
  full blocks are loaded without a mask, only the ragged tail block is masked.
  Online softmax in base 2: the row max so far m (a scalar), and per lane
  S = sum 2^t and A = sum 2^t t with t = z log2(e) - m log2(e) (one fma, one ex2, one
  add and one fma per element). A block whose max exceeds m (a uniform branch, taken a
  handful of times per row) rescales S and A once and records the block's first index of
  its max; every other block does no max or argmax bookkeeping beyond one block max.
  At the end: lse = (m log2 e + log2 S) ln 2, entropy = (log2 S - A / S) ln 2,
  conf = p(argmax), ce = lse - z_label (the label logit is read once, by a scalar load),
  label_prob = exp(-ce). The per-element work is ~8 ALU ops and one ex2, under the
  H100/H200 read time of a bf16 element. Measured on an H200 (benchmarks/
  token_stats_kernel.py): 1.13x the one-read floor at 32768 x 152064 bf16, 1.19x at
  8192 x 32000, with BLOCK_V = 512 and 2 warps (one 16-byte load per thread per block).
- Ties: within a block the smallest index holding the block max is taken; across blocks
  a later block replaces the argmax only if its max is strictly greater, so the first
  index of the row max wins, as with ``torch.argmax``.
- -inf logits: t is clamped at -1e30 before 2^t, so a -inf logit adds exactly 0 to S and
  0 * (-1e30) = 0 to A (never 0 * -inf = NaN); while the row has seen only -inf the
  reference max is 0, not -inf. A label whose logit is -inf gives ce = +inf and
  label_prob = 0, as ``torch.nn.functional.cross_entropy`` does. The masked tail loads -inf.
- With ``target_logits``, pass 1 also reads the teacher's row in the same loop (its own
  online max and sum, and its argmax). alpha = sum min(p_t, p_s) needs both final
  normalisers, so it cannot finish in one online pass: pass 2 re-reads both rows in the
  same program, now knowing both log-normalisers, and sums min(p_t, p_s) and
  p_t (log p_t - log p_s) (the KL formed per element there is more accurate than the
  one-pass form sum p_t t - lse_t - (sum p_t z - lse_s), which cancels).
  Honest cost: pass 2 re-reads 2 * V * itemsize bytes per row. It walks the blocks in
  reverse so that the most recently read blocks, the likeliest still in L2 (50 MB on an
  H100, 60 MB on an H200), come first, and pass 1 loads with ``evict_last``. When the rows
  in flight (about SMs x programs per SM x 2 x row bytes) outgrow L2, as at V = 152k,
  most of the re-read comes from HBM: budget up to ~2x the one-read time of both tensors
  with a teacher. The student-only pass reads each logit exactly once.

Extra device memory is only the N-length outputs. Triton is imported under a guard, so
this module imports on machines without it (the kernel is then never defined). Triton's
CPU interpreter works only when TRITON_INTERPRET=1 is set before triton is imported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .token_stats import RowStats

try:  # optional dependency: the module must import without it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without triton
    triton = None
    tl = None

__all__ = ["BENCH_CONFIGS", "DEFAULT_CONFIG", "TritonConfig", "row_stats_triton"]

_constexpr = float if tl is None else tl.constexpr  # kernels read globals only as constexpr
LOG2E = _constexpr(1.4426950408889634)  # log2(e): exp(x) = 2^(x log2 e)
LN2 = _constexpr(0.6931471805599453)  # ln(2): from base 2 back to nats
T_FLOOR = _constexpr(-1.0e30)  # 2^t is 0 below this; keeps 0 * (-inf) out of A
NEG_INF = _constexpr(float("-inf"))


@dataclass(frozen=True)
class TritonConfig:
    """Launch configuration of the kernel; the benchmark tries a few."""

    block_v: int = 512
    """Elements of a row per loop step (power of two; capped at next_pow2(V))."""
    num_warps: int = 2
    """Warps per program (one program per row). 512 / (2 x 32) = 8 bf16 per thread, one
    16-byte load: the best of the sweep on an H200 for V = 32000 and 152064."""
    num_stages: int = 2
    """Software-pipelining depth of the loop over the row (1 to 4 timed the same)."""

    def __post_init__(self) -> None:
        if self.block_v < 16 or self.block_v & (self.block_v - 1):
            raise ValueError(f"expected `block_v` to be a power of two >= 16, got {self.block_v}")
        if self.num_warps not in (1, 2, 4, 8, 16, 32):
            raise ValueError(f"expected `num_warps` in 1, 2, 4, 8, 16, 32, got {self.num_warps}")
        if self.num_stages < 1:
            raise ValueError(f"expected `num_stages` >= 1, got {self.num_stages}")


DEFAULT_CONFIG = TritonConfig()
BENCH_CONFIGS = (
    TritonConfig(256, 1, 2),
    TritonConfig(512, 1, 2),
    TritonConfig(512, 2, 2),
    TritonConfig(512, 2, 4),
    TritonConfig(1024, 2, 2),
    TritonConfig(1024, 4, 2),
    TritonConfig(2048, 4, 2),
    TritonConfig(4096, 8, 2),
)


def _jit(fn):
    """``triton.jit`` when triton is installed; the plain function otherwise (never run)."""
    return fn if triton is None else triton.jit(fn)


@_jit
def _online_block(z, cols, m_run, m_ref, s, a, amax, V):
    """Fold one block z (BLOCK_V,) fp32 into the online softmax state of a row.

    m_run: row max so far (scalar; -inf before any finite value); m_ref = m_run * log2(e)
    (0 while m_run is -inf); s, a: per-lane sums of 2^t and 2^t t; amax: argmax so far.
    """
    block_max = tl.max(z, axis=0)
    if block_max > m_run:  # uniform branch: a new row max, a few times per row
        new_ref = block_max * LOG2E
        # (<= 0) moves the old t's to the new reference; nothing to move before a finite max
        shift = tl.where(m_run > NEG_INF, m_ref - new_ref, 0.0)
        scale = tl.exp2(shift)
        a = scale * (a + s * shift)
        s = scale * s
        amax = tl.min(tl.where(z == block_max, cols, V), axis=0)  # first index in the block
        m_run = block_max
        m_ref = new_ref
    # one fma and a clamp: -inf -> T_FLOOR; NaN stays NaN (max.NaN), so a NaN logit
    # makes the row's sum NaN instead of vanishing
    t = tl.maximum(z * LOG2E - m_ref, T_FLOOR, propagate_nan=tl.PropagateNan.ALL)
    e = tl.exp2(t)
    return m_run, m_ref, s + e, a + e * t, amax


@_jit
def _online_block_sum(z, cols, m_run, m_ref, s, amax, V):
    """Like ``_online_block`` without the entropy sum (for the teacher's normaliser)."""
    block_max = tl.max(z, axis=0)
    if block_max > m_run:
        new_ref = block_max * LOG2E
        s = tl.exp2(tl.where(m_run > NEG_INF, m_ref - new_ref, 0.0)) * s
        amax = tl.min(tl.where(z == block_max, cols, V), axis=0)
        m_run = block_max
        m_ref = new_ref
    t = tl.maximum(z * LOG2E - m_ref, T_FLOOR, propagate_nan=tl.PropagateNan.ALL)
    return m_run, m_ref, s + tl.exp2(t), amax


@_jit
def _softcap(x, cap):
    """cap * tanh(x / cap) in fp32, through exp2 (tanh(y) = sign(y) (1 - e) / (1 + e),
    e = exp(-2|y|), no overflow); NaN stays NaN and +-inf become +-cap."""
    y = x / cap
    e = tl.exp2(tl.abs(y) * (-2.0 * LOG2E))
    th = (1.0 - e) / (1.0 + e)
    return cap * tl.where(y < 0.0, -th, th)


@_jit
def _load_z(ptr, cols, stride_col, inb, SOFTCAP: tl.constexpr, cap, MASKED: tl.constexpr,
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
def _grad_block(z, cols, label, lse2, scale, SOFTCAP: tl.constexpr, cap):
    """(softmax(z) - onehot(label)) * dz/dx * scale for one block of a row."""
    g = tl.exp2(z * LOG2E - lse2) - tl.where(cols == label, 1.0, 0.0)
    if SOFTCAP:
        th = z / cap
        g = g * (1.0 - th * th)
    return g * scale


@_jit
def _kl_alpha_block(z, tz, lse2, lse2_t, kl, alpha):
    """Pass 2 terms: p = 2^(z log2 e - lse2), q likewise; kl += q (log2 q - log2 p)."""
    log2_p = z * LOG2E - lse2
    log2_q = tz * LOG2E - lse2_t
    q = tl.exp2(log2_q)
    alpha += tl.minimum(tl.exp2(log2_p), q)
    kl += tl.where(q > 0.0, q * (log2_q - log2_p), 0.0)  # 0 where p_t = 0 (t = -inf)
    return kl, alpha


@_jit
def _token_stats_kernel(
    logits_ptr, labels_ptr, target_ptr, grad_ptr,  # (N, V), (N,) int64, (N, V), (N, V)
    argmax_ptr, conf_ptr, label_prob_ptr, ce_ptr, entropy_ptr, finite_ptr,  # (N,) outputs
    t_argmax_ptr, kl_ptr, alpha_ptr,  # (N,) teacher outputs, or dummies
    scale_ptr, scale, cap,  # gradient scale (a pointer or a float), soft cap
    V, stride_row, stride_col, t_stride_row, t_stride_col, g_stride_row, g_stride_col,
    HAS_TARGET: tl.constexpr, HAS_GRAD: tl.constexpr, SCALE_PTR: tl.constexpr,
    SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr, EVICT_PASS1: tl.constexpr,
):
    """One program per row: see the module docstring for the algorithm."""
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride can pass 2**31
    label = tl.load(labels_ptr + row).to(tl.int64)
    lanes = tl.arange(0, BLOCK_V)
    v_full = (V // BLOCK_V) * BLOCK_V
    g_row_ptr = grad_ptr + row * g_stride_row
    if (label >= 0) & (label < V):
        row_ptr = logits_ptr + row * stride_row
        t_row_ptr = target_ptr + row * t_stride_row
        m_run = tl.full([], NEG_INF, tl.float32)  # row max so far
        m_ref = tl.zeros([], tl.float32)  # m_run * log2(e), 0 while m_run is -inf
        s = tl.zeros([BLOCK_V], tl.float32)  # per lane: sum 2^t
        a = tl.zeros([BLOCK_V], tl.float32)  # per lane: sum 2^t t
        amax = tl.zeros([], tl.int32)
        mt_run = tl.full([], NEG_INF, tl.float32)  # the teacher's, likewise
        mt_ref = tl.zeros([], tl.float32)
        st = tl.zeros([BLOCK_V], tl.float32)
        t_amax = tl.zeros([], tl.int32)
        # ---- pass 1: full blocks without a mask, then the ragged tail with one ----
        for start in range(0, v_full, BLOCK_V):
            cols = start + lanes
            z = _load_z(row_ptr, cols, stride_col, cols < V, SOFTCAP, cap, False, EVICT_PASS1)
            m_run, m_ref, s, a, amax = _online_block(z, cols, m_run, m_ref, s, a, amax, V)
            if HAS_TARGET:
                tz = tl.load(t_row_ptr + cols * t_stride_col, eviction_policy=EVICT_PASS1)
                mt_run, mt_ref, st, t_amax = _online_block_sum(tz.to(tl.float32), cols,
                                                               mt_run, mt_ref, st, t_amax, V)
        if v_full < V:
            cols = v_full + lanes
            inb = cols < V
            z = _load_z(row_ptr, cols, stride_col, inb, SOFTCAP, cap, True, EVICT_PASS1)
            m_run, m_ref, s, a, amax = _online_block(z, cols, m_run, m_ref, s, a, amax, V)
            if HAS_TARGET:
                tz = tl.load(t_row_ptr + cols * t_stride_col, mask=inb, other=NEG_INF)
                mt_run, mt_ref, st, t_amax = _online_block_sum(tz.to(tl.float32), cols,
                                                               mt_run, mt_ref, st, t_amax, V)
        # ---- the row's statistics (base 2 inside, nats out) ----
        big_s = tl.sum(s, axis=0)
        log2_s = tl.log2(big_s)
        lse2 = m_ref + log2_s  # log-normaliser in base 2, against the same reference
        # NaN when the row had a NaN or +inf logit (then m_ref is +inf) or was all -inf
        finite = (lse2 == lse2) & (tl.abs(lse2) < float("inf"))
        z_label = tl.load(row_ptr + label * stride_col).to(tl.float32)  # the one label read
        if SOFTCAP:
            z_label = _softcap(z_label, cap)
        log2_p_label = z_label * LOG2E - lse2  # -inf if its logit is -inf
        tl.store(argmax_ptr + row, amax.to(tl.int64))
        tl.store(conf_ptr + row, tl.exp2(m_run * LOG2E - lse2))
        tl.store(label_prob_ptr + row, tl.exp2(log2_p_label))
        tl.store(ce_ptr + row, -log2_p_label * LN2)
        tl.store(entropy_ptr + row, (log2_s - tl.sum(a, axis=0) / big_s) * LN2)
        if HAS_TARGET:
            lse2_t = mt_ref + tl.log2(tl.sum(st, axis=0))
            finite = finite & (lse2_t == lse2_t) & (tl.abs(lse2_t) < float("inf"))
            # ---- pass 2: both normalisers known; newest blocks first (likeliest in L2) ----
            kl = tl.zeros([BLOCK_V], tl.float32)
            alpha = tl.zeros([BLOCK_V], tl.float32)
            if v_full < V:
                cols = v_full + lanes
                inb = cols < V
                z = _load_z(row_ptr, cols, stride_col, inb, SOFTCAP, cap, True, "")
                tz = tl.load(t_row_ptr + cols * t_stride_col, mask=inb, other=NEG_INF)
                kl, alpha = _kl_alpha_block(z, tz.to(tl.float32), lse2, lse2_t, kl, alpha)
            for start in range(v_full - BLOCK_V, -1, -BLOCK_V):
                cols = start + lanes
                z = _load_z(row_ptr, cols, stride_col, cols < V, SOFTCAP, cap, False,
                            "evict_first")
                tz = tl.load(t_row_ptr + cols * t_stride_col, eviction_policy="evict_first")
                kl, alpha = _kl_alpha_block(z, tz.to(tl.float32), lse2, lse2_t, kl, alpha)
            tl.store(t_argmax_ptr + row, t_amax.to(tl.int64))
            # min() and the q > 0 test would drop a NaN: say NaN when a row is not finite
            tl.store(kl_ptr + row, tl.where(finite, tl.sum(kl, axis=0) * LN2, float("nan")))
            tl.store(alpha_ptr + row, tl.where(finite, tl.sum(alpha, axis=0), float("nan")))
        tl.store(finite_ptr + row, finite.to(tl.int8))
        if HAS_GRAD:
            # ---- gradient pass: re-read the row (after every read above: in place is safe)
            g_scale = tl.load(scale_ptr).to(tl.float32) if SCALE_PTR else scale
            for start in range(0, v_full, BLOCK_V):
                cols = start + lanes
                z = _load_z(row_ptr, cols, stride_col, cols < V, SOFTCAP, cap, False,
                            "evict_first")
                g = _grad_block(z, cols, label, lse2, g_scale, SOFTCAP, cap)
                tl.store(g_row_ptr + cols * g_stride_col, g.to(grad_ptr.dtype.element_ty))
            if v_full < V:
                cols = v_full + lanes
                inb = cols < V
                z = _load_z(row_ptr, cols, stride_col, inb, SOFTCAP, cap, True, "")
                g = _grad_block(z, cols, label, lse2, g_scale, SOFTCAP, cap)
                tl.store(g_row_ptr + cols * g_stride_col, g.to(grad_ptr.dtype.element_ty),
                         mask=inb)
    else:
        # Not valid: zeros, and no read of the row at all.
        tl.store(argmax_ptr + row, tl.zeros([], tl.int64))
        tl.store(conf_ptr + row, 0.0)
        tl.store(label_prob_ptr + row, 0.0)
        tl.store(ce_ptr + row, 0.0)
        tl.store(entropy_ptr + row, 0.0)
        tl.store(finite_ptr + row, tl.zeros([], tl.int8))
        if HAS_TARGET:
            tl.store(t_argmax_ptr + row, tl.zeros([], tl.int64))
            tl.store(kl_ptr + row, 0.0)
            tl.store(alpha_ptr + row, 0.0)
        if HAS_GRAD:
            zeros = tl.zeros([BLOCK_V], tl.float32).to(grad_ptr.dtype.element_ty)
            for start in range(0, V, BLOCK_V):
                cols = start + lanes
                tl.store(g_row_ptr + cols * g_stride_col, zeros, mask=cols < V)


def _block_size(vocab_size: int, config: TritonConfig) -> int:
    """The config's block, shrunk to the smallest power of two >= V (at least 16)."""
    return max(16, min(config.block_v, 1 << (vocab_size - 1).bit_length()))


def row_stats_triton(
    logits: Tensor,
    safe_labels: Tensor,
    valid: Tensor,
    *,
    target_logits: Tensor | None = None,
    grad_out: Tensor | None = None,
    logit_softcap: float | None = None,
    grad_scale: float | Tensor | None = None,
    config: TritonConfig | None = None,
) -> RowStats:
    """Row statistics of ``logits`` (N, V) with the fused Triton kernel.

    ``safe_labels`` (N,) int64 and ``valid`` (N,) bool come from ``token_stats.valid_rows``.
    Any strides are read in place (no copy). Allocates only the N-length outputs and
    never synchronises with the host. Use ``token_stats.row_stats``, which checks the
    arguments; call this directly to pick a ``config``.
    """
    cfg = DEFAULT_CONFIG if config is None else config
    n, vocab = logits.shape
    device = logits.device
    has_target = target_logits is not None

    def f32() -> Tensor:
        return torch.empty(n, dtype=torch.float32, device=device)

    argmax = torch.empty(n, dtype=torch.int64, device=device)
    conf, label_prob, ce, entropy = f32(), f32(), f32(), f32()
    finite = torch.empty(n, dtype=torch.int8, device=device)
    t_argmax = torch.empty(n, dtype=torch.int64, device=device) if has_target else None
    kl = f32() if has_target else None
    alpha = f32() if has_target else None
    if n > 0:
        if triton is None:
            raise ValueError("backend='triton' needs the `triton` package (pip install triton)")
        target = target_logits if has_target else logits  # a dummy pointer without teacher
        grad = grad_out if grad_out is not None else logits
        labels = safe_labels if safe_labels.is_contiguous() else safe_labels.contiguous()
        scale_is_ptr = isinstance(grad_scale, Tensor)
        _token_stats_kernel[(n,)](
            logits, labels, target, grad,
            argmax, conf, label_prob, ce, entropy, finite,
            t_argmax if has_target else argmax, kl if has_target else conf,
            alpha if has_target else conf,
            grad_scale if scale_is_ptr else conf,
            1.0 if grad_scale is None or scale_is_ptr else float(grad_scale),
            1.0 if logit_softcap is None else float(logit_softcap),
            vocab, logits.stride(0), logits.stride(1), target.stride(0), target.stride(1),
            grad.stride(0), grad.stride(1),
            HAS_TARGET=has_target, HAS_GRAD=grad_out is not None, SCALE_PTR=scale_is_ptr,
            SOFTCAP=logit_softcap is not None, BLOCK_V=_block_size(vocab, cfg),
            EVICT_PASS1="evict_last" if has_target or grad_out is not None else "evict_first",
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return RowStats(
        valid=valid, argmax=argmax, conf=conf, label_prob=label_prob, ce=ce,
        entropy=entropy, teacher_argmax=t_argmax, kl=kl, alpha=alpha,
        finite=finite.view(torch.bool),
    )
