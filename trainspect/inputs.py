"""Checking what the training loop hands the run: steps, metric values and config.

Pure functions on the host: they never touch a device (a 0-d device tensor is kept
as it is, to be read at the flush) and never raise anything but TrainspectError,
whose message names the argument and what came.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral, Real
from typing import Any

from trainspect.errors import TrainspectError, safe_repr

MAX_STEP = 2**63 - 1  # the store keeps steps as int64


def is_tensor(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "detach")


def as_step(step: Any) -> int:
    """`step` as a non-negative int the store can hold; an integral float (3.0) counts."""
    if type(step) is not int:
        if is_tensor(step):
            raise TrainspectError("expected `step` to be an int, got a tensor (reading it "
                                  "would wait for the device): pass int(step) or a counter")
        if isinstance(step, bool) or not isinstance(step, Real):
            raise TrainspectError(f"expected `step` to be an int, got {safe_repr(step, 80)}")
        if not isinstance(step, Integral) and (not math.isfinite(step) or step != int(step)):
            raise TrainspectError(f"expected `step` to be a whole number, got {step}")
        step = int(step)
    if not 0 <= step <= MAX_STEP:
        raise TrainspectError(f"expected `step` to be an int in [0, 2**63), got {step}")
    return step


Reject = Callable[[str, Any, str], None]  # (key, value, why): count and warn once


def clean_metrics(metrics: dict[Any, Any], reject: Reject,
                  on_device: Callable[[str, Any], None]) -> dict[str, float]:
    """The floats of `metrics`; 0-d device tensors go to `on_device`, the rest to `reject`."""
    values: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not key:
            reject(repr(key), value, "metric names must be non-empty strings")
        elif type(value) is float or isinstance(value, Real):
            values[key] = float(value)
        elif is_tensor(value):
            if value.numel() != 1:
                reject(key, value, f"expected a 0-d tensor, got shape {tuple(value.shape)}")
            elif value.device.type == "cpu":
                values[key] = float(value.detach().reshape(()))
            else:
                on_device(key, value.detach().reshape(()))
        elif hasattr(value, "item") and getattr(value, "size", 0) == 1:
            values[key] = float(value.item())  # 1-element numpy arrays
        else:
            reject(key, value, "expected a number")
    return values


def config_dict(config: Any) -> dict[str, Any]:
    """Accept dicts, argparse Namespaces, dataclasses and objects with __dict__ as config."""
    import dataclasses

    if config is None:
        return {}
    if isinstance(config, dict):
        return dict(config)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if hasattr(config, "to_dict"):
        return dict(config.to_dict())
    if hasattr(config, "__dict__"):
        return dict(vars(config))
    raise TrainspectError(f"expected `config` to be a dict, got {type(config).__name__}")


def check_counts(log_every: Any, samples_every: Any, num_samples: Any) -> None:
    """`log_every` a positive int; `samples_every` and `num_samples` non-negative ints."""
    for argument, value, least in (("log_every", log_every, 1),
                                   ("samples_every", samples_every, 0),
                                   ("num_samples", num_samples, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            kind = "positive" if least else "non-negative"
            raise TrainspectError(f"expected `{argument}` to be a {kind} int, got {value!r}")
