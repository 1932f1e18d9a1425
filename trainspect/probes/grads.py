"""Gradients: global and per-layer norms, the share of trainable tensors with no gradient,
and a loss detached from the trainable parameters.

`watch` calls `after_backward(step)` once at the end of every backward pass that gave
any trainable parameter a gradient (see watch.py for how that point is found), and
`forward_seen()` on every training forward. On one step every `every` steps the norms
are taken with one fused `torch._foreach_norm` over all trainable gradients (fp32
accumulation), then summed per layer with one `index_add_`: a handful of kernels, no
host sync.

With gradient accumulation a step has several backward passes: each one of the sampled
step overwrites the pending sample, so the kept one is the gradient after the last
micro-batch, the full accumulated gradient that the optimizer steps on (before any
clipping: clipping happens after the backward). Samples of several steps in one flush
window are averaged as squared norms, so `grad/norm` is their root mean square.

`grad/zero_frac` is the share of trainable parameter tensors whose gradient is missing
(None) or exactly zero everywhere. `grad/detached` is 1 for a window in which the model
ran training forwards (train mode, grad enabled) but no backward reached a trainable
parameter, or in which the sampled gradient was zero everywhere.

Across ranks the values are pooled as sums and divided by the number of samples over
all ranks: under DDP, where every rank holds the same averaged gradient, that is the
gradient's norm. Sharded gradients (FSDP) would need a sum instead; not handled yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainspect.probes.base import Probe
from trainspect.records import Alert, Scalar


class GradProbe(Probe):
    """Norms of `params` (trainable tensors) grouped by `layer_of_param` into `layers`."""

    name = "grads"
    cadence = "one step every `every` steps (its last backward pass)"
    cost = "one _foreach_norm over the gradients and ~8 small kernels per sampled step"

    def __init__(self, params: Sequence[torch.Tensor], layer_of_param: Sequence[int],
                 layers: Sequence[str], device: torch.device, *, every: int) -> None:
        self.params = list(params)
        self.layers = list(layers)
        self.every = every
        self.device = device
        n_layers = len(self.layers)
        kw = {"dtype": torch.float64, "device": device}
        # setup time (watch()), not the hot path: one host-to-device copy is fine here
        self._layer_index = torch.tensor(list(layer_of_param), dtype=torch.long, device=device)
        self._zero = torch.zeros((), device=device)
        self._multi_device = len({p.device for p in self.params}) > 1
        self.acc = torch.zeros(n_layers + 4, **kw)  # layer Σn², Σn², zero, nonfinite, samples
        self._pending = torch.zeros(n_layers + 3, **kw)
        self._pending_valid = False
        self.host = torch.zeros(3, **kw)  # forwards, backwards, ranks
        self._forwards = 0
        self._backwards = 0
        self._window: int | None = None
        self._sample_step: int | None = None
        self._active: dict[str, Any] = {}

    # ---- hook side ---------------------------------------------------------------------

    def forward_seen(self) -> None:
        self._forwards += 1

    def _due(self, step: int) -> bool:
        window = -(-step // self.every)  # ceil(step / every), the run's flush windows
        if window != self._window:
            self._commit()  # a sample of an earlier step in this flush window
            self._window, self._sample_step = window, step
        return step == self._sample_step

    @torch.no_grad()
    def after_backward(self, step: int) -> None:
        self._backwards += 1
        if not self.params or not self._due(step):
            return
        grads = [self._zero if p.grad is None else p.grad.detach() for p in self.params]
        norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
        if self._multi_device:
            norms = [n.to(self.device) for n in norms]
        norms = torch.stack(norms).to(torch.float64)  # (P,)
        sq = norms.square()
        layer_sq = torch.zeros(len(self.layers), dtype=torch.float64, device=self.device)
        layer_sq.index_add_(0, self._layer_index, sq)  # (L,)
        n = len(self.layers)
        self._pending[:n].copy_(layer_sq)
        self._pending[n].copy_(sq.sum())
        self._pending[n + 1].copy_((norms == 0).sum())
        self._pending[n + 2].copy_((~torch.isfinite(norms)).sum())
        self._pending_valid = True

    def _commit(self) -> None:
        if self._pending_valid:
            self.acc[:-1].add_(self._pending)
            self.acc[-1].add_(1)
            self._pending_valid = False

    # ---- flush -------------------------------------------------------------------------

    def state(self) -> Sequence[torch.Tensor]:
        self._commit()
        self.host[0].fill_(self._forwards)  # fill_ passes the value as a kernel argument
        self.host[1].fill_(self._backwards)
        self.host[2].fill_(1)
        return (self.acc, self.host)

    def reset(self) -> None:
        self.acc.zero_()
        self._forwards = self._backwards = 0

    def compute(self, state: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        acc, (forwards, backwards, _ranks) = state
        n = len(self.layers)
        layer_sq, (total, zero, nonfinite, samples) = acc[:n], acc[n:]
        records: list[Any] = []
        if samples > 0:
            records.append(Scalar("grad/norm", step, float(np.sqrt(total / samples)),
                                  wall_time))
            for layer, sq in zip(self.layers, layer_sq):
                records.append(Scalar(f"grad/{layer}/norm", step,
                                      float(np.sqrt(sq / samples)), wall_time))
            records.append(Scalar("grad/zero_frac", step,
                                  float(zero / samples / max(len(self.params), 1)), wall_time))
        if forwards <= 0 and samples <= 0:
            return records
        no_backward = forwards > 0 and backwards <= 0
        detached = no_backward or (samples > 0 and total == 0)
        records.append(Scalar("grad/detached", step, float(detached), wall_time))
        records += self._detached_alert(detached, no_backward, int(forwards), step, wall_time)
        if samples > 0:
            frozen = [layer for layer, sq in zip(self.layers, layer_sq) if sq == 0]
            records += self._frozen_alert(frozen if total > 0 else [], step, wall_time)
            records += self._nonfinite_alert(nonfinite / samples, step, wall_time)
        return records

    # ---- alerts (writer thread) ------------------------------------------------------

    def _episode(self, rule: str, value: Any, step: int, wall_time: float,
                 cleared: str) -> tuple[bool, list[Alert]]:
        """True when `value` starts a new episode of `rule`; a cleared alert when it ends."""
        before = self._active.get(rule)
        if value:
            self._active[rule] = value
            return value != before, []
        if before:
            del self._active[rule]
            return False, [Alert(step, rule, "info", cleared, state="cleared",
                                 wall_time=wall_time)]
        return False, []

    def _detached_alert(self, detached: bool, no_backward: bool, forwards: int, step: int,
                        wall_time: float) -> list[Alert]:
        new, out = self._episode("grads.detached", detached, step, wall_time,
                                 "trainable parameters receive gradients again")
        if not new:
            return out
        why = (f"the model ran {forwards} training forward passes but no backward pass "
               "reached a trainable parameter" if no_backward else
               "every trainable gradient is exactly zero")
        return [Alert(
            step, "grads.detached", "critical",
            f"the loss is detached from the trainable parameters: in the window ending at "
            f"step {step} {why}, so nothing is learning",
            action="Look for .detach(), .item() or torch.no_grad() between the model output "
                   "and the loss; with gradient checkpointing (use_reentrant=True) and frozen "
                   "embeddings call model.enable_input_require_grads(); check that the "
                   "parameters in the loss are the trainable ones.",
            wall_time=wall_time,
        )]

    def _frozen_alert(self, frozen: list[str], step: int, wall_time: float) -> list[Alert]:
        new, out = self._episode("grads.frozen_layers", tuple(frozen), step, wall_time,
                                 "every watched layer receives gradients again")
        if not new:
            return out
        names = ", ".join(frozen[:5]) + (", ..." if len(frozen) > 5 else "")
        return [Alert(
            step, "grads.frozen_layers", "warning",
            f"{len(frozen)} of {len(self.layers)} layers got no gradient (missing or all "
            f"zero) at step {step} while the others did: {names}",
            action="If these layers should train, check that the loss depends on them (no "
                   "detach or torch.no_grad in their path) and that their parameters are in "
                   "the optimizer; if they are meant to stay fixed, set requires_grad=False.",
            wall_time=wall_time,
        )]

    def _nonfinite_alert(self, tensors: float, step: int, wall_time: float) -> list[Alert]:
        new, out = self._episode("grads.nonfinite", tensors > 0, step, wall_time,
                                 "gradients are finite again")
        if not new:
            return out
        return [Alert(
            step, "grads.nonfinite", "critical",
            f"{tensors:g} of {len(self.params)} trainable tensors have non-finite gradients "
            f"at step {step} (grad/norm is not finite)",
            action="Skip the step or restart from the last finite checkpoint with a lower "
                   "learning rate; with fp16 use a loss scaler; hidden/*/nonfinite shows "
                   "where activations first went bad.",
            wall_time=wall_time,
        )]
