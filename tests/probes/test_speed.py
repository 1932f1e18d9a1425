"""Throughput against hand counts (real, supervised and padded tokens, step time, data
share), the LoRA-aware FLOP count against a hand count, the learning rate at full
precision, bad input, fixed-size state; on CUDA, a whole watched training loop runs
under `torch.cuda.set_sync_debug_mode("error")`."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import trainspect as ts
from trainspect.probes.losses import losses
from trainspect.probes.speed import IGNORE_INDEX, SpeedProbe, flop_counts, speed
from trainspect.probes.watch import watch


def _latest(view, key):
    return dict(view.series(key))


def test_tokens_padding_supervised_step_time_and_data_share_match_hand_counts(runs):
    gen = torch.Generator().manual_seed(0)
    run = ts.init(project="p", log_every=4)
    real = supervised = positions = 0
    data_s = 0.0
    for step in range(1, 5):
        mask = (torch.rand(3, 7, generator=gen) > 0.3).long()
        labels = torch.randint(0, 9, (3, 7), generator=gen)
        labels[:, :2] = IGNORE_INDEX
        speed(run, step, attention_mask=mask, labels=labels, data_s=0.01 * step)
        real += int(mask.sum())
        supervised += int((labels != IGNORE_INDEX).sum())
        positions += mask.numel()
        data_s += 0.01 * step
    run.log({"tick": 0.0}, step=5)  # the next window begins: steps 1-4 are flushed
    run.finish()
    view = ts.open(runs).run(run.id)
    assert [s for s, _ in view.series("speed/step_s")] == [4]  # nothing ran at step 5
    window_s = 4 * _latest(view, "speed/step_s")[4]  # from step 1's call to step 5's
    assert _latest(view, "speed/padding_frac")[4] == pytest.approx(1 - real / positions)
    assert _latest(view, "speed/tokens_per_s")[4] * window_s == pytest.approx(real)
    assert _latest(view, "speed/supervised_tokens_per_s")[4] * window_s == pytest.approx(
        supervised)
    assert _latest(view, "speed/data_frac")[4] * window_s == pytest.approx(data_s)
    assert "speed/mfu" not in view.keys()  # no FLOP count without watch, no CPU peak
    assert "mem/peak_gb" not in view.keys()  # CPU: no device memory to report


def test_the_learning_rate_is_stored_at_full_precision(runs):
    lr = 3.0000000000000004e-07  # one ulp above 3e-7: a formatted value would lose it
    with ts.init(project="p") as run:
        speed(run, 1, tokens=10, lr=lr)
        speed(run, 2, tokens=10, lr=torch.tensor(lr, dtype=torch.float64))
    assert ts.open(runs).run(run.id).series("lr") == [(1, lr), (2, lr)]


class Toy(nn.Module):
    """Embedding 50x8 (tied head), one layer of two 8x8 linears with bias, a norm."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed_tokens = nn.Embedding(50, 8)
        self.layers = nn.ModuleList([nn.ModuleDict({"q_proj": nn.Linear(8, 8),
                                                    "o_proj": nn.Linear(8, 8)})])
        self.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 50, bias=False)
        self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.embed_tokens(input_ids)
        h = h + self.layers[0]["o_proj"](torch.relu(self.layers[0]["q_proj"](h)))
        return self.lm_head(self.norm(h))


def test_flop_count_knows_frozen_weights_and_tied_heads():
    model = Toy()
    layer, norm, head = 2 * (64 + 8), 16, 400  # q and o with bias; LayerNorm; tied head
    n_fwd = layer + norm + head  # the embedding lookup is no matmul, its tied head is
    static, attention = flop_counts(model)
    assert static == 2 * n_fwd + 2 * n_fwd + 2 * n_fwd  # full fine-tune: 6N
    assert attention is None  # no config: no attention term
    for p in model.parameters():
        p.requires_grad_(False)
    model.layers[0]["o_proj"].weight.requires_grad_(True)
    static, _ = flop_counts(model)
    # activation gradients from o_proj upwards (o_proj, norm, head); weight gradients: o_proj
    assert static == 2 * n_fwd + 2 * (72 + norm + head) + 2 * 64


def test_watch_counts_tokens_from_the_model_inputs_and_reports_mfu(runs):
    model = Toy()
    run = ts.init(project="p", log_every=3)
    handle = watch(run, model, peak_flops=1e9)
    handle.probes["speed"].attention_flops = 12.0 * 1 * 8  # as if config said L=1, d=8
    gen = torch.Generator().manual_seed(2)
    real = supervised = positions = 0
    for step in range(1, 4):
        ids = torch.randint(0, 50, (2, 6), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 4:] = 0
        labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
        model(input_ids=ids, attention_mask=mask, labels=labels).sum().backward()
        real += int(mask.sum())
        supervised += int((labels[:, 1:] != IGNORE_INDEX).sum())  # HF shifts its labels
        positions += mask.numel()
        run.log({"tick": 1.0}, step=step)
    run.finish()
    view = ts.open(runs).run(run.id)
    tokens_per_s = _latest(view, "speed/tokens_per_s")[3]
    assert _latest(view, "speed/padding_frac")[3] == pytest.approx(1 - real / positions)
    assert _latest(view, "speed/supervised_tokens_per_s")[3] / tokens_per_s == pytest.approx(
        supervised / real)
    static, _ = flop_counts(model)
    flops_per_token = static + 12.0 * 8 * 6  # T = 6 for every batch
    assert _latest(view, "speed/mfu")[3] == pytest.approx(flops_per_token * tokens_per_s / 1e9)
    assert 0 <= _latest(view, "speed/data_frac")[3] < 1  # timed gaps, CPU clock


def test_explicit_speed_calls_stop_the_watch_from_counting_twice(runs):
    model = Toy()
    run = ts.init(project="p", log_every=2)
    watch(run, model)
    for step in (1, 2):
        ids = torch.randint(0, 50, (2, 6))
        model(input_ids=ids).sum().backward()
        speed(run, step, tokens=100)
    run.log({"tick": 0.0}, step=3)
    run.finish()
    view = ts.open(runs).run(run.id)
    ((_, step_s),) = view.series("speed/step_s")
    assert _latest(view, "speed/tokens_per_s")[2] * 2 * step_s == pytest.approx(200)


def test_bad_input_never_raises(runs):
    run = ts.init(project="p")
    speed(run, 1, attention_mask=[[1, 1]])
    speed(run, 1, tokens=-3)
    speed(run, 1, tokens=4, data_s="soon")
    speed(run, 1, tokens=4)
    run.finish()
    assert run.rejected_values == 3 and run.errors == {}


def test_speed_state_is_fixed_size(runs):
    run = ts.init(project="p", log_every=1)
    for step in range(1, 300):
        speed(run, step, attention_mask=torch.ones(2, 3), labels=torch.zeros(2, 3))
    probe = run.probe("speed")
    assert isinstance(probe, SpeedProbe)
    assert sum(t.numel() for t in probe.state()) == 3 + 10 + 1
    assert len(probe._stash) <= 8 and len(probe._gaps) == 0
    run.finish()


def test_a_tensor_parallel_peer_pools_zeros_in_the_same_layout():
    """A rank that does not count (a TP group's other ranks) hands the flush zero tokens,
    supervised tokens and positions, and its clock and steps as usual; its own counts stay
    for its row of the per-rank table."""
    steps = iter([0, 2])
    probe = SpeedProbe(torch.device("cpu"), step_of=lambda: next(steps))
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    probe.count(mask, labels=torch.tensor([[5, 6, -100], [7, -100, -100]]))
    probe.count(input_ids=torch.zeros(2, 4, dtype=torch.long))  # host-counted: 8 tokens
    probe.counts = False
    acc, host, peak = probe.state()
    assert acc.shape == (3,) and host.shape == (10,) and peak.shape == (1,)
    assert acc.tolist() == [0.0, 0.0, 0.0] and host[:3].tolist() == [0.0, 0.0, 0.0]
    assert host[3:5].tolist() == [1.0, 2.0]  # label batches, batches
    assert host[5] > 0 and host[6] == 2.0 and host[9] == 1.0  # seconds, steps, one rank
    assert probe.acc.tolist() == [3.0, 3.0, 9.0] and probe.host[0] == 8.0  # this rank's


def test_watch_rejects_a_tp_group_it_cannot_use(runs):
    run = ts.init(project="p")
    for bad in ("tp", 2):
        with pytest.raises(ts.TrainspectError, match="`tp_group`"):
            watch(run, Toy(), tp_group=bad)
    run.finish()


@pytest.mark.gpu
def test_a_watched_lora_loop_never_syncs_and_reports_memory_and_mfu(runs):
    import peft

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj, self.up_proj = nn.Linear(64, 64), nn.Linear(64, 128)
            self.down_proj = nn.Linear(128, 64)

        def forward(self, h):
            h = h + self.q_proj(h)
            return h + self.down_proj(torch.relu(self.up_proj(h)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(128, 64)
            self.layers = nn.ModuleList(Block() for _ in range(3))
            self.lm_head = nn.Linear(64, 128)

        def forward(self, input_ids, attention_mask=None):
            h = self.embed_tokens(input_ids)
            for layer in self.layers:
                h = layer(h)
            return self.lm_head(h)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(Net(), peft.LoraConfig(
            r=4, target_modules=["q_proj", "up_proj", "down_proj"])).cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, foreach=True, capturable=True)
    run = ts.init(project="p", log_every=4)
    watch(run, model, peak_flops=1e12)
    ids = torch.randint(0, 128, (4, 32), device="cuda")
    mask = torch.ones_like(ids)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 13):
            logits = model(input_ids=ids, attention_mask=mask)
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
            losses(run, step, {"ce": loss, "zero": loss * 0}, {"ce": 1.0, "zero": 0.0},
                   total=loss)
            speed(run, step, attention_mask=mask, labels=ids)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            run.log({"loss": loss.detach()}, step=step)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    run.finish()
    assert run.errors == {}
    view = ts.open(runs).run(run.id)
    keys = set(view.keys())
    for key in ("speed/mfu", "mem/peak_gb", "grad/norm", "lora/total", "loss/sum_gap",
                "hidden/layers.2/std", "speed/data_frac"):
        assert key in keys, key
    assert 0 < _latest(view, "mem/peak_gb")[12] < 80
    assert np.isfinite(_latest(view, "grad/norm")[12]) and math.isfinite(
        _latest(view, "speed/mfu")[12])
    assert not any(a["rule"] == "probe_failed" for a in view.alerts())
