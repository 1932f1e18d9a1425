"""Hidden-state statistics against numpy float64 on the captured outputs; a NaN burst
names the first module in forward order; gradient checkpointing is not double counted;
module selection by name; fixed-size state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import trainspect as ts
from trainspect.probes.hidden import STEP_CAP, decode_offence
from trainspect.probes.watch import watch

WIDTH = 8


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.poison = False  # plants a NaN burst in this layer's output

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = h + torch.tanh(self.proj(h)) * 3.0
        if self.poison:
            out = out.clone()
            out[0, 1, 2] = float("nan")
        return out


class Toy(nn.Module):
    def __init__(self, layers: int = 4, checkpointed: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(3, WIDTH)
        self.layers = nn.ModuleList(Layer() for _ in range(layers))
        self.checkpointed = checkpointed
        self.skip: set[int] = set()  # layers that do not run (their outputs are not seen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        h = self.embed(x)
        for i, layer in enumerate(self.layers):
            if i in self.skip:
                continue
            h = checkpoint(layer, h, use_reentrant=False) if self.checkpointed else layer(h)
        return h


def capture(model: Toy) -> tuple[dict[int, list[np.ndarray]], list]:
    """Our own hooks: every layer output as float64 numpy, outside the backward."""
    seen: dict[int, list[np.ndarray]] = {i: [] for i in range(len(model.layers))}
    handles = []
    for i, layer in enumerate(model.layers):
        def hook(module, args, out, i=i):
            if torch._C._current_graph_task_id() == -1:
                seen[i].append(out.detach().double().numpy().copy())
        handles.append(layer.register_forward_hook(hook))
    return seen, handles


def loop(run, model, steps, micro=1, poison_at=None, poison_layer=2, whole=False):
    """`whole`: checkpoint the entire model call, so even the root is recomputed."""
    from torch.utils.checkpoint import checkpoint

    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(1, steps + 1):
        run.log({"tick": float(step)}, step=step)
        model.layers[poison_layer].poison = step == poison_at
        for _ in range(micro):
            x = torch.randn(2, 5, 3, generator=gen)
            out = checkpoint(model, x, use_reentrant=False) if whole else model(x)
            out.square().mean().backward()
        opt.zero_grad()


def test_statistics_match_numpy_over_the_sampled_forwards(runs):
    model = Toy()
    run = ts.init(project="p", log_every=5)
    watch(run, model)
    seen, handles = capture(model)
    loop(run, model, 2, micro=2)  # step 1 is sampled (both micro-batches); step 2 is not
    run.finish()
    view = ts.open(runs).run(run.id)
    for i in range(4):
        x = np.concatenate([a.ravel() for a in seen[i][:2]])  # the two forwards of step 1
        key = f"hidden/layers.{i}"
        assert view.series(f"{key}/mean") == [(2, pytest.approx(x.mean(), rel=1e-5))]
        assert view.series(f"{key}/std") == [(2, pytest.approx(x.std(), rel=1e-5))]
        assert view.series(f"{key}/absmax") == [(2, pytest.approx(np.abs(x).max(), rel=1e-6))]
        assert view.series(f"{key}/nonfinite") == [(2, 0.0)]
    assert view.alerts() == []
    for h in handles:
        h.remove()


def test_a_nan_burst_names_the_first_module_in_forward_order(runs):
    model = Toy()
    run = ts.init(project="p", log_every=5)
    watch(run, model)  # default: finiteness checked on every forward
    loop(run, model, 10, poison_at=7)  # not a sampled step (those are 1 and 6)
    run.finish()
    view = ts.open(runs).run(run.id)
    alerts = [a for a in view.alerts() if a["rule"] == "hidden.nonfinite"]
    assert [(a["step"], a["level"], a["state"]) for a in alerts] == [(10, "critical", "fired")]
    assert "`layers.2` (module 3 of 4 in forward order)" in alerts[0]["message"]
    assert "at step 7" in alerts[0]["message"]
    assert "layers.3" not in alerts[0]["message"]  # downstream of the origin


def test_a_module_that_does_not_run_does_not_shift_the_names(runs):
    model = Toy()
    model.skip = {1}
    run = ts.init(project="p", log_every=5)
    watch(run, model)
    loop(run, model, 5, poison_at=3, poison_layer=3)
    run.finish()
    alerts = ts.open(runs).run(run.id).alerts()
    (alert,) = [a for a in alerts if a["rule"] == "hidden.nonfinite"]
    assert "`layers.3` (module 4 of 4 in forward order)" in alert["message"]
    assert "at step 3" in alert["message"]


def test_the_alert_clears_after_a_finite_window_and_sampled_mode_counts_elements(runs):
    model = Toy()
    run = ts.init(project="p", log_every=5)
    watch(run, model, check_finite="sampled")
    loop(run, model, 15, poison_at=6)  # step 6 is sampled: one NaN element, in layer 2
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("hidden/layers.2/nonfinite") == [(5, 0.0), (10, 1.0), (15, 0.0)]
    assert math.isnan(view.series("hidden/layers.2/mean")[1][1])
    # it propagates: the next layer's Linear spreads it over that position's features
    assert view.series("hidden/layers.3/nonfinite")[1] == (10, float(WIDTH))
    assert view.series("hidden/layers.1/nonfinite")[1] == (10, 0.0)
    states = [(a["step"], a["state"]) for a in view.alerts() if a["rule"] == "hidden.nonfinite"]
    assert states == [(10, "fired"), (15, "cleared")]


@pytest.mark.parametrize("whole", [False, True])
def test_gradient_checkpointing_recomputation_is_not_counted_twice(runs, whole):
    model = Toy(checkpointed=not whole)
    run = ts.init(project="p", log_every=5)
    handle = watch(run, model, check_finite="sampled")
    loop(run, model, 5, poison_at=1, whole=whole)
    assert handle.probes["grads"]._forwards == 5  # recomputed forwards are not forwards
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("hidden/layers.2/nonfinite") == [(5, 1.0)]  # not 2


def test_hidden_modules_by_name_and_a_clear_error_for_an_unknown_one(runs):
    model = Toy()
    run = ts.init(project="p", log_every=5)
    handle = watch(run, model, hidden_modules=["layers.3", "embed"])
    assert handle.probes["hidden"].labels == ["embed", "layers.3"]  # model order
    with pytest.raises(ts.TrainspectError, match=r"hidden_modules.*'layers.9'.*layers\.0"):
        watch(run, model, hidden_modules=["layers.9"])
    assert watch(run, model, hidden_modules=[]).probes.get("hidden") is None
    run.finish()


def test_offence_codes_prefer_the_earliest_step_then_the_earliest_module():
    n = 24

    def code(step, i):
        return (STEP_CAP - step) * (n + 1) + (n - i)

    assert max(code(9, 0), code(7, 20), code(7, 5)) == code(7, 5)
    assert decode_offence(code(123456, 17), n) == (123456, 17)
    assert float(code(10**6, 0)) * 1024 < 2**53  # exact in the float64 flush, many ranks


def test_hidden_state_is_fixed_size(runs):
    model = Toy()
    run = ts.init(project="p", log_every=2)
    probe = watch(run, model, every=1).probes["hidden"]
    sizes = []
    for steps in (2, 30):
        loop(run, model, steps)
        sizes.append(sum(t.numel() for t in probe.state()))
    run.finish()
    assert sizes[0] == sizes[1] == 4 * 4 + (4 + 1) + 3


def _two_ranks(rank: int, world: int) -> None:
    """Both ranks hold the same model; rank 1's inputs are 10x larger. Rank 0's NaN comes
    from an earlier module (layers.1) but a later step (4) than rank 1's (layers.2, 3)."""
    model = Toy()
    with ts.init(project="dist", name="hidden", log_every=5) as run:
        watch(run, model)
        gen = torch.Generator().manual_seed(10 + rank)
        for step in range(1, 6):
            run.log({"tick": 1.0}, step=step)
            for i, layer in enumerate(model.layers):
                layer.poison = (i, step) == ((1, 4) if rank == 0 else (2, 3))
            x = torch.randn(2, 5, 3, generator=gen) * (1 + 9 * rank)
            model(x)  # no backward: autograd's device threads do not survive a fork


def test_two_gloo_ranks_pool_sums_and_take_the_maximum_and_the_earliest_offence(runs):
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    from tests.integrations.ranks import run_ranks

    run_ranks(_two_ranks)
    (view,) = ts.open(runs).runs(project="dist")
    model = Toy()
    outputs = []
    for rank in (0, 1):  # step 1 is the sampled one: each rank's first input
        x = torch.randn(2, 5, 3, generator=torch.Generator().manual_seed(10 + rank))
        with torch.no_grad():
            outputs.append(model.layers[0](model.embed(x * (1 + 9 * rank))).double().numpy())
    pooled = np.concatenate([o.ravel() for o in outputs])
    assert view.series("hidden/layers.0/absmax") == [(5, pytest.approx(np.abs(pooled).max()))]
    assert view.series("hidden/layers.0/mean") == [(5, pytest.approx(pooled.mean()))]
    assert view.series("hidden/layers.0/std") == [(5, pytest.approx(pooled.std()))]
    (alert,) = [a for a in view.alerts() if a["rule"] == "hidden.nonfinite"]
    assert "`layers.2`" in alert["message"] and "at step 3" in alert["message"]
