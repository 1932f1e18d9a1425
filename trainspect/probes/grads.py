"""Gradients: global and per-layer norms, the share of trainable tensors with no gradient,
and a loss detached from the trainable parameters.

`watch` calls `after_backward(step)` once at the end of every backward pass that gave
any trainable parameter a gradient (see watch.py for how that point is found), and
`forward_seen()` on every training forward. On one step every `every` steps the norms
are taken with one fused `torch._foreach_norm` over all trainable gradients (fp32
accumulation) into a float64 vector of squared norms, one per tensor: three kernels, no
host sync. Layers, zero and non-finite tensors are read from that vector at the flush,
on the writer thread.

With gradient accumulation a step has several backward passes: each one of the sampled
step overwrites the pending sample, so the kept one is the gradient after the last
micro-batch, the full accumulated gradient that the optimizer steps on (before any
clipping: clipping happens after the backward). Samples of several steps in one flush
window are averaged as squared norms, so `grad/norm` is their root mean square.

`grad/zero_frac` is the share of trainable parameter tensors whose gradient is missing
(None) or exactly zero everywhere, in every sampled step of the window. `grad/detached`
is 1 for a window in which the model ran training forwards (train mode, grad enabled)
but no backward reached a trainable parameter, or in which the sampled gradient was
zero everywhere.

Across ranks (DDP, FSDP1 and FSDP2, tensor parallelism, ZeRO-3) each rank takes the
squared norm of its own piece of every gradient, and the flush sums those per tensor:
compute scales each tensor's pooled sum by `pieces / ranks` (placement.py), so a
replicated gradient counts once and a sharded one is the sum of its shards. Zero and
non-finite tensors are judged on those pooled per-tensor sums, so they see every shard.
A gradient whose pieces are addends (a DTensor placed `Partial`, e.g. a norm weight
under sequence parallelism) has no such sum: its pieces travel whole in the flush
(one row per sampled step of the window) and compute adds them up before squaring.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainspect.probes.base import Probe
from trainspect.probes.placement import Placement, Tracked, gather_views, is_dtensor
from trainspect.records import Alert, Scalar


def local_sq_norms(grads: Sequence[torch.Tensor], out: torch.Tensor) -> None:
    """out[i] = ‖grads[i]‖² (fp32 norms, one multi-tensor launch), float64; no host sync."""
    norms = torch.stack(torch._foreach_norm(grads, 2, dtype=torch.float32))  # (P,)
    torch.mul(norms, norms, out=out)


def whole_sq(pooled_sq: np.ndarray, pieces: np.ndarray, ranks: float) -> np.ndarray:
    """Each tensor's ‖g‖² from the ranks' summed piece norms (see placement.py)."""
    return pooled_sq * pieces / ranks


def summed_pieces_sq(rows: np.ndarray, placements: Sequence[Placement],
                     ranks: float) -> np.ndarray:
    """Σ over rows (samples) of ‖g‖² per tensor, from pooled whole-size rows."""
    out = np.zeros(len(placements))
    offset = 0
    for i, placement in enumerate(placements):
        n = placement.numel()
        whole = rows[:, offset:offset + n] * (placement.pieces / ranks)  # (S, n)
        out[i] = float(np.square(whole).sum())
        offset += n
    return out


class GradProbe(Probe):
    """Norms of `tracked` parameters' gradients grouped by `layer_of_param` into `layers`."""

    name = "grads"
    cadence = "one step every `every` steps (its last backward pass)"
    cost = "one _foreach_norm over the gradients and ~3 small kernels per sampled step"

    def __init__(self, tracked: Sequence[Tracked], layer_of_param: Sequence[int],
                 layers: Sequence[str], device: torch.device, *, every: int,
                 samples_per_flush: int = 2) -> None:
        self.tracked = list(tracked)
        self.params = [t.param for t in self.tracked]
        self.layers = list(layers)
        self._layer_keys = [f"grad/{layer}/norm" for layer in self.layers]
        self.every = every
        self.device = device
        self.layer_index = np.asarray(layer_of_param, dtype=np.int64)
        self.pieces = np.array([t.placement.pieces for t in self.tracked], dtype=np.float64)
        kw = {"dtype": torch.float64, "device": device}
        n = len(self.tracked)
        self._zero = torch.zeros((), device=device)
        self._multi_device = len({t.param.device for t in self.tracked}) > 1
        self._plain = all(t.span is None for t in self.tracked)
        self._dtensors = any(is_dtensor(t.param) for t in self.tracked)
        self.acc = torch.zeros(n + 1, **kw)  # Σ over samples of each piece's ‖g‖²; samples
        self._pending = torch.zeros(n, **kw)
        self._pending_valid = False
        self.host = torch.zeros(3, **kw)  # forwards, backwards, ranks
        # gradients whose pieces are addends (Partial): found at the first sample
        self._rows_max = max(samples_per_flush, 1)
        self._addends: list[int] | None = None
        self._addend_placements: list[Placement] = []
        self.rows: torch.Tensor | None = None  # (rows_max, Σ numel) whole-size rows
        self._row_views: list[list[torch.Tensor]] = []
        self._rows_used = 0
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

    def _grads(self) -> list[torch.Tensor]:
        if self._plain:  # the common case: plain tensors, every gradient there
            grads = [p.grad for p in self.params]
            if self._dtensors or any(g is None for g in grads):
                grads = [self._zero if g is None else getattr(g, "_local_tensor", g)
                         for g in grads]
            return grads
        return [self._zero if g is None else g for g in (t.grad() for t in self.tracked)]

    @torch.no_grad()
    def after_backward(self, step: int) -> None:
        self._backwards += 1
        if not self.tracked or not self._due(step):
            return
        grads = self._grads()
        if self._addends is None:
            self._read_placements()
        if self._multi_device:
            norms = torch._foreach_norm(grads, 2, dtype=torch.float32)
            sq = torch.stack([n.to(self.device) for n in norms]).to(torch.float64).square()
            self._pending.copy_(sq)
        else:
            local_sq_norms(grads, self._pending)
        if self.rows is not None and self._rows_used < self._rows_max:
            row = self._row_views[self._rows_used]
            self.rows[self._rows_used].zero_()  # a later backward of this step rewrites it
            pieces = [grads[i] for i in self._addends]
            present = [(v, g) for v, g in zip(row, pieces) if g is not self._zero]
            if present:
                torch._foreach_copy_([v for v, _ in present],
                                     [g.reshape(v.shape).to(v.dtype) for v, g in present])
        self._pending_valid = True

    def _read_placements(self) -> None:
        """Once, at the first sample: a DTensor gradient may be placed otherwise than its
        parameter (TP: Replicate for a vocabulary-sharded embedding, Partial for norms
        under sequence parallelism); addends get whole-size rows."""
        placements = [t.grad_placement() for t in self.tracked]
        self.pieces = np.array([pl.pieces for pl in placements], dtype=np.float64)
        self._addends = [i for i, pl in enumerate(placements) if not pl.norm_adds_up()]
        if not self._addends:
            return
        self._addend_placements = [placements[i] for i in self._addends]
        offsets = np.cumsum([0] + [pl.numel() for pl in self._addend_placements])
        self.rows = torch.zeros(self._rows_max, int(offsets[-1]), dtype=torch.float32,
                                device=self.device)
        self._row_views = [gather_views(self.rows[r], self._addend_placements, offsets[:-1])
                           for r in range(self._rows_max)]

    def _commit(self) -> None:
        if self._pending_valid:
            self.acc[:-1].add_(self._pending)
            self.acc[-1].add_(1)
            self._pending_valid = False
            self._rows_used = min(self._rows_used + 1, self._rows_max)

    # ---- flush -------------------------------------------------------------------------

    def state(self) -> Sequence[torch.Tensor]:
        self._commit()
        self.host[0].fill_(self._forwards)  # fill_ passes the value as a kernel argument
        self.host[1].fill_(self._backwards)
        self.host[2].fill_(1)
        if self.rows is None:
            return (self.acc, self.host)
        return (self.acc, self.host, self.rows)

    def reset(self) -> None:
        self.acc.zero_()
        if self.rows is not None:
            self.rows.zero_()
        self._rows_used = 0
        self._forwards = self._backwards = 0

    def compute(self, state: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        acc, (forwards, backwards, ranks) = state[0], state[1]
        ranks = max(float(ranks), 1.0)
        n = len(self.tracked)
        sq_sum, samples = whole_sq(acc[:n], self.pieces, ranks), acc[n] / ranks
        if len(state) > 2 and self._addends:
            rows = state[2].reshape(self._rows_max, -1)
            sq_sum[self._addends] = summed_pieces_sq(rows, self._addend_placements, ranks)
        records: list[Any] = []
        layer_sq = np.zeros(len(self.layers))
        total = zero = nonfinite = 0.0
        if samples > 0:
            mean_sq = sq_sum / samples
            np.add.at(layer_sq, self.layer_index, mean_sq)
            total = float(mean_sq.sum())
            zero = float((sq_sum == 0).sum())
            nonfinite = float((~np.isfinite(sq_sum)).sum())
            records.append(Scalar("grad/norm", step, math.sqrt(total), wall_time))
            records += [Scalar(key, step, norm, wall_time)
                        for key, norm in zip(self._layer_keys, np.sqrt(layer_sq).tolist())]
            records.append(Scalar("grad/zero_frac", step, zero / max(n, 1), wall_time))
        if forwards <= 0 and samples <= 0:
            return records
        no_backward = forwards > 0 and backwards <= 0
        detached = no_backward or (samples > 0 and total == 0)
        records.append(Scalar("grad/detached", step, float(detached), wall_time))
        records += self._detached_alert(detached, no_backward, int(forwards / ranks), step,
                                        wall_time)
        if samples > 0:
            frozen = [layer for layer, sq in zip(self.layers, layer_sq) if sq == 0]
            records += self._frozen_alert(frozen if total > 0 else [], step, wall_time)
            records += self._nonfinite_alert(nonfinite, step, wall_time)
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
