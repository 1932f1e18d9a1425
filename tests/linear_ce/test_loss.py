"""The fused linear cross-entropy's loss and gradients against float64 autograd of
F.cross_entropy(hidden @ W.T + b) on the materialised logits, and its memory bound."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import trainspect as ts
from trainspect.errors import TrainspectError
from trainspect.kernels.linear_ce import chunk_rows, fused_linear_ce

N, H, V = 203, 24, 61  # N not a multiple of any chunk size used below


def reference(hidden, weight, bias, labels, reduction, cap):
    """float64 autograd on the full logits."""
    h = hidden.detach().double().requires_grad_()
    w = weight.detach().double().requires_grad_()
    b = None if bias is None else bias.detach().double().requires_grad_()
    z = h @ w.T + (0 if b is None else b)
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    return F.cross_entropy(z, labels, reduction=reduction), (h, w, b)


def data(seed, dtype=torch.float32, with_bias=True, ignored=0.3):
    g = torch.Generator().manual_seed(seed)
    hidden = (torch.randn(N, H, generator=g) * 2).to(dtype).requires_grad_()
    weight = torch.randn(V, H, generator=g).to(dtype).requires_grad_()
    bias = torch.randn(V, generator=g).to(dtype).requires_grad_() if with_bias else None
    labels = torch.randint(0, V, (N,), generator=g)
    labels[torch.rand(N, generator=g) < ignored] = -100
    return hidden, weight, bias, labels


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("cap", [None, 4.0])
@pytest.mark.parametrize("with_bias", [True, False])
def test_loss_and_gradients_match_float64(reduction, cap, with_bias):
    hidden, weight, bias, labels = data(1, with_bias=with_bias)
    ref, leaves = reference(hidden, weight, bias, labels, reduction, cap)
    out = ts.linear_cross_entropy(hidden, weight, labels, bias=bias, reduction=reduction,
                                  logit_softcap=cap, max_chunk_bytes=40 * V * 4)  # 6 chunks
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out.detach(), ref.detach()) < 1e-6
    upstream = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7)).double()
    ref_grads = torch.autograd.grad(ref, [t for t in leaves if t is not None], upstream)
    ours = torch.autograd.grad(out, [t for t in (hidden, weight, bias) if t is not None],
                               upstream.float())
    for got, want in zip(ours, ref_grads):
        assert got.dtype == torch.float32
        assert rel_err(got, want) < 1e-5


def test_ignore_index_other_than_minus_100_and_out_of_range_labels():
    hidden, weight, bias, labels = data(2)
    labels = torch.where(labels == -100, torch.full_like(labels, 7), labels)  # 7 is ignored
    ref = F.cross_entropy((hidden @ weight.T + bias).double(), labels, ignore_index=7)
    out = ts.linear_cross_entropy(hidden, weight, labels, bias=bias, ignore_index=7)
    assert abs(float(out) - float(ref)) < 1e-5 * abs(float(ref))
    # a label >= V is not supervised (F.cross_entropy would assert): it adds nothing
    bad = labels.clone()
    bad[0] = V + 3
    kept = labels.clone()
    kept[0] = 7
    assert torch.equal(ts.linear_cross_entropy(hidden, weight, bad, bias=bias, ignore_index=7,
                                               reduction="sum"),
                       ts.linear_cross_entropy(hidden, weight, kept, bias=bias, ignore_index=7,
                                               reduction="sum"))


def test_all_ignored_mean_is_nan_like_f_cross_entropy_and_sum_is_zero():
    hidden, weight, bias, labels = data(3)
    labels = torch.full_like(labels, -100)
    assert torch.isnan(F.cross_entropy(hidden @ weight.T + bias, labels))
    assert torch.isnan(ts.linear_cross_entropy(hidden, weight, labels, bias=bias))
    total = ts.linear_cross_entropy(hidden, weight, labels, bias=bias, reduction="sum")
    total.backward()
    assert float(total) == 0.0 and float(hidden.grad.abs().sum()) == 0.0


def test_bf16_inputs_match_float64_to_bf16_tolerance():
    hidden, weight, bias, labels = data(4, dtype=torch.bfloat16)
    ref, leaves = reference(hidden, weight, bias, labels, "mean", None)
    out = ts.linear_cross_entropy(hidden, weight, labels, bias=bias, max_chunk_bytes=50 * V * 2)
    assert rel_err(out.detach(), ref.detach()) < 1e-2
    ref_grads = torch.autograd.grad(ref, leaves)
    out.backward()
    for got, want in zip((hidden.grad, weight.grad, bias.grad), ref_grads):
        assert got.dtype == torch.bfloat16
        assert rel_err(got, want) < 2e-2


def test_under_autocast_grads_come_back_in_the_parameters_dtype():
    hidden, weight, bias, labels = data(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ts.linear_cross_entropy(hidden, weight, labels, bias=bias)
    out.backward()
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32
    ref, leaves = reference(hidden, weight, bias, labels, "mean", None)
    assert rel_err(out.detach(), ref.detach()) < 1e-2
    assert rel_err(weight.grad, torch.autograd.grad(ref, leaves[1])[0]) < 3e-2


def test_frozen_head_gets_no_gradient_and_no_grad_mode_builds_no_graph():
    hidden, weight, bias, labels = data(6)
    weight.requires_grad_(False)
    out = ts.linear_cross_entropy(hidden, weight, labels)
    out.backward()
    assert weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        assert not ts.linear_cross_entropy(hidden, weight, labels).requires_grad


def test_a_second_backward_through_the_same_graph_raises_instead_of_doubling():
    hidden, weight, bias, labels = data(7)
    out = ts.linear_cross_entropy(hidden, weight, labels, bias=bias)
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.backward()


def test_bad_arguments_raise_one_error_naming_the_argument():
    hidden, weight, bias, labels = data(8)
    with pytest.raises(TrainspectError, match="`labels`"):
        ts.linear_cross_entropy(hidden, weight, labels[:-1])
    with pytest.raises(TrainspectError, match="`weight`"):
        ts.linear_cross_entropy(hidden, weight[:, :-1], labels)
    with pytest.raises(TrainspectError, match="`reduction`"):
        ts.linear_cross_entropy(hidden, weight, labels, reduction="avg")
    with pytest.raises(TrainspectError, match="`logit_softcap`"):
        ts.linear_cross_entropy(hidden, weight, labels, logit_softcap=-1.0)
    with pytest.raises(TrainspectError, match="`bias`"):
        ts.linear_cross_entropy(hidden, weight, labels, bias=bias[:3])


def test_chunk_rows_bound_the_logits_buffer():
    # the default: Liger's bound (N x H elements), at least 256 rows (CUDA), at most 256 MiB
    assert chunk_rows(8192, 152064, 4096, 2) == 256  # 64 MiB / (152064 x 2 B) = 220: floor 256
    assert chunk_rows(32768, 256000, 4096, 2) * 256000 * 2 <= 256 * 2**20
    assert chunk_rows(100, 256000, 4096, 2) == 100
    assert chunk_rows(8192, 152064, 4096, 2, device_type="cpu") == 192  # 64 MiB: floor 128
    assert chunk_rows(4096, 32000, 512, 4, device_type="cpu") == 256  # 32 MiB floor
    assert chunk_rows(32768, 152064, 4096, 2) == 832  # 256 MiB / (152064 x 2 B), down to x64
    assert chunk_rows(10**6, 10**6, 64, 4, max_chunk_bytes=10 * 4 * 10**6) == 10
    assert chunk_rows(10**6, 10**6, 64, 4, max_chunk_bytes=1) == 1
    with pytest.raises(ValueError, match="max_chunk_bytes"):
        chunk_rows(10, 10, 10, 4, max_chunk_bytes=0)


def test_no_n_by_v_tensor_is_ever_allocated():
    """No single allocation of the forward and backward, as the profiler sees them, is
    larger than the chunk bound: far below the [N, V] logits."""
    from torch.profiler import ProfilerActivity, profile

    n, h, v = 2048, 64, 4096  # fp32 logits: 32 MiB
    g = torch.Generator().manual_seed(9)
    hidden = torch.randn(n, h, generator=g, requires_grad=True)
    weight = torch.randn(v, h, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (n,), generator=g)
    logits_bytes = n * v * 4
    bound = logits_bytes // 32
    for reduction in ("mean", "none"):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            loss = fused_linear_ce(hidden, weight, labels, reduction=reduction,
                                   max_chunk_bytes=bound)
            loss.sum().backward()
        largest = max(e.self_cpu_memory_usage for e in prof.events())
        assert 0.5 * bound <= largest <= max(bound, v * h * 4), (reduction, largest)


def test_the_export_is_lazy_importing_trainspect_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys, trainspect as ts; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert callable(ts.linear_cross_entropy)")
    subprocess.run([sys.executable, "-c", code], check=True)
