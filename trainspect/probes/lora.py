"""How far each layer has moved since the watch began: ‖ΔW‖_F per layer and block.

LoRA adapters (PEFT's `LoraLayer`: `lora_A` / `lora_B` keyed by adapter name, and the
`scaling` dict that already holds α/r, or α/√r with rsLoRA) are measured without ever
forming ΔW. With Gram matrices of the rank r (r x r, tiny):

    ‖B A‖_F²            = tr((BᵀB)(AAᵀ))
    ‖B A − B₀A₀‖_F²     = ‖BA‖² + ‖B₀A₀‖² − 2 tr((B₀ᵀB)(AA₀ᵀ))
    ‖ΔW‖_F              = scaling · ‖B A − B₀A₀‖_F

ΔW is the adapter's product now minus at the start of the watch. PEFT's default init
has B₀ = 0, so ΔW = scaling · BA and the snapshot is not even kept; other inits
(PiSSA, OLoRA, a resumed adapter) keep A₀ and B₀ and use the general form. All of it
runs in float64 (the expansion cancels when ΔW is small next to B₀A₀). A module's
scaling is read when the numbers are computed and taken as constant since the start.
DoRA's magnitude vector is not included: for DoRA this is the BA part only.

Trainable weights that are not LoRA factors (a full fine-tune, or PEFT's
`modules_to_save`) get plain parameter deltas ‖W − W₀‖_F against a snapshot taken at
the start, on the parameter's own device and in its dtype: that costs as much memory
as those weights, which is why `watch(full_deltas=None)` turns it on only below a size.

Under sharding (FSDP, tensor parallel, ZeRO-3) each rank reads its piece of every
factor and weight; the Grams and squared norms pool in the flush (lora_grams.py,
placement.py), so the numbers are those of the whole adapters and weights.

A block's value is the Frobenius norm of all its modules together, sqrt(Σ‖ΔW_m‖²),
and so is a layer's total. Values are computed at the flush (device work queued on the
training thread, no sync), at most once per `every` steps: they are values at that
step, not window sums.

Records: `lora/<layer>/<block>`, `lora/total`, the matrix `lora/layers` (rows layers,
columns blocks, NaN where a layer has no such block) and `lora/top` (the top-k layers
by total), `lora/b_zero_frac` (share of adapters whose B is still all zero) and an
alert when adapters have not moved after `every` steps. Full deltas use `delta/`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from trainspect.probes.base import Probe
from trainspect.probes.lora_grams import (
    Side,
    delta_sq,
    host_grams,
    keeps_start,
    side_grams,
    stack_2d,
)
from trainspect.probes.placement import Tracked, gather_views, placement_of
from trainspect.records import Alert, Matrix, Scalar

log = logging.getLogger("trainspect.probes.lora")


@dataclass
class AdapterRef:
    """One LoRA adapter on one module, as found in the model."""

    name: str  # short module name, e.g. "layers.3.self_attn.q_proj"
    layer: str  # "layers.3"
    block: str  # "qkv", "o", "mlp", or another name such as "audio_mlp"
    a: Any  # lora_A weight, (r, in) or (r, in, k, ...) for convolutions: a tensor or Tracked
    b: Any  # lora_B weight, (out, r) or (out, r, 1, ...): a tensor or Tracked
    scaling: Callable[[], float]  # reads the module's current scaling (α/r or α/√r)


@dataclass
class WeightRef:
    """One trainable weight that is not a LoRA factor (full fine-tune, modules_to_save)."""

    name: str
    layer: str
    block: str
    param: Any  # a tensor or Tracked


def as_tracked(name: str, t: Any) -> Tracked:
    return t if isinstance(t, Tracked) else Tracked(name, t, placement_of(t))


@dataclass
class _Table:
    """Cells (layer, block) in first-seen order, and which cell each item adds to."""

    layers: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)
    cells: list[tuple[str, str]] = field(default_factory=list)
    cell_of: list[int] = field(default_factory=list)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # cell's layer
    cols: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # cell's block
    _keys: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def of(cls, items: Sequence[Any]) -> _Table:
        table = cls()
        where: dict[tuple[str, str], int] = {}
        for item in items:
            key = (item.layer, item.block)
            if key not in where:
                where[key] = len(table.cells)
                table.cells.append(key)
                if item.layer not in table.layers:
                    table.layers.append(item.layer)
                if item.block not in table.blocks:
                    table.blocks.append(item.block)
            table.cell_of.append(where[key])
        table.rows = np.array([table.layers.index(layer) for layer, _ in table.cells], np.int64)
        table.cols = np.array([table.blocks.index(block) for _, block in table.cells], np.int64)
        return table

    def keys(self, prefix: str) -> list[str]:
        """`<prefix>/<layer>/<block>` per cell, made once."""
        made = self._keys.get(prefix)
        if made is None:
            made = self._keys[prefix] = [f"{prefix}/{layer}/{block}"
                                         for layer, block in self.cells]
        return made


def _chains(a: Tracked, b: Tracked) -> bool:
    """Whether B (out, r, ...) and A (r, in, ...) multiply: B's columns are A's rows."""
    r = a.placement.shape[0] if a.placement.shape else 0
    b_cols = math.prod(b.placement.shape[1:]) if len(b.placement.shape) > 1 else 0
    return r > 0 and b_cols == r


class LoraProbe(Probe):
    """LoRA ‖ΔW‖_F and full-weight ‖W − W₀‖_F per layer and block, every `every` steps.

    Cost: at most once per flush, one float64 bmm pair per factor shape group and one
    `_foreach_sub` + `_foreach_norm` per (layer, block) of full weights. Under sharding a
    factor whose Gram does not add up over the ranks' pieces (FSDP2 cuts A along its rank
    dim) travels whole in the flush: r·in values per such adapter. Memory: the snapshots
    (none for whole LoRA factors with B₀ = 0; the full weights' size for full deltas).
    """

    name = "lora"
    cadence = "every `every` steps, at the flush"
    cost = "a few tiny float64 matmuls per flush; full deltas: one pass over the weights"

    def __init__(self, adapters: Sequence[AdapterRef], weights: Sequence[WeightRef], *,
                 every: int, start_step: int, top_k: int = 5,
                 step_of: Callable[[], int] = lambda: 0) -> None:
        self.every = every
        self.start_step = start_step
        self.top_k = top_k
        self._step_of = step_of
        self._last_window: int | None = None
        self._alerted: set[str] = set()
        self.adapters: list[AdapterRef] = []
        for ref in adapters:
            ref = replace(ref, a=as_tracked(ref.name + ".a", ref.a),
                          b=as_tracked(ref.name + ".b", ref.b))
            if not _chains(ref.a, ref.b):
                log.debug("trainspect: skipping LoRA module %s: factors of shapes %s and %s "
                          "do not chain", ref.name, ref.a.placement.shape, ref.b.placement.shape)
                continue
            self.adapters.append(ref)
        self.weights = [replace(w, param=as_tracked(w.name, w.param)) for w in weights]
        self.device = self._device()
        self._sides = self._group_sides()
        self._pair_rows = self._pairs()
        self._snapshots = [w.param.data().clone() for w in self.weights]
        self.lora_table = _Table.of(self.adapters)
        self.full_table = _Table.of(self.weights)
        self._full_cells = self._group_weights()
        self._full_order = np.array([i for cell in self._full_cells for i in cell],
                                    dtype=np.int64)
        self._weight_pieces = np.array([w.param.placement.pieces for w in self.weights],
                                       dtype=np.float64)

    # ---- setup (once, may sync) --------------------------------------------------------

    def _group_sides(self) -> list[Side]:
        """Factors grouped by kind, whole shape, placement and whether the start is kept:
        the same groups, in the same order, on every rank."""
        by_key: dict[tuple, Side] = {}
        with torch.no_grad():
            for i, ref in enumerate(self.adapters):
                rank = ref.a.placement.shape[0]
                keep = keeps_start(ref)
                for kind, factor in (("a", ref.a), ("b", ref.b)):
                    placement = factor.placement
                    dims = set(range(1, len(placement.shape))) if kind == "a" else {0}
                    gram = placement.whole or (not placement.partial
                                               and placement.split is not None
                                               and set(placement.split) <= dims)
                    key = (kind, factor.param.device, placement, gram, keep)
                    side = by_key.setdefault(key, Side(kind, [], [], rank=rank, gram=gram,
                                                        with_start=keep))
                    side.index.append(i)
                    side.factors.append(factor)
            sides = list(by_key.values())
            for side in sides:
                if side.with_start:  # torch.stack copies
                    side.snapshot = stack_2d(side, [f.data() for f in side.factors])
                if not side.gram:
                    self._gather_buffer(side)
        return sides

    def _gather_buffer(self, side: Side) -> None:
        placements = [f.placement for f in side.factors]
        sizes = [p.numel() for p in placements]
        copies = 2 if side.with_start else 1
        total = sum(sizes)
        side.buffer = torch.zeros(copies * total, dtype=torch.float32, device=self.device)
        offsets = np.cumsum([0] + sizes)[:-1]
        side.views = gather_views(side.buffer, placements, offsets)
        if side.snapshot is not None:
            side.snapshot_views = gather_views(side.buffer, placements, offsets + total)
            torch._foreach_copy_(side.snapshot_views, [s.reshape(v.shape).to(v.dtype) for v, s
                                                       in zip(side.snapshot_views,
                                                              side.snapshot)])
            side.snapshot = None  # it travels in the buffer

    def _group_weights(self) -> list[list[int]]:
        cells: list[list[int]] = [[] for _ in self.full_table.cells]
        for i, cell in enumerate(self.full_table.cell_of):
            cells[cell].append(i)
        return cells

    def _device(self) -> torch.device:
        for t in [r.a for r in self.adapters] + [w.param for w in self.weights]:
            return t.data().device
        return torch.device("cpu")

    @property
    def empty(self) -> bool:
        return not self.adapters and not self.weights

    # ---- flush -------------------------------------------------------------------------

    def _due(self) -> bool:
        window = -(-self._step_of() // self.every)  # ceil(step / every)
        if window == self._last_window:
            return False
        self._last_window = window
        return True

    def state(self) -> Sequence[torch.Tensor]:
        if self.empty or not self._due():
            return ()
        with torch.no_grad():
            pieces = []
            for side in self._sides:
                if side.gram:
                    pieces.append(side_grams(side).reshape(-1))
                else:
                    torch._foreach_copy_(side.views, [f.data().reshape(v.shape).to(v.dtype)
                                                      for v, f in zip(side.views,
                                                                      side.factors)])
                    pieces.append(side.buffer)
            full_sq = _cat64([self._cell_sq(members) for members in self._full_cells],
                             self.device)
            ranks = torch.ones(1, dtype=torch.float64, device=self.device)
        return (*pieces, full_sq, ranks)

    def _cell_sq(self, members: list[int]) -> torch.Tensor:
        """‖W − W₀‖² of each piece of one (layer, block): temporaries of that cell's size."""
        params = [self.weights[i].param.data() for i in members]
        diffs = torch._foreach_sub(params, [self._snapshots[i] for i in members])
        norms = torch._foreach_norm(diffs, 2, dtype=torch.float32)
        return torch.stack(norms).to(torch.float64).square()

    def _side_grams(self, side: Side, array: np.ndarray, ranks: float) -> np.ndarray:
        """(m, k, r, r) Grams of one side from the pooled state (see placement.py)."""
        k = 3 if side.with_start else 1
        scale = side.factors[0].placement.pieces / ranks  # one placement per side
        if side.gram:
            return array.reshape(len(side.index), k, side.rank, side.rank) * scale
        total = sum(f.placement.numel() for f in side.factors)
        whole0 = array[total:2 * total] * scale if side.with_start else None
        return host_grams(side.kind, len(side.index), side.rank, array[:total] * scale,
                          whole0)

    def _pairs(self) -> list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]]:
        """(A side, B side, adapters, their rows in each side) for every pair of sides."""
        where: dict[int, tuple[int, int]] = {}
        for s, side in enumerate(self._sides):
            for row, i in enumerate(side.index):
                where[i * 2 + (side.kind == "b")] = (s, row)
        pairs: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for i in range(len(self.adapters)):
            (sa, ra), (sb, rb) = where[2 * i], where[2 * i + 1]
            pairs.setdefault((sa, sb), []).append((i, ra, rb))
        return [(sa, sb, *map(np.array, zip(*members))) for (sa, sb), members in pairs.items()]

    def compute(self, state: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        *side_arrays, full_sq, ranks_arr = state
        ranks = max(float(ranks_arr[0]), 1.0)
        records: list[Any] = []
        if self.adapters:
            grams = [self._side_grams(side, array, ranks)
                     for side, array in zip(self._sides, side_arrays)]
            lora_sq, b_sq = np.zeros(len(self.adapters)), np.zeros(len(self.adapters))
            for sa, sb, index, rows_a, rows_b in self._pair_rows:
                lora_sq[index], b_sq[index] = delta_sq(grams[sa][rows_a], grams[sb][rows_b])
            scales = np.array([ref.scaling() for ref in self.adapters], dtype=np.float64)
            cell_sq = np.zeros(len(self.lora_table.cells))
            np.add.at(cell_sq, self.lora_table.cell_of, np.clip(lora_sq, 0.0, None) * scales ** 2)
            records += _table_records("lora", self.lora_table, cell_sq, step, wall_time,
                                      self.top_k)
            b_zero = b_sq == 0
            records.append(Scalar("lora/b_zero_frac", step, float(b_zero.mean()), wall_time))
            records += self._b_zero_alert(b_zero, step, wall_time)
        if self.weights:
            per_weight = np.empty(len(self.weights))
            per_weight[self._full_order] = full_sq
            per_weight *= self._weight_pieces / ranks
            cell_sq = np.zeros(len(self.full_table.cells))
            np.add.at(cell_sq, self.full_table.cell_of, per_weight)
            records += _table_records("delta", self.full_table, np.clip(cell_sq, 0.0, None),
                                      step, wall_time, self.top_k)
        return records

    def _b_zero_alert(self, b_zero: np.ndarray, step: int, wall_time: float) -> list[Alert]:
        steps = step - self.start_step
        if steps < self.every:
            return []
        active = bool(b_zero.any())
        if active == ("lora.b_zero" in self._alerted):
            return []
        if not active:
            self._alerted.discard("lora.b_zero")
            return [Alert(step, "lora.b_zero", "info", "LoRA B matrices are no longer all "
                          "zero: the adapters are training", state="cleared",
                          wall_time=wall_time)]
        self._alerted.add("lora.b_zero")
        names = [self.adapters[i].name for i in np.flatnonzero(b_zero)]
        examples = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return [Alert(
            step, "lora.b_zero", "critical",
            f"LoRA B is still all zero in {len(names)} of {len(self.adapters)} adapted "
            f"modules ({examples}) after {steps} steps: those adapters have not changed "
            "the model at all",
            action="Build the optimizer from the trainable parameters after get_peft_model "
                   "(AdamW(p for p in model.parameters() if p.requires_grad)), check that the "
                   "learning rate is above 0 and that gradients reach the adapters "
                   "(grad/zero_frac, grad/detached).",
            wall_time=wall_time,
        )]


def _cat64(pieces: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    if not pieces:
        return torch.zeros(0, dtype=torch.float64, device=device)
    return torch.cat([p.to(device) for p in pieces])


def _table_records(prefix: str, table: _Table, cell_sq: np.ndarray, step: int,
                   wall_time: float, top_k: int) -> list[Any]:
    """Scalars per cell, the total, the layers x blocks matrix and the top-k layers."""
    norms = np.sqrt(cell_sq)
    records: list[Any] = [Scalar(key, step, value, wall_time)
                          for key, value in zip(table.keys(prefix), norms.tolist())]
    records.append(Scalar(f"{prefix}/total", step, math.sqrt(float(cell_sq.sum())), wall_time))
    grid = np.full((len(table.layers), len(table.blocks)), np.nan)
    grid[table.rows, table.cols] = norms
    layer_sq = np.zeros(len(table.layers))
    np.add.at(layer_sq, table.rows, cell_sq)  # in cell order, as a loop would add
    records.append(Matrix(f"{prefix}/layers", step, grid.tolist(), list(table.layers),
                          list(table.blocks), wall_time))
    order = np.argsort(-layer_sq, kind="stable")[:top_k]
    top = [[math.sqrt(layer_sq[i]), *grid[i].tolist()] for i in order]
    records.append(Matrix(f"{prefix}/top", step, top, [table.layers[i] for i in order],
                          ["total", *table.blocks], wall_time))
    return records
