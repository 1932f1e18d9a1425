"""Checking what `Run.observe` was given, on the host, from shapes and dtypes alone.

A problem becomes one clear message naming the argument and the shapes; it never
reaches the device as an out-of-bounds index or a device-side assert.
"""

from __future__ import annotations

import re
from typing import Any

_STREAM = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if hasattr(value, "shape") else type(value).__name__


def observe_problem(logits: Any, labels: Any, mask: Any, target_logits: Any, stream: str,
                    group: str | None, input_ids: Any, attention_mask: Any) -> str | None:
    """None when the arguments fit together, else what is wrong, in one sentence."""
    import torch

    if not isinstance(stream, str) or not _STREAM.match(stream):
        return f"expected `stream` to be a short name like 'text', got {stream!r}"
    if group is not None and (not isinstance(group, str) or not _STREAM.match(group)):
        return f"expected `group` to be a short name like 'pos' or 'cb', got {group!r}"
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
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or (
            labels.dtype == torch.bool):
        return f"expected `labels` to be an integer tensor of shape {expected}, got " + (
            f"{_shape(labels)} of {labels.dtype}" if isinstance(labels, torch.Tensor)
            else type(labels).__name__)
    if tuple(labels.shape) != expected:
        return (f"`labels` {_shape(labels)} does not match `logits` {_shape(logits)}: expected "
                f"{expected} (a causal LM passes logits[:, :-1] with labels[:, 1:])")
    for name, value in (("mask", mask), ("input_ids", None), ("attention_mask", None)):
        if value is not None and tuple(value.shape) != expected:
            return f"`{name}` {_shape(value)} does not match `labels` {expected}"
    for name, value in (("input_ids", input_ids), ("attention_mask", attention_mask)):
        if value is not None and not isinstance(value, torch.Tensor):
            return f"expected `{name}` to be a tensor, got {type(value).__name__}"
    if target_logits is not None and (not isinstance(target_logits, torch.Tensor) or tuple(
            target_logits.shape) != tuple(logits.shape)):
        return (f"`target_logits` {_shape(target_logits)} does not match `logits` "
                f"{_shape(logits)}")
    for name, value in (("labels", labels), ("mask", mask), ("target_logits", target_logits)):
        if value is not None and value.device != logits.device:
            return f"`{name}` is on {value.device} but `logits` is on {logits.device}"
    return None
