"""LoRA ‖ΔW‖_F by the trace formula against ΔW formed explicitly in float64; PEFT naming
on a tiny real Llama; rsLoRA scaling; B still zero; full-weight deltas; module naming."""

from __future__ import annotations

import math
import warnings

import numpy as np
import peft
import pytest
import torch
import transformers
from torch import nn

import trainspect as ts
from trainspect.probes.lora import AdapterRef, LoraProbe, WeightRef
from trainspect.probes.modules import block_of, short_name, split_layer
from trainspect.probes.watch import watch


def tiny_llama(lora: bool = True, **lora_kw):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2)
    base = transformers.LlamaForCausalLM(config)
    if not lora:
        return base
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], **lora_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return peft.get_peft_model(base, lora)


def train(run, model, steps, lr=1e-2, optimize=True):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    gen = torch.Generator().manual_seed(1)
    for step in range(1, steps + 1):
        run.log({"tick": float(step)}, step=step)
        ids = torch.randint(0, 64, (2, 6), generator=gen)
        model(input_ids=ids, labels=ids).loss.backward()
        if optimize:
            opt.step()
        opt.zero_grad()


def explicit_cells(model) -> dict[str, float]:
    """‖ΔW‖_F per (layer, block), ΔW = scaling · B A formed in float64 (B₀ = 0)."""
    sq: dict[str, float] = {}
    for name, module in model.named_modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        a = module.lora_A["default"].weight.detach().double()
        b = module.lora_B["default"].weight.detach().double()
        delta = module.scaling["default"] * (b @ a)
        layer, rest = split_layer(short_name(name))
        key = f"lora/{layer}/{block_of(rest)}"
        sq[key] = sq.get(key, 0.0) + float((delta ** 2).sum())
    return {k: math.sqrt(v) for k, v in sq.items()}


@pytest.mark.parametrize("rslora", [False, True])
def test_peft_model_names_layers_and_blocks_and_matches_explicit_delta(runs, rslora):
    model = tiny_llama(use_rslora=rslora)
    run = ts.init(project="p", log_every=5)
    handle = watch(run, model, top_k=1)
    assert set(handle.probes) == {"lora", "grads", "hidden", "speed"}
    train(run, model, 10)
    expected = explicit_cells(model)
    view = ts.open(runs).run(run.id)
    run.finish()
    assert set(expected) == {f"lora/layers.{i}/{b}" for i in (0, 1) for b in ("qkv", "o", "mlp")}
    for key, value in expected.items():
        assert view.series(key)[-1] == (10, pytest.approx(value, rel=1e-9))
    assert view.series("lora/total")[-1][1] == pytest.approx(
        math.sqrt(sum(v * v for v in expected.values())), rel=1e-9)
    grid = view.matrix("lora/layers")
    assert grid["row_labels"] == ["layers.0", "layers.1"]
    assert grid["col_labels"] == ["qkv", "o", "mlp"]
    assert grid["values"][1][2] == pytest.approx(expected["lora/layers.1/mlp"], rel=1e-9)
    top = view.matrix("lora/top")
    totals = {layer: math.sqrt(sum(expected[f"lora/{layer}/{b}"] ** 2 for b in
                                   ("qkv", "o", "mlp"))) for layer in ("layers.0", "layers.1")}
    best = max(totals, key=totals.get)
    assert top["row_labels"] == [best] and top["values"][0][0] == pytest.approx(totals[best])
    assert view.series("lora/b_zero_frac")[-1] == (10, 0.0)
    assert not any(a["rule"] == "lora.b_zero" for a in view.alerts())
    scaling = 8 / math.sqrt(4) if rslora else 8 / 4
    module = model.base_model.model.model.layers[0].self_attn.q_proj
    assert module.scaling["default"] == scaling  # the probe reads this very value


def test_general_init_uses_the_snapshot_and_matches_explicit_float64(runs):
    """B₀A₀ != 0 (as after PiSSA or a resumed adapter): ‖BA − B₀A₀‖ by the expansion."""
    gen = torch.Generator().manual_seed(3)
    adapters, initial = [], []
    shapes = [((4, 16), (24, 4)), ((4, 16), (24, 4)), ((8, 3, 3, 3), (5, 8, 1, 1))]  # conv too
    for i, (a_shape, b_shape) in enumerate(shapes):
        a = nn.Parameter(torch.randn(a_shape, generator=gen))
        b = nn.Parameter(torch.randn(b_shape, generator=gen))
        initial.append((a.detach().clone(), b.detach().clone()))
        layer = f"layers.{i % 2}"
        adapters.append(AdapterRef(f"{layer}.mlp.up_proj", layer, "mlp", a, b,
                                   lambda s=i: 0.5 + s))
    probe = LoraProbe(adapters, [], every=1, start_step=0, step_of=lambda: 1)
    with torch.no_grad():
        for a, b in ((r.a, r.b) for r in adapters):
            a.add_(0.01 * torch.randn(a.shape, generator=gen))
            b.mul_(1.02)
    records = probe.compute([t.numpy() for t in probe.state()], 1, 0.0)
    got = {r.key: r.value for r in records if hasattr(r, "value")}
    sq = {"layers.0": 0.0, "layers.1": 0.0}
    for i, (ref, (a0, b0)) in enumerate(zip(adapters, initial)):
        a, b = ref.a.detach().double(), ref.b.detach().double()
        r = a.shape[0]
        delta = (0.5 + i) * (b.reshape(b.shape[0], -1) @ a.reshape(r, -1)
                             - b0.double().reshape(b.shape[0], -1) @ a0.double().reshape(r, -1))
        sq[ref.layer] += float((delta ** 2).sum())
    for layer, value in sq.items():
        assert got[f"lora/{layer}/mlp"] == pytest.approx(math.sqrt(value), rel=1e-8)


def test_b_still_zero_after_every_steps_is_flagged(runs):
    model = tiny_llama()
    run = ts.init(project="p", log_every=5)
    watch(run, model)
    train(run, model, 10, optimize=False)  # gradients flow, but nothing updates B
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("lora/b_zero_frac") == [(5, 1.0), (10, 1.0)]
    assert view.series("lora/total") == [(5, 0.0), (10, 0.0)]
    alerts = [a for a in view.alerts() if a["rule"] == "lora.b_zero"]
    assert [(a["step"], a["level"]) for a in alerts] == [(5, "critical")]  # once, not per flush
    assert "14 of 14 adapted modules" in alerts[0]["message"]
    assert "optimizer" in alerts[0]["action"]


def test_full_fine_tune_gets_weight_deltas_per_layer_and_block(runs):
    model = tiny_llama(lora=False)
    start = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    run = ts.init(project="p", log_every=5)
    watch(run, model, full_deltas=True)
    train(run, model, 5)
    view = ts.open(runs).run(run.id)
    run.finish()
    sq: dict[str, float] = {}
    for name, p in model.named_parameters():
        layer, rest = split_layer(short_name(name).rsplit(".", 1)[0])
        key = f"delta/{layer}/{block_of(rest)}"
        sq[key] = sq.get(key, 0.0) + float(((p.detach().double() - start[name]) ** 2).sum())
    assert "delta/layers.1/norm" in sq and "delta/embed_tokens/all" in sq
    for key, value in sq.items():
        assert view.series(key) == [(5, pytest.approx(math.sqrt(value), rel=1e-5))], key
    assert not any(k.startswith("lora/") for k in view.keys())

    run = ts.init(project="p", log_every=5)
    watch(run, model, full_deltas=False)
    train(run, model, 5)
    run.finish()
    assert not any(k.startswith("delta/") for k in ts.open(runs).run(run.id).keys())


@pytest.mark.parametrize(("name", "layer", "block"), [
    ("base_model.model.model.layers.3.self_attn.q_proj", "layers.3", "qkv"),
    ("base_model.model.model.layers.3.self_attn.o_proj", "layers.3", "o"),
    ("base_model.model.model.layers.12.mlp.down_proj", "layers.12", "mlp"),
    ("module._orig_mod.model.layers.0.input_layernorm", "layers.0", "norm"),
    ("base_model.model.model.layers.2.audio_mlp.gate_proj", "layers.2", "audio_mlp"),
    ("transformer.h.5.attn.c_attn", "h.5", "qkv"),
    ("transformer.h.5.mlp.c_proj", "h.5", "mlp"),
    ("bert.encoder.layer.1.attention.output.dense", "bert.encoder.layer.1", "o"),
    ("model.audio_tower.layers.4.fc1", "audio_tower.layers.4", "mlp"),
    ("base_model.model.lm_head.modules_to_save.default", "lm_head", "all"),
    ("base_model.model.model.embed_tokens.original_module", "embed_tokens", "all"),
])
def test_module_names_map_to_layers_and_blocks(name, layer, block):
    got_layer, rest = split_layer(short_name(name))
    assert (got_layer, block_of(rest)) == (layer, block)


def test_custom_model_with_an_audio_mlp_gets_its_own_block(runs):
    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = nn.ModuleDict({"q_proj": nn.Linear(8, 8)})
            self.audio_mlp = nn.ModuleDict({"gate_proj": nn.Linear(8, 8)})

        def forward(self, h):
            return h + self.self_attn["q_proj"](h) + self.audio_mlp["gate_proj"](h)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([Layer(), Layer()])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    model = peft.get_peft_model(Net(), peft.LoraConfig(r=2, target_modules=["q_proj",
                                                                            "gate_proj"]))
    run = ts.init(project="p", log_every=2)
    handle = watch(run, model)
    probe = handle.probes["lora"]
    assert [(a.layer, a.block) for a in probe.adapters] == [
        ("layers.0", "qkv"), ("layers.0", "audio_mlp"), ("layers.1", "qkv"),
        ("layers.1", "audio_mlp")]
    run.finish()


def test_lora_state_is_fixed_size(runs):
    model = tiny_llama()
    run = ts.init(project="p", log_every=1)
    handle = watch(run, model, every=1)
    probe = handle.probes["lora"]
    sizes = []
    for steps in (3, 30):
        train(run, model, steps)
        sizes.append(sum(t.numel() for t in probe.state()))
    run.finish()
    # an r x r Gram of each factor (r = 4) of 14 adapters, no full weights, the rank count
    assert sizes[0] == sizes[1] == 2 * 14 * 4 * 4 + 1
    assert len(probe._alerted) <= 1 and len(probe._snapshots) == 0


def test_b_zero_flag_waits_for_every_steps(runs):
    a, b = nn.Parameter(torch.ones(2, 3)), nn.Parameter(torch.zeros(3, 2))
    probe = LoraProbe([AdapterRef("layers.0.q_proj", "layers.0", "qkv", a, b, lambda: 1.0)],
                      [WeightRef("x", "layers.0", "mlp", nn.Parameter(torch.ones(2)))],
                      every=10, start_step=0, step_of=lambda: 5)
    state = [t.numpy() for t in probe.state()]
    assert not [r for r in probe.compute(state, 5, 0.0) if type(r).__name__ == "Alert"]
    assert np.array_equal(state[2], [0.0])  # the full weight has not moved
