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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainspect.probes.base import Probe
from trainspect.records import Alert, Matrix, Scalar

log = logging.getLogger("trainspect.probes.lora")


@dataclass
class AdapterRef:
    """One LoRA adapter on one module, as found in the model."""

    name: str  # short module name, e.g. "layers.3.self_attn.q_proj"
    layer: str  # "layers.3"
    block: str  # "qkv", "o", "mlp", or another name such as "audio_mlp"
    a: torch.Tensor  # lora_A weight, (r, in) or (r, in, k, ...) for convolutions
    b: torch.Tensor  # lora_B weight, (out, r) or (out, r, 1, ...)
    scaling: Callable[[], float]  # reads the module's current scaling (α/r or α/√r)


@dataclass
class WeightRef:
    """One trainable weight that is not a LoRA factor (full fine-tune, modules_to_save)."""

    name: str
    layer: str
    block: str
    param: torch.Tensor


@dataclass
class _Group:
    """Adapters of one shape on one device: their Gram matrices come from one bmm."""

    index: list[int]  # positions in the probe's adapter list
    a: list[torch.Tensor]
    b: list[torch.Tensor]
    rank: int
    a0: torch.Tensor | None = None  # (m, r, in) snapshot, only when B₀A₀ != 0
    b0: torch.Tensor | None = None  # (m, out, r)
    init_sq: torch.Tensor | None = None  # (m,) ‖B₀A₀‖² in float64


@dataclass
class _Table:
    """Cells (layer, block) in first-seen order, and which cell each item adds to."""

    layers: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)
    cells: list[tuple[str, str]] = field(default_factory=list)
    cell_of: list[int] = field(default_factory=list)

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
        return table


def _as_2d(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(r, in) and (out, r) views of the factors, or None if they do not chain."""
    r = a.shape[0]
    a2 = a.reshape(r, -1)
    b2 = b.reshape(b.shape[0], -1)
    return (a2, b2) if b2.shape[1] == r else None


def _stack64(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors]).to(torch.float64)


def adapter_sq_norms(group: _Group) -> tuple[torch.Tensor, torch.Tensor]:
    """(‖BA − B₀A₀‖², ‖B‖²) per adapter of `group`, float64, unscaled; no host sync."""
    a = _stack64([x.reshape(group.rank, -1) for x in group.a])  # (m, r, in)
    b = _stack64([x.reshape(x.shape[0], -1) for x in group.b])  # (m, out, r)
    gram_b = b.transpose(1, 2) @ b  # (m, r, r) BᵀB
    gram_a = a @ a.transpose(1, 2)  # (m, r, r) AAᵀ, symmetric: tr(XY) = Σ X ⊙ Yᵀ = Σ X ⊙ Y
    sq = (gram_b * gram_a).sum(dim=(1, 2))  # (m,)
    if group.a0 is not None:
        cross_b = group.b0.transpose(1, 2).to(torch.float64) @ b  # (m, r, r) B₀ᵀB
        cross_a = a @ group.a0.transpose(1, 2).to(torch.float64)  # (m, r, r) AA₀ᵀ
        sq = sq + group.init_sq - 2 * (cross_b * cross_a.transpose(1, 2)).sum(dim=(1, 2))
    b_sq = gram_b.diagonal(dim1=1, dim2=2).sum(dim=-1)  # (m,) ‖B‖² = tr(BᵀB)
    return sq, b_sq


class LoraProbe(Probe):
    """LoRA ‖ΔW‖_F and full-weight ‖W − W₀‖_F per layer and block, every `every` steps.

    Cost: at most once per flush, one float64 bmm pair per adapter shape group and one
    `_foreach_sub` + `_foreach_norm` per (layer, block) of full weights. Memory: the
    snapshots (none for LoRA with B₀ = 0; the full weights' size for full deltas).
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
            if _as_2d(ref.a, ref.b) is None:
                log.debug("trainspect: skipping LoRA module %s: factors of shapes %s and %s "
                          "do not chain", ref.name, tuple(ref.a.shape), tuple(ref.b.shape))
                continue
            self.adapters.append(ref)
        self.weights = list(weights)
        self._groups = self._group_adapters()
        self._order = np.array([i for g in self._groups for i in g.index], dtype=np.int64)
        self._snapshots = [w.param.detach().clone() for w in self.weights]
        self.lora_table = _Table.of(self.adapters)
        self.full_table = _Table.of(self.weights)
        self._full_cells = self._group_weights()
        self.device = self._device()

    # ---- setup (once, may sync) --------------------------------------------------------

    def _group_adapters(self) -> list[_Group]:
        by_shape: dict[tuple, _Group] = {}
        for i, ref in enumerate(self.adapters):
            a2, b2 = _as_2d(ref.a, ref.b)
            key = (ref.a.device, tuple(a2.shape), tuple(b2.shape))
            group = by_shape.setdefault(key, _Group([], [], [], rank=a2.shape[0]))
            group.index.append(i)
            group.a.append(ref.a)
            group.b.append(ref.b)
        groups = list(by_shape.values())
        with torch.no_grad():
            for group in groups:
                b0 = torch.stack([x.detach().reshape(x.shape[0], -1) for x in group.b])
                if bool((b0 == 0).all()):  # PEFT's default init: B₀A₀ = 0, keep nothing
                    continue
                group.b0 = b0  # torch.stack made a copy
                group.a0 = torch.stack([x.detach().reshape(group.rank, -1) for x in group.a])
                b64, a64 = group.b0.to(torch.float64), group.a0.to(torch.float64)
                group.init_sq = ((b64.transpose(1, 2) @ b64)
                                 * (a64 @ a64.transpose(1, 2))).sum(dim=(1, 2))
        return groups

    def _group_weights(self) -> list[list[int]]:
        cells: list[list[int]] = [[] for _ in self.full_table.cells]
        for i, cell in enumerate(self.full_table.cell_of):
            cells[cell].append(i)
        return cells

    def _device(self) -> torch.device:
        for t in [r.a for r in self.adapters] + [w.param for w in self.weights]:
            return t.device
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
            pieces = [adapter_sq_norms(group) for group in self._groups]
            # group order; compute() puts them back in adapter order (self._order)
            lora_sq = _cat64([sq for sq, _ in pieces], self.device)
            b_sq = _cat64([bsq for _, bsq in pieces], self.device)
            full_sq = _cat64([self._cell_sq(members) for members in self._full_cells],
                             self.device)
            ranks = torch.ones(1, dtype=torch.float64, device=self.device)
        return (lora_sq, b_sq, full_sq, ranks)

    def _cell_sq(self, members: list[int]) -> torch.Tensor:
        """Σ ‖W − W₀‖² over one (layer, block): temporaries of that cell's size only."""
        params = [self.weights[i].param.detach() for i in members]
        diffs = torch._foreach_sub(params, [self._snapshots[i] for i in members])
        norms = torch._foreach_norm(diffs, 2, dtype=torch.float32)
        return torch.stack(norms).to(torch.float64).square().sum().reshape(1)

    def compute(self, state: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        grouped_sq, grouped_b_sq, full_sq, ranks = state
        n_ranks = max(float(ranks[0]), 1.0)  # replicated weights: each rank adds the same
        lora_sq, b_sq = np.empty_like(grouped_sq), np.empty_like(grouped_b_sq)
        lora_sq[self._order], b_sq[self._order] = grouped_sq, grouped_b_sq
        records: list[Any] = []
        if self.adapters:
            scales = np.array([ref.scaling() for ref in self.adapters], dtype=np.float64)
            cell_sq = np.zeros(len(self.lora_table.cells))
            np.add.at(cell_sq, self.lora_table.cell_of,
                      np.clip(lora_sq / n_ranks, 0.0, None) * scales ** 2)
            records += _table_records("lora", self.lora_table, cell_sq, step, wall_time,
                                      self.top_k)
            b_zero = (b_sq / n_ranks) == 0
            frac = float(b_zero.mean())
            records.append(Scalar("lora/b_zero_frac", step, frac, wall_time))
            records += self._b_zero_alert(b_zero, step, wall_time)
        if self.weights:
            records += _table_records("delta", self.full_table,
                                      np.clip(full_sq / n_ranks, 0.0, None), step, wall_time,
                                      self.top_k)
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
    records: list[Any] = []
    for (layer, block), sq in zip(table.cells, cell_sq):
        records.append(Scalar(f"{prefix}/{layer}/{block}", step, math.sqrt(sq), wall_time))
    records.append(Scalar(f"{prefix}/total", step, math.sqrt(float(cell_sq.sum())), wall_time))
    row = {layer: i for i, layer in enumerate(table.layers)}
    col = {block: j for j, block in enumerate(table.blocks)}
    grid = np.full((len(table.layers), len(table.blocks)), np.nan)
    layer_sq = np.zeros(len(table.layers))
    for (layer, block), sq in zip(table.cells, cell_sq):
        grid[row[layer], col[block]] = math.sqrt(sq)
        layer_sq[row[layer]] += sq
    records.append(Matrix(f"{prefix}/layers", step, grid.tolist(), list(table.layers),
                          list(table.blocks), wall_time))
    order = np.argsort(-layer_sq, kind="stable")[:top_k]
    top = [[math.sqrt(layer_sq[i]), *grid[i].tolist()] for i in order]
    records.append(Matrix(f"{prefix}/top", step, top, [table.layers[i] for i in order],
                          ["total", *table.blocks], wall_time))
    return records

