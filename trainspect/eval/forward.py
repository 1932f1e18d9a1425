"""Running the model on eval batches: the teacher-forced pass and greedy decoding.

Any decoder-only model works that is called as `model(input_ids=..., attention_mask=...)`
and returns the logits (B, T, V), an object with `.logits`, or a tuple whose first
item is the logits. A Hugging Face model (anything with `prepare_inputs_for_generation`,
PEFT-wrapped ones included) also gets `position_ids` and the KV cache
(`use_cache=True`) while decoding, so each new token costs one position; any other
model is re-run on the growing sequence. The cache goes in and comes out under the
name the model's forward declares: `cache` from transformers 5 on (which warns about
the older name on every call), `past_key_values` before.

Greedy decoding pads prompts on the left, gives each row its own limit (its reference
length plus `extra_tokens`) and stops a row at its first stop token. With `steps=` it
runs exactly that many steps (ranks of a distributed eval must call forward equally
often), else until every row is done.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from trainspect.errors import TrainspectError
from trainspect.eval.encoding import Encoded

IGNORE_INDEX = -100


def is_hf(model: Any) -> bool:
    return callable(getattr(model, "prepare_inputs_for_generation", None))


def cache_argument(model: Any) -> str:
    """The name under which `model`'s forward takes and returns its KV cache.

    Looks through wrappers (PEFT's `get_base_model()`, DDP's `.module`) to the forward
    that declares its arguments; `past_key_values` when none says `cache`.
    """
    seen: set[int] = set()
    while id(model) not in seen:
        seen.add(id(model))
        try:
            parameters = inspect.signature(model.forward).parameters
        except (AttributeError, TypeError, ValueError):
            parameters = {}
        if "cache" in parameters:
            return "cache"
        if "past_key_values" in parameters:
            return "past_key_values"
        base = getattr(model, "get_base_model", None)
        inner = base() if callable(base) else getattr(model, "module", None)
        if inner is None:
            break
        model = inner
    return "past_key_values"


def model_device(model: Any) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def logits_of(out: Any, batch: int, length: int) -> Tensor:
    """The (B, T, V) logits of a forward's output, checked."""
    logits = out
    if not isinstance(logits, Tensor):
        logits = getattr(out, "logits", None)
        if logits is None and isinstance(out, (tuple, list)) and out:
            logits = out[0]
    if not isinstance(logits, Tensor):
        raise TrainspectError(f"expected the model to return logits (a tensor, `.logits` or a "
                              f"tuple starting with them), got {type(out).__name__}")
    if logits.dim() != 3 or tuple(logits.shape[:2]) != (batch, length):
        raise TrainspectError(f"expected the model's logits to have shape ({batch}, {length}, V) "
                              f"for input_ids of shape ({batch}, {length}), got "
                              f"{tuple(logits.shape)}")
    return logits


def teacher_forced_inputs(rows: Sequence[Encoded], keep: Sequence[bool], pad_id: int,
                          device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded prompt+target ids, mask, and labels aligned with the logits.

    `labels[b, t]` is the token that logits[b, t] must predict: target token t+1 of the
    sequence on target positions, -100 elsewhere (prompt, padding, and rows with
    `keep` False, which are padding rows of a distributed shard).
    """
    seqs = [r.prompt_ids + r.target_ids for r in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    for b, (row, seq) in enumerate(zip(rows, seqs)):
        ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, : len(seq)] = 1
        if keep[b]:
            start = len(row.prompt_ids) - 1  # logits at the prompt's last token predict target[0]
            labels[b, start: start + len(row.target_ids)] = torch.tensor(row.target_ids,
                                                                          dtype=torch.long)
    return ids.to(device), mask.to(device), labels.to(device)


def forward_logits(model: Any, ids: Tensor, mask: Tensor) -> Tensor:
    """Logits (B, T, V) of one teacher-forced forward."""
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
    if is_hf(model):
        kwargs["use_cache"] = False  # no KV cache to build and throw away
    return logits_of(model(**kwargs), ids.shape[0], ids.shape[1])


def greedy(model: Any, prompts: Sequence[Sequence[int]], limits: Sequence[int],
           stops: frozenset[int], pad_id: int, device: torch.device,
           steps: int | None = None) -> list[list[int]]:
    """Greedy continuations: per row, at most `limits[b]` tokens, ending at a stop token."""
    batch = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)  # (B, P) left-padded
    mask = torch.zeros((batch, width), dtype=torch.long)  # (B, P)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[b, width - len(prompt):] = 1
    ids, mask = ids.to(device), mask.to(device)
    limit = torch.tensor(list(limits), dtype=torch.long, device=device)  # (B,)
    stop_ids = torch.tensor(sorted(stops), dtype=torch.long, device=device)  # (S,)
    total = steps if steps is not None else max(limits)
    hf = is_hf(model)
    cache_name = cache_argument(model) if hf else ""
    done = limit <= 0  # (B,)
    generated = []
    past = None
    step_ids = step_pos = ids
    for t in range(total):
        if hf:
            if past is None:  # the first step, or a model that returns no cache: all of it
                step_ids, step_pos = ids, (mask.cumsum(-1) - 1).clamp_min(0)  # (B, L)
            out = model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos,
                        use_cache=True, **{cache_name: past})
            past = getattr(out, cache_name, None)
            logits = logits_of(out, batch, step_ids.shape[1])
            del out
        else:
            logits = logits_of(model(input_ids=ids, attention_mask=mask), batch, ids.shape[1])
        token = logits[:, -1].argmax(dim=-1)  # (B,)
        del logits
        token = torch.where(done, torch.full_like(token, pad_id), token)
        generated.append(token)
        if stop_ids.numel():
            done = done | (token[:, None] == stop_ids[None, :]).any(dim=1)
        done = done | (limit <= t + 1)
        ids = torch.cat([ids, token[:, None]], dim=1)  # (B, L + 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # (B, L + 1)
        step_ids, step_pos = token[:, None], step_pos[:, -1:] + 1  # (B, 1) each
        if steps is None and bool(done.all()):
            break
    if not generated:
        return [[] for _ in range(batch)]
    tokens = torch.stack(generated, dim=1).tolist()  # (B, steps)
    out_rows = []
    for b, row in enumerate(tokens):
        kept = []
        for token in row[: limits[b]]:
            kept.append(token)
            if token in stops:
                break
        out_rows.append(kept)
    return out_rows
