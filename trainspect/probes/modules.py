"""The parts of a model that `watch` needs, found and named: short names without wrapper
and PEFT-internal parts, the decoder layer and block of each parameter, the LoRA adapters,
the modules whose outputs are watched, and the tensors a backward pass starts from.

Names: `layers.3` for the fourth decoder layer, with wrappers (PEFT's `base_model.model`,
DDP's `module`, torch.compile's `_orig_mod`, FSDP1's `_fsdp_wrapped_module`) and the HF
inner `model.` stripped; blocks `qkv` (q/k/v projections), `o` (attention output), `mlp`,
`norm`, else the sub-module's own name (`audio_mlp`). Parameters outside the layer stacks
are grouped by their top-level module (`embed_tokens`, `lm_head`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from trainspect.errors import TrainspectError
from trainspect.probes.lora import AdapterRef
from trainspect.probes.placement import Tracked, placement_of

_WRAPPERS = ("base_model.model.", "_orig_mod.", "module.")
_INNER = ("model.", "transformer.", "gpt_neox.")
_PEFT_PARTS = ("original_module", "base_layer", "_fsdp_wrapped_module",
               "_checkpoint_wrapped_module")
STACKS = {"layers", "layer", "h", "blocks", "block"}
_ATTN = {"self_attn", "attn", "attention", "self_attention", "cross_attn", "encoder_attn"}
_MLP = {"mlp", "feed_forward", "ffn", "ff", "moe", "block_sparse_moe", "intermediate", "output"}
_QKV = {"q_proj", "k_proj", "v_proj", "qkv_proj", "query", "key", "value", "c_attn", "Wqkv",
        "query_key_value", "in_proj", "wq", "wk", "wv", "q", "k", "v", "to_q", "to_k", "to_v"}
_O = {"o_proj", "out_proj", "dense", "c_proj", "wo", "o", "proj", "to_out", "out"}
_MLP_LEAVES = {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "fc1", "fc2", "c_fc",
               "w1", "w2", "w3", "dense_h_to_4h", "dense_4h_to_h"}


# ---- naming ----------------------------------------------------------------------------


def short_name(name: str) -> str:
    """A module or parameter path without wrapper and PEFT-internal parts."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPERS:
            if name.startswith(prefix):
                name, changed = name[len(prefix):], True
    parts = name.split(".")
    out: list[str] = []
    i = 0
    while i < len(parts):
        if parts[i] == "modules_to_save":
            i += 2  # ".modules_to_save.<adapter>"
            continue
        if parts[i] not in _PEFT_PARTS:
            out.append(parts[i])
        i += 1
    name = ".".join(out)
    for inner in _INNER:
        if name.startswith(inner):
            return name[len(inner):]
    return name


def split_layer(short: str) -> tuple[str, list[str]]:
    """("layers.3", ["self_attn", "q_proj"]) for "layers.3.self_attn.q_proj"; outside a
    layer stack the top-level module: ("lm_head", [])."""
    parts = short.split(".")
    for i in range(len(parts) - 1):
        if parts[i] in STACKS and parts[i + 1].isdigit():
            return ".".join(parts[: i + 2]), parts[i + 2:]
    return parts[0], parts[1:]


def block_of(rest: Sequence[str]) -> str:
    """The block a module belongs to inside its layer: qkv, o, mlp, norm or its name."""
    if not rest:
        return "all"
    leaf = rest[-1]
    if "norm" in leaf or leaf.startswith("ln"):
        return "norm"
    if len(rest) == 1:
        return ("qkv" if leaf in _QKV else "o" if leaf in _O
                else "mlp" if leaf in _MLP_LEAVES else leaf)
    container = rest[0]
    if container in _ATTN:
        return "qkv" if leaf in _QKV else "o" if leaf in _O else "attn"
    if container in _MLP:
        return "mlp"
    return container


# ---- discovery -------------------------------------------------------------------------


def find_adapters(model: nn.Module, by_name: dict[str, Tracked] | None = None
                  ) -> list[AdapterRef]:
    """PEFT LoRA adapters (trainable ones), linear and embedding. `by_name` (parameter
    path -> Tracked, from `tracked_parameters`) gives each factor as this rank holds it."""
    by_name = by_name or {}
    found: list[tuple[str, str, Any, Any, Any]] = []
    for name, module in model.named_modules():
        for a_key, b_key in (("lora_A", "lora_B"), ("lora_embedding_A", "lora_embedding_B")):
            a_dict, b_dict = getattr(module, a_key, None), getattr(module, b_key, None)
            if not isinstance(a_dict, (nn.ModuleDict, nn.ParameterDict)) or b_dict is None:
                continue
            leaf = ".weight" if isinstance(a_dict, nn.ModuleDict) else ""
            for adapter in a_dict:
                if adapter not in b_dict:
                    continue
                a = by_name.get(f"{name}.{a_key}.{adapter}{leaf}")
                b = by_name.get(f"{name}.{b_key}.{adapter}{leaf}")
                if a is None or b is None:  # a frozen factor is read as it is
                    a_t = getattr(a_dict[adapter], "weight", a_dict[adapter])
                    b_t = getattr(b_dict[adapter], "weight", b_dict[adapter])
                    if not (isinstance(a_t, torch.Tensor) and isinstance(b_t, torch.Tensor)
                            and (a_t.requires_grad or b_t.requires_grad)):
                        continue
                    a = a if a is not None else Tracked(name, a_t, placement_of(a_t))
                    b = b if b is not None else Tracked(name, b_t, placement_of(b_t))
                found.append((name, adapter, module, a, b))
    several = len({adapter for _, adapter, *_ in found}) > 1
    refs = []
    for name, adapter, module, a, b in found:
        layer, rest = split_layer(short_name(name))
        block = block_of(rest) + (f"[{adapter}]" if several else "")
        refs.append(AdapterRef(short_name(name), layer, block, a, b,
                               functools.partial(_scaling, module, adapter)))
    return refs


def _scaling(module: nn.Module, adapter: str) -> float:
    return float(getattr(module, "scaling", {}).get(adapter, 1.0))


def find_hidden(model: nn.Module, wanted: Any) -> list[tuple[str, nn.Module]]:
    """Modules whose outputs to watch, in model order, with their short names."""
    named = [(short_name(n), n, m) for n, m in model.named_modules() if n]
    if wanted is None:  # every element of every layer stack, stack after stack
        return [(f"{s}.{i}", child) for s, _, m in named
                if isinstance(m, nn.ModuleList) and s.split(".")[-1] in STACKS
                for i, child in enumerate(m)]
    if isinstance(wanted, (str, nn.Module)):
        wanted = [wanted]
    chosen: list[tuple[str, nn.Module]] = []
    for item in wanted:
        match = [(s, m) for s, n, m in named
                 if (m is item if isinstance(item, nn.Module) else item in (s, n))]
        if not match:
            known = [s for s, _ in find_hidden(model, None)][:3]
            raise TrainspectError(f"`hidden_modules`: no module {item!r} in the model "
                                  f"(decoder layers here are named like {known})")
        chosen.append(match[0])
    order = {id(m): i for i, (_, _, m) in enumerate(named)}
    return sorted(chosen, key=lambda sm: order[id(sm[1])])


def outputs_with_grad(output: Any) -> list[torch.Tensor]:
    """The floating tensors of a forward's output that autograd will flow through: the
    output itself, or the items of a tuple, list or dict-like output (HF's ModelOutput:
    loss, logits), one level deep."""
    if isinstance(output, torch.Tensor):
        items: Any = (output,)
    elif isinstance(output, (tuple, list)):
        items = output
    elif hasattr(output, "values"):
        items = list(output.values())
    else:
        return []
    return [t for t in items if isinstance(t, torch.Tensor) and t.requires_grad
            and t.is_floating_point()]
