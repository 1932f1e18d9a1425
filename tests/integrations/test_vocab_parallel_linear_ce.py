"""`ts.linear_cross_entropy` with a vocab-sharded LM head: on two gloo ranks the loss and
the gradients (hidden: the whole one on every rank; weight and bias: each rank's rows)
are the float64 reference's, and the run stores what one process stores with the whole
head (token statistics, calibration, samples), for plain row shards and a DTensor
placed Shard(0); "mean", "sum" and "none"."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

import trainspect as ts
from tests.integrations.ranks import run_ranks
from tests.integrations.test_vocab_parallel import (
    check_same_samples,
    check_same_series,
    float64_stats,
)

V, H, B, T = 13, 8, 3, 7  # vocabulary (odd: uneven shards), width, batch, sequence
SPLIT = 6  # plain shards: rows [0, 6) of the head on rank 0, [6, 13) on rank 1
STEPS = 4
LOG_EVERY = 2


def head() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return torch.randn(V, H, generator=g), torch.randn(V, generator=g) * 0.5


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, hidden, labels) of `step`: labels are the next ids, -100 on a prompt."""
    g = torch.Generator().manual_seed(200 + step)
    ids = torch.randint(0, V, (B, T + 1), generator=g)
    hidden = torch.randn(B, T, H, generator=g) * 1.5
    labels = ids[:, 1:].clone()
    labels[:, :2] = -100
    labels[1, 3], labels[1, 4] = 0, V - 1  # the first and the last shard's ends
    return ids, hidden, labels


def reference(hidden: torch.Tensor, labels: torch.Tensor, reduction: str) -> tuple:
    """The float64 loss and its gradients for hidden, weight and bias."""
    w, b = (t.double().requires_grad_() for t in head())
    h = hidden.double().requires_grad_()
    loss = F.cross_entropy((h @ w.T + b).reshape(-1, V), labels.reshape(-1),
                           reduction=reduction)
    grads = torch.autograd.grad(loss.sum(), (h, w, b))
    return (loss.detach().reshape(labels.shape) if reduction == "none" else loss.detach(),
            *grads)


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """float32 against float64: 1e-5 relative to the tensor's scale."""
    scale = float(want.abs().max()) or 1.0
    assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-5 * scale), (
        what, float((got.double() - want).abs().max()))


def play(rank: int, world: int, name: str, layout: str) -> None:
    weight, bias = head()
    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",)) if layout == "dtensor" \
        else None
    rows = slice(0, V) if layout == "single" else (slice(0, SPLIT) if rank == 0
                                                    else slice(SPLIT, V))
    if layout == "dtensor":
        w = distribute_tensor(weight, mesh, [Shard(0)]).requires_grad_()
        b = distribute_tensor(bias, mesh, [Shard(0)]).requires_grad_()
        rows = slice(0, 7) if rank == 0 else slice(7, V)  # ceil(13 / 2) rows on rank 0
        shard = {}
    else:
        w = weight[rows].clone().requires_grad_()
        b = bias[rows].clone().requires_grad_()
        shard = {} if layout == "single" else {"vocab_start": rows.start, "vocab_size": V}
    with ts.init(project="vocab_lce", name=name, log_every=LOG_EVERY, samples_every=3,
                 num_samples=2) as run:
        for step in range(1, STEPS + 1):
            ids, hidden, labels = batch(step)
            reduction = ("mean", "sum", "none", "mean")[step - 1]
            h = hidden.clone().requires_grad_()
            loss = ts.linear_cross_entropy(h, w, labels, bias=b, reduction=reduction, run=run,
                                           step=step, input_ids=ids, max_chunk_bytes=8 * V * 4,
                                           **shard)
            loss.sum().backward()
            want_loss, want_h, want_w, want_b = reference(hidden, labels, reduction)
            close(loss.detach(), want_loss, ("loss", reduction))
            close(h.grad, want_h, ("grad hidden", reduction))
            grad_w = w.grad.to_local() if layout == "dtensor" else w.grad
            grad_b = b.grad.to_local() if layout == "dtensor" else b.grad
            close(grad_w, want_w[rows], ("grad weight", reduction))
            close(grad_b, want_b[rows], ("grad bias", reduction))
            w.grad = b.grad = None


def _views(runs) -> dict:
    return {view.name: view for view in ts.open(runs).runs(project="vocab_lce")}


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    runs = tmp_path_factory.mktemp("vocab_lce") / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TRAINSPECT_DIR", str(runs))
        play(0, 1, "single", "single")
    view = _views(runs)["single"]
    weight, bias = head()
    for end in range(LOG_EVERY, STEPS + 1, LOG_EVERY):  # the one-process run itself
        steps = range(end - LOG_EVERY + 1, end + 1)
        logits = torch.cat([(batch(s)[1].double() @ weight.double().T + bias).reshape(-1, V)
                            for s in steps])
        want = float64_stats(logits, torch.cat([batch(s)[2].reshape(-1) for s in steps]))
        for stat, value in want.items():
            assert dict(view.series(f"text/{stat}"))[end] == pytest.approx(
                value, rel=1e-5, abs=1e-9), (stat, end)
    return view


@pytest.mark.parametrize("layout", ["plain", "dtensor"])
def test_a_vocab_sharded_head_gives_the_one_process_loss_gradients_and_statistics(
        runs, single, layout):
    run_ranks(play, layout, layout, timeout=90)
    view = _views(runs)[layout]
    check_same_series(view, single, ("text/calibration",))
    check_same_samples(view, single, (3,))


def test_a_bad_vocab_start_for_the_head_is_one_error_naming_it():
    weight, bias = head()
    _, hidden, labels = batch(1)
    with pytest.raises(ts.TrainspectError, match="expected `vocab_start` to be an int in"):
        ts.linear_cross_entropy(hidden, weight[:SPLIT], labels, vocab_start=9, vocab_size=V)
    with pytest.raises(ts.TrainspectError, match="`vocab_size` is missing"):
        ts.linear_cross_entropy(hidden, weight[:SPLIT], labels, vocab_start=0)
    with pytest.raises(ts.TrainspectError, match="`target_logits` with a vocab-sharded head"):
        ts.linear_cross_entropy(hidden, weight[:SPLIT], labels, vocab_start=0, vocab_size=V,
                                target_logits=torch.zeros(B, T, V), run=None)
