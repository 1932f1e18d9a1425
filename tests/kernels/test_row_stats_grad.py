"""The row-statistics core's gradient, soft cap and non-finite rows, on every backend.

The gradient is checked against torch.autograd of F.cross_entropy on float64 logits
(soft cap included), the statistics against the float64 reference of helpers.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.kernels.helpers import (
    FLOAT_FIELDS,
    NEG_INF,
    assert_matches,
    n_rows,
    random_labels,
    random_logits,
    reference,
)
from trainspect.kernels import row_stats

# fp32 gradients against float64: p - onehot is within [-1, 1], so absolute tolerance.
GRAD_ATOL = 2e-6


def autograd_reference(logits, labels, cap=None, ignore_index=-100):
    """d ce_row / d logits in float64 through autograd (0 on rows that are not valid)."""
    x = logits.detach().cpu().double().requires_grad_(True)
    z = x if cap is None else cap * torch.tanh(x / cap)
    v = x.shape[1]
    labels = labels.cpu().long()
    valid = (labels != ignore_index) & (labels >= 0) & (labels < v)
    ce = F.cross_entropy(z, torch.where(valid, labels, 0), reduction="none")
    (ce * valid).sum().backward()
    return x.grad, ce.detach()


def capped(logits, cap):
    """The soft-capped logits in float64: what the statistics are of."""
    x = logits.double()
    return cap * torch.tanh(x / cap)


def call(backend, logits, labels, **kwargs):
    name, device = backend
    to = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    return row_stats(logits.to(device), labels.to(device), backend=name, **to)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("cap", [None, 4.0])
def test_gradient_matches_float64_autograd(backend, gen, dtype, cap):
    n, vocab = n_rows(backend, 12), 1000
    logits = random_logits(gen, n, vocab, dtype)
    labels = random_labels(gen, n, vocab)
    labels[0] = vocab + 7  # out of range: not valid, gradient 0
    name, device = backend
    grad = torch.full((n, vocab), 123.0, dtype=torch.float32, device=device)  # poisoned
    got = call(backend, logits, labels, grad_out=grad, logit_softcap=cap)
    want, ce = autograd_reference(logits, labels, cap)
    torch.testing.assert_close(grad.cpu().double(), want, rtol=0, atol=GRAD_ATOL,
                               msg=lambda m: f"seed {gen.initial_seed()}: {m}")
    assert not grad[0].any()
    valid = got.valid.cpu()
    torch.testing.assert_close(got.ce.cpu().double()[valid], ce[valid], rtol=1e-5, atol=1e-5)
    x = logits if cap is None else capped(logits, cap)
    ref = reference(x, labels)
    assert_matches(got, ref, device, gen.initial_seed())


@pytest.mark.parametrize("grad_dtype", [torch.bfloat16, torch.float32])
def test_gradient_in_place_over_the_logits_with_a_device_scale(backend, gen, grad_dtype):
    n, vocab = n_rows(backend, 8), 777
    name, device = backend
    logits = random_logits(gen, n, vocab, grad_dtype).to(device)
    labels = random_labels(gen, n, vocab, ignore_frac=0.3)
    original = logits.clone()
    scale = torch.tensor(0.25, device=device)  # e.g. 1 / supervised tokens, never read back
    got = row_stats(logits, labels.to(device), grad_out=logits, grad_scale=scale,
                    logit_softcap=30.0, backend=name)
    want, _ = autograd_reference(original, labels, cap=30.0)
    tol = 4e-3 if grad_dtype == torch.bfloat16 else GRAD_ATOL  # stored in bf16
    torch.testing.assert_close(logits.cpu().double(), want * 0.25, rtol=0, atol=tol)
    ref = reference(capped(original, 30.0), labels)
    assert_matches(got, ref, device, gen.initial_seed())


def test_gradient_with_a_strided_grad_out_and_a_float_scale(backend, gen):
    n, vocab = n_rows(backend, 6), 300
    name, device = backend
    logits = random_logits(gen, n, vocab, torch.float32)
    labels = random_labels(gen, n, vocab, ignore_frac=0.0)
    wide = torch.zeros(vocab, n + 3, dtype=torch.float32, device=device)
    grad = wide[:, :n].t()  # column stride n + 3, row stride 1
    call(backend, logits, labels, grad_out=grad, grad_scale=2.0)
    want, _ = autograd_reference(logits, labels)
    torch.testing.assert_close(grad.cpu().double(), 2.0 * want, rtol=0, atol=2 * GRAD_ATOL)
    assert not wide[:, n:].any()  # nothing written outside the view


def test_softcap_with_neg_inf_and_huge_logits(backend, gen):
    n, vocab = n_rows(backend, 5), 500
    logits = random_logits(gen, n, vocab, torch.float32, scale=8.0)
    logits[0, :100] = NEG_INF  # tanh(-inf) = -1: these become -cap, not -inf
    logits[1, 3] = float("inf")  # +inf becomes +cap: finite under a cap
    logits[2, 50] = 1e4  # saturated: z = cap (one per row, so no tie in float32)
    logits[2, 60:70] = -1e4
    labels = random_labels(gen, n, vocab, ignore_frac=0.0)
    name, device = backend
    grad = torch.empty(n, vocab, device=device)
    got = call(backend, logits, labels, grad_out=grad, logit_softcap=10.0)
    assert got.finite.all()
    want, _ = autograd_reference(logits, labels, 10.0)
    torch.testing.assert_close(grad.cpu().double(), want, rtol=0, atol=GRAD_ATOL)
    assert_matches(got, reference(capped(logits, 10.0), labels), device, gen.initial_seed())


def test_nonfinite_rows_are_flagged_and_nan(backend, gen):
    n, vocab = 6, 700
    logits = random_logits(gen, n, vocab, torch.float32)
    labels = random_labels(gen, n, vocab, ignore_frac=0.0)
    logits[0, 5] = float("nan")
    logits[1, 600] = float("inf")
    logits[2] = NEG_INF  # no finite logit at all
    logits[3, 10] = NEG_INF  # an ordinary -inf entry: finite row
    labels[4] = -100
    logits[4, 1] = float("nan")  # not supervised: not counted as non-finite
    name, device = backend
    grad = torch.zeros(n, vocab, device=device)
    got = call(backend, logits, labels, grad_out=grad)
    assert got.finite.cpu().tolist() == [False, False, False, True, False, True]
    assert got.valid.cpu().tolist() == [True] * 4 + [False, True]
    for field in FLOAT_FIELDS:
        value = getattr(got, field).cpu()
        assert value[:3].isnan().all(), field  # as F.cross_entropy: NaN, never plausible
        assert value[3:].isfinite().all(), field
    assert grad[:3].isnan().any(dim=1).all() and grad[3:].isfinite().all()
    ok = torch.tensor([3, 5])
    ref = reference(logits[ok], labels[ok])
    sub = type(got)(**{k: (None if v is None else v[ok.to(v.device)])
                       for k, v in vars(got).items()})
    assert_matches(sub, ref, device, gen.initial_seed())


def test_teacher_nonfinite_rows(backend, gen):
    n, vocab = 3, 400
    logits = random_logits(gen, n, vocab, torch.bfloat16)
    target = random_logits(gen, n, vocab, torch.bfloat16)
    target[1, 7] = float("nan")
    labels = random_labels(gen, n, vocab, ignore_frac=0.0)
    got = call(backend, logits, labels, target_logits=target)
    assert got.finite.cpu().tolist() == [True, False, True]
    assert got.kl[1].isnan() and got.alpha[1].isnan()
    assert got.ce[1].isfinite()  # the student's own statistics stay


def test_bad_gradient_arguments_raise_clear_errors():
    logits = torch.zeros(4, 10)
    labels = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="grad_out"):
        row_stats(logits, labels, grad_out=torch.zeros(4, 11))
    with pytest.raises(TypeError, match="grad_out"):
        row_stats(logits, labels, grad_out=torch.zeros(4, 10, dtype=torch.int32))
    with pytest.raises(ValueError, match="logit_softcap"):
        row_stats(logits, labels, logit_softcap=0.0)
    with pytest.raises(ValueError, match="logit_softcap"):
        row_stats(logits, labels, logit_softcap=float("inf"))
    with pytest.raises(ValueError, match="grad_scale"):
        row_stats(logits, labels, grad_scale=2.0)  # without grad_out
    with pytest.raises(ValueError, match="grad_scale"):
        row_stats(logits, labels, grad_out=torch.zeros(4, 10), grad_scale=torch.ones(2))
    teacher = torch.zeros(4, 10)
    with pytest.raises(ValueError, match="share memory"):
        row_stats(logits, labels, target_logits=teacher, grad_out=teacher)
