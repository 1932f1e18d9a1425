"""One training loop under every sharding a user may run `watch` in, and the float64 numbers
one process computes for the same global batch (the reference of test_sharded.py).

The model is a small decoder LM named like the HF ones (`layers.N.self_attn.q_proj`, ...)
whose layers mix nothing across positions, so that sequence parallelism needs no attention
code. Each setup wraps it the way its library documents; every rank makes the same
trainspect calls (log_every 2, watch every 2) on its share of the global batch (the whole
batch under tensor parallelism).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable

import torch
from torch import nn

import trainspect as ts

VOCAB, WIDTH, LAYERS = 32, 16, 2
BATCH, SEQ = 4, 6  # the global batch of every step
STEPS, LOG_EVERY = 6, 2
LR = 0.05
TARGETS = ["q_proj", "o_proj", "up_proj", "down_proj"]


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(WIDTH)
        self.self_attn = nn.Module()
        self.self_attn.q_proj = nn.Linear(WIDTH, 2 * WIDTH)
        self.self_attn.o_proj = nn.Linear(2 * WIDTH, WIDTH)
        self.post_attention_layernorm = nn.LayerNorm(WIDTH)
        self.mlp = nn.Module()
        self.mlp.up_proj = nn.Linear(WIDTH, 3 * WIDTH)
        self.mlp.down_proj = nn.Linear(3 * WIDTH, WIDTH)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, d), position-wise
        a = self.self_attn
        h = h + a.o_proj(torch.tanh(a.q_proj(self.input_layernorm(h))))
        return h + self.mlp.down_proj(torch.relu(self.mlp.up_proj(
            self.post_attention_layernorm(h))))


class ToyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed_tokens = nn.Embedding(VOCAB, WIDTH)
        self.layers = nn.ModuleList(Layer() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(WIDTH)
        self.lm_head = nn.Linear(WIDTH, VOCAB)
        with torch.no_grad():  # LayerNorm starts at 1 and 0: make its gradients matter
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h)
        return self.lm_head(self.norm(h))  # (B, T, V)


def make_model(lora: str | None) -> nn.Module:
    """The toy LM; with `lora` ("zero" for PEFT's B = 0, "random" for B₀A₀ != 0) LoRA r=4 on
    every projection and only the adapters train; "llama" for `make_llama()`."""
    if lora == "llama":
        return make_llama()
    model = ToyLM()
    if lora is None:
        return model
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS,
                        init_lora_weights=lora == "zero")
    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def make_llama() -> nn.Module:
    """A small Hugging Face Llama (real attention, grouped KV heads), full fine-tune."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH * 2, intermediate_size=WIDTH * 4,
                         num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64)
    torch.manual_seed(0)
    return LlamaForCausalLM(config)


def batch(step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g)


def loss_of(output, ids: torch.Tensor) -> torch.Tensor:
    logits = getattr(output, "logits", output)  # (B, T, V)
    return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).float(),
                                       ids[:, 1:].reshape(-1))


# ---- setups: (model, rank, world) -> (module to call, module to watch, whole batch?) -----


def _ddp(model, rank, world):
    ddp = nn.parallel.DistributedDataParallel(model)
    return ddp, model, False


def _fsdp2(model, rank, world):
    from torch.distributed.fsdp import fully_shard

    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model, model, False


def _fsdp1(orig: bool):
    def wrap(model, rank, world):
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        fsdp = FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({Layer}),
                                        use_orig_params=orig, device_id=torch.device("cpu"))
        return fsdp, fsdp, False
    return wrap


def tp_plan(sequence_parallel: bool = True) -> dict:
    """torchtitan's Llama plan, for this toy: vocabulary-sharded embedding and head,
    column- then row-wise projections, norms sequence-parallel."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    seq = Shard(1) if sequence_parallel else Replicate()
    plan = {"embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=seq),
            "norm": SequenceParallel() if sequence_parallel else None,
            "lm_head": ColwiseParallel(input_layouts=seq, output_layouts=Replicate())}
    for i in range(LAYERS):
        p = f"layers.{i}."
        plan.update({
            p + "input_layernorm": SequenceParallel() if sequence_parallel else None,
            p + "self_attn.q_proj": ColwiseParallel(input_layouts=seq),
            p + "self_attn.o_proj": RowwiseParallel(output_layouts=seq),
            p + "post_attention_layernorm": SequenceParallel() if sequence_parallel else None,
            p + "mlp.up_proj": ColwiseParallel(input_layouts=seq),
            p + "mlp.down_proj": RowwiseParallel(output_layouts=seq),
        })
    return {k: v for k, v in plan.items() if v is not None}


def _mesh_type(model: nn.Module) -> str:
    return next(model.parameters()).device.type


def _tp(model, rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh(_mesh_type(model), (world,), mesh_dim_names=("tp",))
    parallelize_module(model, mesh, tp_plan())
    return model, model, True


def llama_tp_plan() -> dict:
    """Column-wise q, k, v, gate, up; row-wise o, down; no sequence parallelism (the
    layer outputs are the same on every rank of the group)."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        plan.update({p + f"self_attn.{n}": ColwiseParallel() for n in ("q_proj", "k_proj",
                                                                      "v_proj")})
        plan.update({p + "self_attn.o_proj": RowwiseParallel(),
                     p + "mlp.gate_proj": ColwiseParallel(), p + "mlp.up_proj": ColwiseParallel(),
                     p + "mlp.down_proj": RowwiseParallel()})
    return plan


def _llama_tp(model, rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh(_mesh_type(model), (world,), mesh_dim_names=("tp",))
    parallelize_module(model, mesh, llama_tp_plan())
    return model, model, True


def _llama_fsdp2(model, rank, world):
    from torch.distributed.fsdp import fully_shard

    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model, model, False


def _llama_fsdp2_tp(model, rank, world):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh(_mesh_type(model), (world // 2, 2), mesh_dim_names=("dp", "tp"))
    parallelize_module(model, mesh["tp"], llama_tp_plan())
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return model, model, "dp"


def _zero(stage: int):
    """DeepSpeed ZeRO through `deepspeed.initialize` (what Accelerate and the HF Trainer
    call), on DeepSpeed's CPU accelerator: SGD, no clipping, no loss scaling."""
    def wrap(model, rank, world):
        import deepspeed

        config = {"train_micro_batch_size_per_gpu": BATCH // world,
                  "zero_optimization": {"stage": stage},
                  "optimizer": {"type": "SGD", "params": {"lr": LR}},
                  "zero_allow_untested_optimizer": True}
        engine, *_ = deepspeed.initialize(model=model, config=config, model_parameters=[
            p for p in model.parameters() if p.requires_grad])
        return engine, engine.module, False
    return wrap


def _fsdp2_tp(model, rank, world):
    """2 x 2: tensor parallel inside, FSDP2 across the data-parallel pairs."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    mesh = init_device_mesh(_mesh_type(model), (world // 2, 2), mesh_dim_names=("dp", "tp"))
    parallelize_module(model, mesh["tp"], tp_plan())
    for layer in model.layers:
        fully_shard(layer, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    return model, model, "dp"


SETUPS: dict[str, tuple[Callable, str | None]] = {
    # name: (wrap, lora)
    "ddp_lora": (_ddp, "zero"),
    "fsdp2_lora": (_fsdp2, "random"),
    "fsdp2_full": (_fsdp2, None),
    "fsdp1_orig_lora": (_fsdp1(True), "zero"),
    "fsdp1_flat_full": (_fsdp1(False), None),
    "tp_full": (_tp, None),
    "fsdp2_tp_full": (_fsdp2_tp, None),
    "zero2_lora": (_zero(2), "random"),
    "zero3_lora": (_zero(3), "random"),
    "zero3_full": (_zero(3), None),
    # a Hugging Face Llama (lora "llama": the model, full fine-tune): the NCCL tests
    "llama_fsdp2": (_llama_fsdp2, "llama"),
    "llama_tp": (_llama_tp, "llama"),
    "llama_fsdp2_tp": (_llama_fsdp2_tp, "llama"),
}


def rows_of(rank: int, world: int, whole: bool | str) -> slice:
    """This rank's rows of the global batch: all under pure TP, a dp share otherwise."""
    if whole is True:
        return slice(0, BATCH)
    if whole == "dp":  # ranks (dp, tp) laid out row-major: tp pairs share rows
        dp, dp_size = rank // 2, world // 2
        return slice(dp * BATCH // dp_size, (dp + 1) * BATCH // dp_size)
    return slice(rank * BATCH // world, (rank + 1) * BATCH // world)


def play(rank: int, world: int, setup: str, runs: str,
         nan_at: tuple[str, int] | None = None, device: str = "cpu") -> None:
    """Train STEPS steps under `setup` on `world` ranks, watched (the run is named `setup`).

    nan_at: (parameter name, step): on rank 1 only, a NaN lands in that parameter's local
    gradient piece when its gradient is ready (a fault only one shard sees)."""
    os.environ["TRAINSPECT_DIR"] = runs
    wrap, lora = SETUPS[setup]
    model, watched, whole = wrap(make_model(lora).to(device), rank, world)
    mine = rows_of(rank, world, whole)
    engine = model if hasattr(model, "zero_optimization_stage") else None  # DeepSpeed
    opt = None if engine else torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=LR)
    start = _gathered(watched, engine)
    with ts.init(project="sharded", name=setup, log_every=LOG_EVERY) as run:
        run.watch(watched, every=LOG_EVERY, speed=False)
        if nan_at is not None and rank == 1:
            param = dict(watched.named_parameters())[nan_at[0]]

            def plant(p: torch.Tensor) -> None:
                if run.step == nan_at[1]:
                    getattr(p.grad, "_local_tensor", p.grad).view(-1)[0] = float("nan")

            param.register_post_accumulate_grad_hook(plant)
        for step in range(1, STEPS + 1):
            run.log({"tick": float(step)}, step=step)
            ids = batch(step)[mine].to(device)
            loss = loss_of(model(ids), ids)
            if engine is not None:
                engine.backward(loss)
                engine.step()
                continue
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    if engine is not None:  # DeepSpeed's optimizer is not torch's: ΔW from its own weights
        import json

        end = _gathered(watched, engine)
        model_now = make_model(lora)
        model_now.load_state_dict({k: v.float() for k, v in end.items()}, strict=False)
        deltas = _deltas(model_now, start, lora is not None)
        if rank == 0:
            with open(os.path.join(runs, f"{setup}.deltas.json"), "w") as f:
                json.dump(deltas, f)


def _gathered(model: nn.Module, engine) -> dict[str, torch.Tensor]:
    """Every parameter whole, in float64 (under ZeRO-3 through DeepSpeed's gather)."""
    if engine is None:
        return {}
    import deepspeed

    params = list(model.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params]):
        return {n: p.detach().double().clone() for n, p in params}


# ---- the reference: one process, float64 maths ---------------------------------------


def _short(name: str) -> str:
    name = name.replace("._fsdp_wrapped_module", "").replace("_fsdp_wrapped_module.", "")
    return name[len("model."):] if name.startswith("model.") else name


def _layer(name: str) -> str:
    parts = name.split(".")
    return ".".join(parts[:2]) if parts[0] == "layers" else parts[0]


def _block(name: str) -> str:
    parts = name.split(".")
    rest = parts[2:] if parts[0] == "layers" else parts[1:]
    leaf = rest[-2] if len(rest) >= 2 else rest[0]
    if "norm" in leaf:
        return "norm"
    return {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o", "up_proj": "mlp",
            "gate_proj": "mlp", "down_proj": "mlp"}.get(leaf, leaf if parts[0] == "layers"
                                                        else "all")


def reference(setup: str) -> dict[str, list[tuple[int, float]]]:
    """What one process should store for `setup`'s global batch, in float64."""
    _, lora = SETUPS[setup]
    model = make_model(lora)
    lora = None if lora == "llama" else lora
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=LR)
    trainable = [(_short(n), p) for n, p in model.named_parameters() if p.requires_grad]
    start = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    out: dict[str, list[tuple[int, float]]] = {}

    def put(key: str, step: int, value: float) -> None:
        out.setdefault(key, []).append((step, value))

    hidden: dict[str, list[torch.Tensor]] = {}

    def keep(name):
        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            hidden.setdefault(name, []).append(x.detach().double())
        return hook

    layers = model.model.layers if hasattr(model, "model") else model.layers
    handles = [layer.register_forward_hook(keep(f"layers.{i}")) for i, layer in enumerate(layers)]
    for step in range(1, STEPS + 1):
        sampled = step % LOG_EVERY == 1
        flush = step + (LOG_EVERY - 1 if sampled else 0)  # the window's last step
        hidden.clear()
        ids = batch(step)
        loss_of(model(ids), ids).backward()
        if sampled:
            layer_sq: dict[str, float] = {}
            zero = 0
            for name, p in trainable:
                g = torch.zeros(()) if p.grad is None else p.grad.double()
                sq = float(g.square().sum())
                layer_sq[_layer(name)] = layer_sq.get(_layer(name), 0.0) + sq
                zero += sq == 0
            put("grad/norm", flush, math.sqrt(sum(layer_sq.values())))
            for layer, sq in layer_sq.items():
                put(f"grad/{layer}/norm", flush, math.sqrt(sq))
            put("grad/zero_frac", flush, zero / len(trainable))
            for name, (x,) in hidden.items():
                put(f"hidden/{name}/mean", flush, float(x.mean()))
                put(f"hidden/{name}/std", flush, float(x.var(unbiased=False).sqrt()))
                put(f"hidden/{name}/absmax", flush, float(x.abs().max()))
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % LOG_EVERY == 0:
            for key, value in _deltas(model, start, lora is not None).items():
                put(key, step, value)
    for h in handles:
        h.remove()
    return out


@torch.no_grad()
def _deltas(model: nn.Module, start: dict, lora: bool) -> dict[str, float]:
    """lora/<layer>/<block> from ΔW = s (BA − B₀A₀) formed in float64, or delta/... for a
    full fine-tune, with their totals."""
    cells: dict[str, float] = {}
    if lora:
        for name, module in model.named_modules():
            if not hasattr(module, "lora_A") or "default" not in getattr(module, "lora_A", {}):
                continue
            a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
            a0, b0 = start[f"{name}.lora_A.default.weight"], start[f"{name}.lora_B.default.weight"]
            delta = module.scaling["default"] * (b.double() @ a.double() - b0 @ a0)
            key = f"lora/{_layer(name)}/{_block(name + '.weight')}"
            cells[key] = cells.get(key, 0.0) + float(delta.square().sum())
    else:
        for name, p in model.named_parameters():
            short = _short(name)
            key = f"delta/{_layer(short)}/{_block(short)}"
            cells[key] = cells.get(key, 0.0) + float((p.double() - start[name]).square().sum())
    prefix = "lora" if lora else "delta"
    total = sum(cells.values())
    out = {k: math.sqrt(v) for k, v in cells.items()}
    out[f"{prefix}/total"] = math.sqrt(total)
    return out
