"""Hidden states: mean, std, absmax and non-finite count of chosen modules' outputs, and
the first module whose output went non-finite.

Forward hooks (attached by `watch`) hand this probe each watched module's output. Two
things happen there, both as queued device work with no host sync:

- The finiteness check, on every training forward by default: the hooks only note the
  outputs; at the end of the model's forward one `torch._foreach_norm(ord=inf)` takes
  every output's absmax in one multi-tensor launch (NaN and inf propagate through a
  max), and one comparison `absmax < inf` picks the first offending module in forward
  order, kept in a device int (six launches in all): the earliest step wins, then the
  earliest module. At the flush that int
  names the module in an alert. Forward order is the model's module order
  (`named_modules`), which for decoder layers is the order they run in. The outputs are
  held only until the end of the forward, where autograd keeps them alive anyway, so
  forwards without grad (eval, generation) are not checked.
- The statistics, on the training forwards of one step every `every` steps: sums of
  x and x² (fp32 reductions over the output, accumulated in float64), absmax and the
  count of non-finite elements, pooled over the sampled forwards of the window.

std comes from the pooled sums, sqrt(E[x²] − E[x]²), which is exact enough for hidden
states (mean small next to std); one NaN makes that module's mean and std NaN for the
window, and `nonfinite` says how many elements were not finite.

Steps here are the run's step counter when the forward ran: in a loop that logs after
the backward, that is the previous step. Across ranks the sums add up; absmax and the
first offence take the maximum over ranks (one small MAX all-reduce at the flush).
Under FSDP every rank's outputs are its own rows; under tensor parallelism with sequence
parallelism (torchtitan's plan) its own positions, so the pooled sums are the global
batch's. A layer output replicated over a tensor-parallel group (TP without sequence
parallelism) is counted once per rank of that group: mean, std and absmax are the same
(numerator and denominator scale alike), `nonfinite` counts each element that many times.
A DTensor output is read as this rank's local piece.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainspect.distributed import all_reduce_max
from trainspect.probes.base import Probe
from trainspect.probes.placement import local
from trainspect.records import Alert, Scalar

# Offence codes pack (step, module) into one int so that "earliest" is a max-reduction:
# code = (STEP_CAP - step) * (n + 1) + (n - i). Exact in float64 up to n of ~2000 modules.
STEP_CAP = 2**31


def first_tensor(output: Any) -> torch.Tensor | None:
    """The hidden state in a module's output: a tensor, or the first tensor of a tuple,
    list or dict-like output (HF ModelOutput)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        items = output
    elif hasattr(output, "values"):
        items = list(output.values())
    else:
        return None
    for item in items:
        if isinstance(item, torch.Tensor):
            return item
    return None


def decode_offence(code: int, n: int) -> tuple[int, int]:
    """(step, module index) from an offence code (see STEP_CAP)."""
    return STEP_CAP - code // (n + 1), n - code % (n + 1)


class HiddenProbe(Probe):
    """Statistics of `labels`' outputs; hooks call begin_forward, output, end_forward."""

    name = "hidden"
    cadence = "finiteness: every training forward (or sampled only); statistics: one step " \
              "every `every`"
    cost = "one multi-tensor absmax per forward; 4 launches per module when sampled"

    def __init__(self, labels: Sequence[str], device: torch.device, *, every: int,
                 check_every_step: bool = True) -> None:
        n = len(labels)
        self.labels = list(labels)
        self._keys = [[f"hidden/{label}/{stat}" for stat in ("mean", "std", "absmax",
                                                              "nonfinite")]
                      for label in self.labels]
        self.every = every
        self.check_every_step = check_every_step
        kw = {"device": device}
        self.stats = torch.zeros(n, 4, dtype=torch.float64, **kw)  # count, Σx, Σx², finite
        self._numel = [0] * n  # elements seen per module (host; the count column at flush)
        self.absmax = torch.zeros(n, dtype=torch.float64, **kw)
        self.first = torch.zeros(1, dtype=torch.int64, **kw)  # 0: no offence in the window
        self.host = torch.zeros(3, dtype=torch.float64, **kw)  # checked, sampled, ranks
        self._index = torch.arange(n, dtype=torch.int64, **kw)
        self._codes = n - self._index  # n - i: the earliest module has the largest code
        self._all_slots = tuple(range(n))
        self._patterns: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        self._outs: list[torch.Tensor] = []
        self._slots: list[int] = []
        self._checked = 0
        self._sampled = 0
        self._collecting = False
        self._sampling = False
        self._window: int | None = None
        self._sample_step: int | None = None
        self._nan_active = False

    # ---- hook side (training thread, device work only) ---------------------------------

    def _due(self, step: int) -> bool:
        window = -(-step // self.every)  # ceil(step / every), the run's flush windows
        if window != self._window:
            self._window, self._sample_step = window, step
        return step == self._sample_step

    def begin_forward(self, step: int, training: bool) -> None:
        self._sampling = training and self._due(step)
        # outputs are only held until the end of a training forward (where autograd keeps
        # them alive anyway); no-grad forwards (eval, generation) are not checked
        self._collecting = training and (self.check_every_step or self._sampling)
        self._outs.clear()
        self._slots.clear()

    def output(self, i: int, output: Any) -> None:
        """A watched module's output: only noted here, measured at the end of the forward."""
        if not self._collecting:
            return
        x = output if type(output) is torch.Tensor else local(first_tensor(output))
        if x is not None and x.is_floating_point():  # a DTensor output: this rank's piece
            self._outs.append(x)  # a reference; end_forward reads it under no_grad
            self._slots.append(i)

    def end_forward(self, step: int) -> None:
        if not self._outs:
            self._sampling = self._collecting = False
            return
        xs, slots = list(self._outs), tuple(self._slots)
        self._outs.clear()
        self._slots.clear()
        with torch.no_grad():
            self._measure(xs, slots, step)
        self._sampling = self._collecting = False

    def _measure(self, xs: list[torch.Tensor], slots: tuple[int, ...], step: int) -> None:
        codes, index = self._codes_for(slots)
        # absmax of every output in one multi-tensor launch: finite iff the output is,
        # i.e. iff absmax < inf (a NaN compares False); six launches in all
        absmax = torch.stack(torch._foreach_norm(xs, float("inf"), dtype=torch.float32))
        n = len(self.labels)
        term = (STEP_CAP - min(max(step, 0), STEP_CAP - 1)) * (n + 1)
        candidate = torch.where(absmax < float("inf"), 0, codes + term).amax()
        torch.maximum(self.first, candidate, out=self.first)
        self._checked += 1
        if self._sampling:
            self._sample(xs, slots, absmax, index)
            self._sampled += 1

    def _sample(self, xs: list[torch.Tensor], slots: tuple[int, ...], absmax: torch.Tensor,
                index: torch.Tensor) -> None:
        """Σx, Σx² and the finite count of every output: 4 launches per module (the
        finite count as x − x == 0, which holds exactly for finite x: `isfinite` would
        take 4 launches itself), one multi-tensor norm, one add."""
        sums = torch.stack([torch.sum(x, dtype=torch.float32) for x in xs])  # (k,)
        norms = torch.stack(torch._foreach_norm(xs, 2, dtype=torch.float32))  # (k,)
        finite = torch.stack([torch.sub(x, x).eq(0).sum() for x in xs])  # (k,) int64
        update = torch.stack([sums.to(torch.float64), norms.to(torch.float64).square(),
                              finite.to(torch.float64)], dim=1)  # (k, 3)
        self.stats[:, 1:].index_add_(0, index, update)
        for slot, x in zip(slots, xs):
            self._numel[slot] += x.numel()  # host: written into the state at the flush
        self.absmax.scatter_reduce_(0, index, absmax.to(torch.float64), "amax")

    def _codes_for(self, slots: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(n - slot, slot) as device tensors: all modules in order is the rule; other
        patterns (a module skipped or called twice) are built once with fill_ and kept."""
        if slots == self._all_slots:
            return self._codes, self._index
        cached = self._patterns.get(slots)
        if cached is None:
            if len(self._patterns) >= 16:
                self._patterns.clear()
            index = torch.empty(len(slots), dtype=torch.int64, device=self.first.device)
            for j, slot in enumerate(slots):
                index[j].fill_(slot)  # a kernel argument, not a host-to-device copy
            cached = self._patterns[slots] = (len(self.labels) - index, index)
        return cached

    # ---- flush -------------------------------------------------------------------------

    def state(self) -> Sequence[torch.Tensor]:
        if not self.labels:
            return ()
        packed = torch.cat([self.absmax, self.first.to(torch.float64)])  # (n + 1,)
        all_reduce_max(packed)  # the flush then sums: compute divides by the rank count
        self._write_counts()
        self.host[0].fill_(self._checked)  # fill_ passes the value as a kernel argument
        self.host[1].fill_(self._sampled)
        self.host[2].fill_(1)
        return (self.stats, packed, self.host)

    def _write_counts(self) -> None:
        """The host's element counts into the count column: one index_fill_ per distinct
        count (the decoder layers' outputs all have B·T·d elements: usually one)."""
        by_count: dict[int, list[int]] = {}
        for slot, numel in enumerate(self._numel):
            if numel:
                by_count.setdefault(numel, []).append(slot)
        for numel, slots in by_count.items():
            index = self._codes_for(tuple(slots))[1]
            self.stats[:, 0].index_fill_(0, index, numel)  # the value is a kernel argument

    def reset(self) -> None:
        self.stats.zero_()
        self.absmax.zero_()
        self.first.zero_()
        self._numel = [0] * len(self.labels)
        self._checked = self._sampled = 0

    def compute(self, state: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        stats, packed, host = state
        n = len(self.labels)
        stats = stats.reshape(n, 4)
        ranks = max(float(host[2]), 1.0)
        absmax, first = packed[:n] / ranks, int(round(packed[n] / ranks))
        count, s1, s2, finite = stats.T
        seen = count > 0
        with np.errstate(divide="ignore", invalid="ignore"):  # modules not seen: dropped
            mean = s1 / count
            spread = s2 / count - mean * mean
            std = np.where(np.isfinite(s2), np.sqrt(np.where(spread < 0, 0.0, spread)), np.nan)
        values = np.stack([mean, std, absmax, count - finite], axis=1)[seen].ravel().tolist()
        keys = [key for i in np.flatnonzero(seen).tolist() for key in self._keys[i]]
        records: list[Any] = [Scalar(k, step, v, wall_time) for k, v in zip(keys, values)]
        return records + self._offence_alert(first, float(host[0]), step, wall_time)

    def _offence_alert(self, first: int, checked: float, step: int,
                       wall_time: float) -> list[Alert]:
        n = len(self.labels)
        if first <= 0:
            if checked > 0 and self._nan_active:
                self._nan_active = False
                return [Alert(step, "hidden.nonfinite", "info",
                              "hidden states are finite again in every watched module",
                              state="cleared", wall_time=wall_time)]
            return []
        if self._nan_active:
            return []
        self._nan_active = True
        at_step, i = decode_offence(first, n)
        label = self.labels[i]
        return [Alert(
            step, "hidden.nonfinite", "critical",
            f"the first non-finite hidden state came from `{label}` (module {i + 1} of {n} "
            f"in forward order), in a forward pass at step {at_step}",
            action=f"Look at what feeds `{label}` at that step: its input and its weights. "
                   "Usual causes: a learning rate too high (restart from the last finite "
                   "checkpoint with a lower one), fp16 overflow (train in bf16 or use a loss "
                   "scaler), or a bad batch (log the ids of that step's batch).",
            wall_time=wall_time,
        )]
