"""Checking what `Run.observe` was given, on the host, from shapes and dtypes alone.

A problem becomes one clear message naming the argument and the shapes; it never
reaches the device as an out-of-bounds index or a device-side assert, and never
switches a probe off: the run skips that batch and says so once (`Run.observe`).

Shapes, with S the sequence shape (`labels.shape`, without the group axis when
`group` is given: (B, T), or (N,) for one sequence):
- `labels` and `mask`: exactly `logits.shape[:-1]`;
- `input_ids` and `attention_mask`: S, or S one longer in the last axis (a causal
  LM passes the unshifted inputs with shifted logits and labels); with `group`,
  also S plus the group axis.
"""

from __future__ import annotations

import re
from typing import Any

_STREAM = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def _repr(value: Any) -> str:
    from trainspect.errors import safe_repr

    return safe_repr(value, 80)


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if hasattr(value, "shape") else type(value).__name__


def observe_problem(logits: Any, labels: Any, mask: Any, target_logits: Any, stream: str,
                    group: str | None, input_ids: Any, attention_mask: Any,
                    ignore_index: Any = -100, token_names: Any = None) -> str | None:
    """None when the arguments fit together, else what is wrong, in one sentence."""
    import torch

    if not isinstance(stream, str) or not _STREAM.match(stream):
        return f"expected `stream` to be a short name like 'text', got {_repr(stream)}"
    if group is not None and (not isinstance(group, str) or not _STREAM.match(group)):
        return f"expected `group` to be a short name like 'pos' or 'cb', got {_repr(group)}"
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        return f"expected `logits` to be a float tensor [..., V], got {_shape(logits)}" + (
            f" of {logits.dtype}" if isinstance(logits, torch.Tensor) else "")
    if logits.dim() < (3 if group else 2):
        need = "[..., G, V] with `group`" if group else "[..., V]"
        return f"expected `logits` of shape {need}, got {_shape(logits)}"
    if logits.shape[-1] == 0 or logits.numel() == 0:
        return f"`logits` is empty: {_shape(logits)}"
    expected = tuple(logits.shape[:-1])
    if labels is None:
        return "expected `labels` (use -100 for positions that are not supervised)"
    if not _is_int_tensor(torch, labels):
        return f"expected `labels` to be an integer tensor of shape {expected}, got " + (
            f"{_shape(labels)} of {labels.dtype}" if isinstance(labels, torch.Tensor)
            else type(labels).__name__)
    if tuple(labels.shape) != expected:
        return (f"`labels` {_shape(labels)} does not match `logits` {_shape(logits)}: expected "
                f"{expected} (a causal LM passes logits[:, :-1] with labels[:, 1:])")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        return f"expected `ignore_index` to be an int like -100, got {_repr(ignore_index)}"
    if token_names is not None and not isinstance(token_names, dict):
        return f"expected `token_names` to be a dict {{id: name}}, got {type(token_names).__name__}"
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.is_complex():
            return (f"expected `mask` to be a bool tensor of shape {expected}, got "
                    f"{_shape(mask)}")
        if tuple(mask.shape) != expected:
            return f"`mask` {_shape(mask)} does not match `labels` {expected}"
    sequence = expected[:-1] if group else expected
    for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if value is None:
            continue
        if not isinstance(value, torch.Tensor) or (
                name == "input_ids" and not _is_int_tensor(torch, value)):
            return (f"expected `{name}` to be an integer tensor of shape {sequence}, got "
                    f"{_shape(value)}" + (f" of {value.dtype}" if isinstance(
                        value, torch.Tensor) else ""))
        if not _fits_sequence(tuple(value.shape), sequence, expected if group else None):
            longer = (*sequence[:-1], sequence[-1] + 1)
            return (f"`{name}` {_shape(value)} does not fit `labels` {expected}: expected "
                    f"{sequence} or {longer} (the unshifted inputs of a causal LM)")
    if input_ids is not None and attention_mask is not None and tuple(
            attention_mask.shape) != tuple(input_ids.shape):
        return (f"`attention_mask` {_shape(attention_mask)} does not match `input_ids` "
                f"{_shape(input_ids)}")
    if target_logits is not None and (not isinstance(target_logits, torch.Tensor) or tuple(
            target_logits.shape) != tuple(logits.shape)):
        return (f"`target_logits` {_shape(target_logits)} does not match `logits` "
                f"{_shape(logits)}")
    for name, value in (("labels", labels), ("mask", mask), ("target_logits", target_logits),
                        ("input_ids", input_ids), ("attention_mask", attention_mask)):
        if value is not None and value.device != logits.device:
            return (f"`{name}` is on {value.device} but `logits` is on {logits.device}: "
                    "pass them on the same device")
    return None


def _is_int_tensor(torch: Any, value: Any) -> bool:
    return isinstance(value, torch.Tensor) and not value.is_floating_point() and not (
        value.is_complex()) and value.dtype != torch.bool


def _fits_sequence(shape: tuple, sequence: tuple, grouped: tuple | None) -> bool:
    """S, or S one longer in its last axis; with a group axis, also those plus the group."""
    def fits(s: tuple) -> bool:
        return len(s) == len(sequence) and s[:-1] == sequence[:-1] and s[-1] in (
            sequence[-1], sequence[-1] + 1)

    return fits(shape) or (grouped is not None and len(shape) == len(grouped)
                           and shape[-1] == grouped[-1] and fits(shape[:-1]))
