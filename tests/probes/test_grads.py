"""Gradient norms against torch.linalg.vector_norm in float64, with and without gradient
accumulation; a layer that gets zero gradients; a detached loss; fixed-size state."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import trainspect as ts
from trainspect.probes.watch import watch

VOCAB, WIDTH = 40, 12


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.self_attn = nn.ModuleDict({"q_proj": nn.Linear(WIDTH, WIDTH),
                                        "o_proj": nn.Linear(WIDTH, WIDTH)})
        self.mlp = nn.ModuleDict({"up_proj": nn.Linear(WIDTH, 2 * WIDTH),
                                  "down_proj": nn.Linear(2 * WIDTH, WIDTH)})
        self.gain = 1.0  # 0.0 plants a layer whose parameters get exactly zero gradients

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.gain * self.self_attn["o_proj"](torch.tanh(self.self_attn["q_proj"](h)))
        return h + self.gain * self.mlp["down_proj"](torch.relu(self.mlp["up_proj"](h)))


class Toy(nn.Module):
    def __init__(self, layers: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed_tokens = nn.Embedding(VOCAB, WIDTH)
        self.layers = nn.ModuleList(Block() for _ in range(layers))
        self.lm_head = nn.Linear(WIDTH, VOCAB)

    def forward(self, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(h)


def batches(n: int):
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(0, VOCAB, (2, 5), generator=gen) for _ in range(n)]


def layer_of(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "layers" else parts[0]


def reference(model: nn.Module) -> dict[str, float]:
    """grad/norm and grad/<layer>/norm from float64 vector norms of the current grads."""
    sq: dict[str, float] = {}
    total = 0.0
    for name, p in model.named_parameters():
        g = torch.zeros(()) if p.grad is None else p.grad.double()
        value = float(torch.linalg.vector_norm(g.reshape(-1), dtype=torch.float64)) ** 2
        sq[layer_of(name)] = sq.get(layer_of(name), 0.0) + value
        total += value
    out = {f"grad/{k}/norm": math.sqrt(v) for k, v in sq.items()}
    out["grad/norm"] = math.sqrt(total)
    return out


def loop(run, model, steps: int, accum: int = 1, loss_of=None):
    """Steps 1..steps; the step is given to the run before the forward, as run.observe
    or run.losses would. Returns the reference norms at each sampled step (1, 6, ...)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = iter(batches(steps * accum))
    sampled = {}
    for step in range(1, steps + 1):
        run.log({"tick": float(step)}, step=step)
        for _ in range(accum):
            ids = next(data)
            logits = model(ids)
            loss = (loss_of or (lambda lg, i: nn.functional.cross_entropy(
                lg.reshape(-1, VOCAB), i.reshape(-1))))(logits, ids)
            (loss / accum).backward()
        if step % 5 == 1:
            sampled[step] = reference(model)
        opt.step()
        opt.zero_grad()
    return sampled


@pytest.mark.parametrize("accum", [1, 3])
def test_norms_match_float64_vector_norms_of_the_full_accumulated_gradient(runs, accum):
    model = Toy()
    run = ts.init(project="p", log_every=5)
    watch(run, model)
    sampled = loop(run, model, 10, accum=accum)
    run.finish()
    view = ts.open(runs).run(run.id)
    for flush_step, sample_step in ((5, 1), (10, 6)):
        expected = sampled[sample_step]
        assert set(expected) <= set(view.keys())
        for key, value in expected.items():
            got = dict(view.series(key))[flush_step]
            assert got == pytest.approx(value, rel=1e-5), key
    assert view.series("grad/zero_frac") == [(5, 0.0), (10, 0.0)]
    assert view.series("grad/detached") == [(5, 0.0), (10, 0.0)]
    assert [a for a in view.alerts() if a["rule"].startswith("grads.")] == []


def test_a_layer_with_zero_gradients_is_counted_and_named(runs):
    model = Toy()
    model.layers[1].gain = 0.0  # its output is multiplied by 0: its gradients are all zero
    run = ts.init(project="p", log_every=5)
    watch(run, model)
    loop(run, model, 5)
    run.finish()
    view = ts.open(runs).run(run.id)
    n_tensors = len(list(model.parameters()))
    assert view.series("grad/layers.1/norm") == [(5, 0.0)]
    assert view.series("grad/layers.0/norm")[0][1] > 0
    assert view.series("grad/zero_frac") == [(5, pytest.approx(8 / n_tensors))]
    (alert,) = [a for a in view.alerts() if a["rule"] == "grads.frozen_layers"]
    assert alert["level"] == "warning" and "1 of 5 layers" in alert["message"]
    assert "layers.1" in alert["message"] and "layers.0" not in alert["message"]


def test_a_loss_detached_from_the_trainable_parameters_is_flagged(runs):
    model = Toy()
    other = nn.Parameter(torch.ones(()))  # keeps backward() legal: it is not in the model
    run = ts.init(project="p", log_every=5)
    watch(run, model)
    loop(run, model, 10, loss_of=lambda logits, ids: (logits.detach().mean() * other))
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("grad/detached") == [(5, 1.0), (10, 1.0)]
    assert "grad/norm" not in view.keys()  # no gradient: nothing sampled, not a fake 0
    alerts = [a for a in view.alerts() if a["rule"] == "grads.detached"]
    assert [(a["step"], a["level"]) for a in alerts] == [(5, "critical")]  # one episode
    assert "5 training forward passes" in alerts[0]["message"]


def test_gradients_that_are_zero_everywhere_count_as_detached(runs):
    model = Toy()
    run = ts.init(project="p", log_every=5)
    watch(run, model)
    loop(run, model, 5, loss_of=lambda logits, ids: 0.0 * logits.sum())
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("grad/detached") == [(5, 1.0)]
    assert view.series("grad/norm") == [(5, 0.0)]
    assert view.series("grad/zero_frac") == [(5, 1.0)]
    assert "every trainable gradient is exactly zero" in [
        a for a in view.alerts() if a["rule"] == "grads.detached"][0]["message"]


def test_frozen_parameters_are_not_watched_and_checkpointed_layers_still_count(runs):
    from torch.utils.checkpoint import checkpoint

    model = Toy()
    for p in model.embed_tokens.parameters():
        p.requires_grad_(False)

    def checkpointed(ids):
        h = model.embed_tokens(ids)
        for layer in model.layers:
            h = checkpoint(layer, h, use_reentrant=False)
        return model.lm_head(h)

    model.forward = checkpointed  # the root hooks still see every forward
    run = ts.init(project="p", log_every=5)
    handle = watch(run, model)
    assert handle.probes["grads"].layers == ["layers.0", "layers.1", "layers.2", "lm_head"]
    sampled = loop(run, model, 5)
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("grad/norm") == [(5, pytest.approx(sampled[1]["grad/norm"], rel=1e-5))]


def test_grad_state_is_fixed_size(runs):
    model = Toy()
    run = ts.init(project="p", log_every=2)
    probe = watch(run, model, every=1).probes["grads"]
    sizes = []
    for steps in (2, 40):
        loop(run, model, steps)
        sizes.append(sum(t.numel() for t in probe.state()))
    run.finish()
    n_tensors = len(list(model.parameters()))
    assert sizes[0] == sizes[1] == (n_tensors + 1) + 3  # a square per tensor, samples; host
    assert len(probe._active) <= 3
