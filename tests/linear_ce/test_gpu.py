"""On CUDA (Triton row pass): loss and gradients against float64 for every reduction and
the soft cap, statistics against run.observe, and no host sync in the training step
(forward, backward, statistics, samples, flushes) under the sync debug mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import trainspect as ts
from tests.linear_ce.helpers import assert_close_series, head_batch, stored

pytestmark = pytest.mark.gpu


def rel_err(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("cap", [None, 30.0])
def test_triton_path_matches_float64(dtype, tol, reduction, cap):
    g = torch.Generator(device="cuda").manual_seed(0)
    n, h, v = 3000, 256, 50257
    hidden = (torch.randn(n, h, device="cuda", generator=g)).to(dtype).requires_grad_()
    weight = (torch.randn(v, h, device="cuda", generator=g) / 4).to(dtype).requires_grad_()
    bias = torch.randn(v, device="cuda", generator=g).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,), device="cuda", generator=g)
    labels[::5] = -100
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    z = leaves[0] @ leaves[1].T + leaves[2]
    if cap is not None:
        z = cap * torch.tanh(z / cap)
    ref = F.cross_entropy(z, labels, reduction=reduction)
    upstream = torch.rand(ref.shape, device="cuda", generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, leaves, upstream)
    out = ts.linear_cross_entropy(hidden, weight, labels, bias=bias, reduction=reduction,
                                  logit_softcap=cap, max_chunk_bytes=512 * v * 2)
    assert rel_err(out.detach(), ref.detach()) < tol / 10
    grads = torch.autograd.grad(out, (hidden, weight, bias), upstream.float())
    for got, want in zip(grads, ref_grads):
        assert got.dtype == dtype and rel_err(got, want) < tol


def test_statistics_on_cuda_match_observe(runs):
    def play(name, fused):
        with ts.init(project="lce", name=name, log_every=2, samples_every=2) as run:
            for step in range(1, 5):
                b = {k: v.cuda() for k, v in head_batch(step).items()}
                if fused:
                    ts.linear_cross_entropy(b["hidden"], b["weight"], b["labels"],
                                            bias=b["bias"], run=run, step=step,
                                            input_ids=b["input_ids"])
                else:
                    run.observe(step, b["hidden"] @ b["weight"].T + b["bias"], b["labels"],
                                input_ids=b["input_ids"])

    play("observe", False)
    play("fused", True)
    assert_close_series(stored(runs, "observe"), stored(runs, "fused"), rel=1e-5)


def test_no_host_sync_in_forward_backward_statistics_samples_and_flushes(runs):
    g = torch.Generator(device="cuda").manual_seed(1)
    b, t, h, v = 4, 256, 128, 32000
    hidden = torch.randn(b, t, h, device="cuda", generator=g, requires_grad=True)
    weight = torch.randn(v, h, device="cuda", generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, t), device="cuda", generator=g)
    labels[:, :5] = -100
    ids = torch.randint(0, v, (b, t + 1), device="cuda", generator=g)
    with ts.init(project="lce", log_every=2, samples_every=3, num_samples=2) as run:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step in range(1, 8):  # flush windows end at 2, 4, 6; samples at 1, 3, 6
                for reduction in ("mean", "none"):
                    loss = ts.linear_cross_entropy(hidden, weight, labels, run=run, step=step,
                                                   input_ids=ids, reduction=reduction,
                                                   max_chunk_bytes=100 * v * 4)
                    loss.sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    view = ts.open(runs).runs(project="lce")[0]
    assert [s for s, _ in view.series("text/acc")] == [2, 4, 6, 7]
    assert {row["step"] for row in view.samples()} == {1, 3, 6}  # the first step, then every 3
