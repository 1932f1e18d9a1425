"""Loss composition: what each component contributes, and whether the total adds up.

`run.losses(step, components={"kd": kd, "feature": feat}, weights={"kd": 0.7,
"feature": 0.0}, total=loss)` records, as means over the calls of a flush window:

- `loss/<name>/raw`, `/weight`, `/scaled` (= weight · raw) per component, so curriculum
  weights are charted over time;
- `loss/total`, and `loss/sum_gap` = Σ|total − Σ weight·raw| / Σ|total| over the calls
  (numerators and denominators pooled, never a mean of ratios).

And it raises alerts (rule, step, numbers, action) for:

- a leak: the total is off (`sum_gap` > GAP_TOL) and a component whose weight is 0
  explains the difference: a least-squares fit of the residual R = total − Σ w·raw on
  that component's raw values over the window leaves less than LEAK_UNEXPLAINED of R²
  unexplained. The fitted coefficient (1.0 when the term was added without its weight)
  is in the message. Computed from five float64 sums per component, no host sync;
- a weighted component that is missing (a name in `weights` with weight != 0 that is
  not in `components`), or stuck: exactly 0 in every call of the window;
- a total that does not add up and that no single zero-weight component explains.

Gradient accumulation: `total` is the value the loop calls backward on. Loops that
divide it by the number of accumulation steps k (`loss / k`, as HF Trainer and
Accelerate do) pass `grad_accum=k`; trainspect multiplies `total` by k before anything
else, so `loss/total` is the per-micro-batch loss on the components' scale and is
compared with Σ weight·raw. Components are taken as given, unscaled. Call once per
micro-batch: each call is one sample of the window's means.

Values may be floats or 0-d tensors (any float dtype); tensors stay on their device and
are summed there; weights given as floats are written into a device vector only when
they change.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch

from trainspect.errors import TrainspectError
from trainspect.probes.base import Probe
from trainspect.records import Alert, Scalar

MAX_COMPONENTS = 32  # state is sized for this many distinct names, once
GAP_TOL = 1e-3  # sum_gap above this means the total is not Σ weight·raw
LEAK_UNEXPLAINED = 1e-2  # a leak explains all but this share of the residual's R²

# Per-component columns of the state, summed over calls.
NAMED, PRESENT, RAW, WEIGHT, SCALED, MISSING, ZERO, WEIGHTED, LEAK_N, LEAK_RR, LEAK_XX, \
    LEAK_XR, LEAK_ABS = range(13)
N_COLUMNS = 13
# Global slots: calls, Σ total, Σ |total|, Σ |R|, Σ R, calls with a total given.
CALLS, TOTAL, ABS_TOTAL, ABS_GAP, GAP, AUDITED = range(6)


def _value(x: Any, device: torch.device) -> torch.Tensor:
    """A 0-d float64 tensor on `device`; floats become a fill kernel, not a copy."""
    if isinstance(x, torch.Tensor):
        return x.detach().reshape(()).to(device=device, dtype=torch.float64)
    return torch.full((), float(x), dtype=torch.float64, device=device)


class _Pattern:
    """Device constants for one set of names in one order (cached per pattern)."""

    def __init__(self, slots: list[int], present: list[bool], device: torch.device) -> None:
        n = len(slots)
        self.index = torch.empty(n, dtype=torch.long, device=device)
        self.present = torch.empty(n, dtype=torch.float64, device=device)
        for j in range(n):  # once per pattern; fill_ needs no host-to-device copy
            self.index[j].fill_(slots[j])
            self.present[j].fill_(float(present[j]))
        self.weights = torch.zeros(n, dtype=torch.float64, device=device)
        self.host_weights: list[float | None] = [None] * n

    def float_weights(self, values: list[float]) -> torch.Tensor:
        """The device weight vector, rewritten only where a float changed (stream order
        keeps earlier kernels reading the old values)."""
        for j, value in enumerate(values):
            if self.host_weights[j] != value:
                self.weights[j].fill_(value)
                self.host_weights[j] = value
        return self.weights


class LossProbe(Probe):
    """Sums per component name (up to MAX_COMPONENTS) and for the total."""

    name = "losses"
    cadence = "every call"
    cost = "about 25 tiny kernels on 0-d / N-element tensors per call"

    def __init__(self, device: torch.device, start_step: int = 0) -> None:
        self.device = device
        self.slots: dict[str, int] = {}
        self.acc = torch.zeros(MAX_COMPONENTS, N_COLUMNS, dtype=torch.float64, device=device)
        self.totals = torch.zeros(6, dtype=torch.float64, device=device)
        self._patterns: dict[tuple, _Pattern] = {}
        self._last_step = start_step - 1  # the first window starts at the first call
        self._active: dict[tuple[str, str], bool] = {}

    # ---- per call ----------------------------------------------------------------------

    def slot(self, name: str) -> int:
        if name not in self.slots:
            if len(self.slots) >= MAX_COMPONENTS:
                raise TrainspectError(f"`components`: at most {MAX_COMPONENTS} distinct loss "
                                      f"component names per run, got a new one {name!r}")
            self.slots[name] = len(self.slots)
        return self.slots[name]

    @torch.no_grad()
    def update(self, components: dict[str, Any], weights: dict[str, Any] | None,
               total: Any, grad_accum: int) -> None:
        names = list(components) + [n for n in (weights or {}) if n not in components]
        key = tuple((n, n in components) for n in names)
        pattern = self._patterns.get(key)
        if pattern is None:
            if len(self._patterns) >= 64:  # a loop that varies its names every call
                self._patterns.clear()
            pattern = _Pattern([self.slot(n) for n in names], [n in components for n in names],
                               self.device)
            self._patterns[key] = pattern
        zero = None if len(names) == len(components) else torch.zeros(
            (), dtype=torch.float64, device=self.device)  # for weighted names not passed
        raw = torch.stack([_value(components[n], self.device) if n in components else zero
                           for n in names])  # (p,)
        w_given = [1.0 if weights is None else weights.get(n, 1.0) for n in names]
        if all(isinstance(w, (int, float)) for w in w_given):
            w = pattern.float_weights([float(v) for v in w_given])
        else:
            w = torch.stack([_value(v, self.device) for v in w_given])
        present = pattern.present
        scaled = w * raw
        composed = scaled.sum()
        audited = total is not None
        t = _value(total, self.device) * grad_accum if audited else composed
        gap = t - composed  # R: what the total has beyond Σ weight·raw
        weighted = (w != 0).to(torch.float64)
        on = present * weighted
        leak = present - on  # present with weight 0
        leak_x = leak * raw
        columns = torch.stack([
            torch.ones_like(raw), present, raw, w, scaled, weighted - on,
            on * (raw == 0), on, leak, leak * gap * gap, leak_x * raw, leak_x * gap,
            leak_x.abs(),
        ], dim=1)  # (p, N_COLUMNS)
        self.acc.index_add_(0, pattern.index, columns)
        audit = float(audited)
        self.totals.add_(torch.stack([
            torch.ones_like(t), t, t.abs(), gap.abs() * audit, gap * audit,
            torch.full_like(t, audit),
        ]))

    # ---- flush -------------------------------------------------------------------------

    def state(self) -> Sequence[torch.Tensor]:
        return (self.acc, self.totals) if self.slots else ()

    def reset(self) -> None:
        self.acc.zero_()
        self.totals.zero_()

    def compute(self, state: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        acc = state[0].reshape(MAX_COMPONENTS, N_COLUMNS)
        calls, total, abs_total, abs_gap, gap, audited = state[1]
        first, self._last_step = self._last_step + 1, step
        span = f"steps {first}-{step}" if first < step else f"step {step}"
        records: list[Any] = []
        for name, i in list(self.slots.items()):
            row = acc[i]
            if row[NAMED] <= 0:
                continue
            records.append(Scalar(f"loss/{name}/weight", step, row[WEIGHT] / row[NAMED],
                                  wall_time))
            if row[PRESENT] > 0:
                records.append(Scalar(f"loss/{name}/raw", step, row[RAW] / row[PRESENT],
                                      wall_time))
                records.append(Scalar(f"loss/{name}/scaled", step,
                                      row[SCALED] / row[PRESENT], wall_time))
        if calls <= 0:
            return records
        records.append(Scalar("loss/total", step, float(total / calls), wall_time))
        sum_gap = None
        if audited > 0:
            sum_gap = abs_gap / abs_total if abs_total > 0 else (
                math.inf if abs_gap > 0 else 0.0)
            records.append(Scalar("loss/sum_gap", step, float(sum_gap), wall_time))
        alerts = self._component_alerts(acc, span, step, wall_time)
        if sum_gap is not None:
            leaks = self._leaks(acc, sum_gap)
            records += [Scalar(f"loss/{name}/leak", step, amount, wall_time)
                        for name, amount in leaks.items()]
            alerts += self._gap_alerts(acc, sum_gap, gap / audited, span, step, wall_time)
        return records + alerts

    def _leaks(self, acc: np.ndarray, sum_gap: float) -> dict[str, float]:
        """`loss/<name>/leak` of zero-weight components: 0 when the total adds up, the
        fitted share of the total (coefficient x mean |raw|) when the component explains
        the gap, nothing when there is a gap it does not explain."""
        out = {}
        for name, i in self.slots.items():
            row = acc[i]
            if row[LEAK_N] <= 0:
                continue
            if sum_gap <= GAP_TOL:
                out[name] = 0.0
                continue
            fit = _fit(row)
            if fit is not None and fit[1] < LEAK_UNEXPLAINED:
                out[name] = float(fit[0] * row[LEAK_ABS] / row[LEAK_N])
        return out

    # ---- alerts (writer thread) ----------------------------------------------------------

    def _episode(self, rule: str, name: str, on: bool) -> bool:
        """True when (rule, name) turns on; an episode fires once until it turns off."""
        was = self._active.get((rule, name), False)
        self._active[(rule, name)] = on
        return on and not was

    def _component_alerts(self, acc: np.ndarray, span: str, step: int,
                          wall_time: float) -> list[Alert]:
        alerts = []
        for name, i in list(self.slots.items()):
            row = acc[i]
            if row[NAMED] <= 0:
                continue
            weight = row[WEIGHT] / row[NAMED]
            if self._episode("losses.missing", name, row[MISSING] > 0):
                alerts.append(Alert(
                    step, "losses.missing", "warning",
                    f"loss component '{name}' has weight {weight:.4g} but was not passed in "
                    f"{row[MISSING]:.0f} of {row[NAMED]:.0f} calls ({span})",
                    action=f"Pass '{name}' in `components` on every call, or set its weight "
                           "to 0 while it is off; if the term is really missing from the "
                           "loss, find why it is skipped.",
                    wall_time=wall_time))
            stuck = row[WEIGHTED] > 0 and row[ZERO] == row[WEIGHTED]
            if self._episode("losses.stuck", name, stuck):
                alerts.append(Alert(
                    step, "losses.stuck", "warning",
                    f"loss component '{name}' (weight {weight:.4g}) was exactly 0 in all "
                    f"{row[WEIGHTED]:.0f} calls ({span}): it contributes nothing",
                    action=f"Check what '{name}' is computed from: an empty mask, teacher or "
                           "target outputs not passed in, or a term multiplied away.",
                    wall_time=wall_time))
        return alerts

    def _gap_alerts(self, acc: np.ndarray, sum_gap: float, mean_gap: float, span: str,
                    step: int, wall_time: float) -> list[Alert]:
        off = bool(sum_gap > GAP_TOL)
        suspects = []
        for name, i in self.slots.items():
            row = acc[i]
            fit = _fit(row) if off else None
            if fit is None:
                continue
            coefficient, unexplained = fit
            if unexplained < LEAK_UNEXPLAINED:
                suspects.append((unexplained, name, coefficient, row[LEAK_ABS] / row[LEAK_N]))
        suspects.sort()
        alerts = []
        for _, name, coefficient, raw in suspects[:1]:
            if self._episode("losses.leak", name, True):
                alerts.append(Alert(
                    step, "losses.leak", "critical",
                    f"loss component '{name}' has weight 0 but reaches the total: total − "
                    f"Σ weight·raw = {mean_gap:.4g} on average (sum_gap {sum_gap:.3g}, "
                    f"{span}), and '{name}' (raw {raw:.4g}) explains it with coefficient "
                    f"{coefficient:.3g}",
                    action=f"Find where '{name}' is added to the loss and multiply it by its "
                           "weight, or skip it while its weight is 0 (curriculum). Check the "
                           "eval loss path too.",
                    wall_time=wall_time))
        leaking = {name for _, name, *_ in suspects[:1]}
        for rule, name in list(self._active):
            if rule == "losses.leak" and name not in leaking:
                self._active[(rule, name)] = False
        unexplained_gap = off and not suspects
        if self._episode("losses.sum_gap", "", unexplained_gap):
            alerts.append(Alert(
                step, "losses.sum_gap", "warning",
                f"loss/total differs from Σ weight·raw by {mean_gap:.4g} on average "
                f"(sum_gap {sum_gap:.3g}, {span}) and no zero-weight component explains it",
                action="Pass every term that goes into the total in `components`, with the "
                       "weight it is really multiplied by; with gradient accumulation pass "
                       "grad_accum=k if the total was divided by k.",
                wall_time=wall_time))
        return alerts


def _fit(row: np.ndarray) -> tuple[float, float] | None:
    """(coefficient, unexplained share of R²) of the least-squares fit R ≈ c·raw over the
    calls where the component had weight 0, or None without data."""
    if row[LEAK_N] <= 0 or row[LEAK_XX] <= 0 or row[LEAK_RR] <= 0:
        return None
    return (row[LEAK_XR] / row[LEAK_XX],
            1.0 - row[LEAK_XR] ** 2 / (row[LEAK_XX] * row[LEAK_RR]))


def _check_value(value: Any, argument: str) -> None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TrainspectError(f"expected `{argument}` to be a number or a 0-d tensor, "
                                  f"got a tensor of shape {tuple(value.shape)}")
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TrainspectError(f"expected `{argument}` to be a float tensor, got "
                                  f"{value.dtype}")
    elif isinstance(value, bool) or not isinstance(value, Real):
        raise TrainspectError(f"expected `{argument}` to be a number or a 0-d tensor, got "
                              f"{type(value).__name__}")


def _check(components: Any, weights: Any, total: Any, grad_accum: Any) -> None:
    if not isinstance(components, dict) or not components:
        raise TrainspectError("expected `components` to be a non-empty dict of name -> loss, "
                              f"got {components!r:.60}")
    for source, argument in ((components, "components"), (weights or {}, "weights")):
        if not isinstance(source, dict):
            raise TrainspectError(f"expected `{argument}` to be a dict, got "
                                  f"{type(source).__name__}")
        for name, value in source.items():
            if not isinstance(name, str) or not name or "/" in name:
                raise TrainspectError(f"`{argument}`: names must be non-empty strings "
                                      f"without '/', got {name!r}")
            _check_value(value, f"{argument}[{name!r}]")
    if total is not None:
        _check_value(total, "total")
    if isinstance(grad_accum, bool) or not isinstance(grad_accum, int) or grad_accum < 1:
        raise TrainspectError(f"expected `grad_accum` to be a positive int, got "
                              f"{grad_accum!r}")


def _device_of(*groups: Any) -> torch.device:
    for group in groups:
        for value in (group.values() if isinstance(group, dict) else [group]):
            if isinstance(value, torch.Tensor):
                return value.device
    return torch.device("cpu")


def losses(run: Any, step: int | None, components: dict[str, Any],
           weights: dict[str, Any] | None = None, total: Any = None,
           grad_accum: int = 1) -> None:
    """Record the loss composition of one call (the code behind `Run.losses`).

    components: name -> raw (unweighted, unscaled) loss value, float or 0-d tensor.
    weights: name -> weight (float or 0-d tensor); a component without one has weight
        1.0; a name here that is missing from `components` is reported if its weight
        is not 0.
    total: the loss the loop backpropagates; None records the components only.
    grad_accum: k if `total` was divided by the k accumulation steps (see module doc).

    Never raises: bad input is dropped and counted with one warning, like `Run.log`.
    """
    try:
        _check(components, weights, total, grad_accum)
        step = run._advance(step)
        probe = run.probe("losses")
        if probe is None:
            probe = run.add_probe(LossProbe(_device_of(total, components, weights), step))
        probe.update(components, weights, total, grad_accum)
    except TrainspectError as err:
        run._reject("losses", None, str(err))
    except Exception as err:
        run._internal_error("losses", err)
