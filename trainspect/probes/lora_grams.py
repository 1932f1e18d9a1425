"""The maths of LoRA's ‖ΔW‖_F from Gram matrices of rank r, as pure functions over tensors.

    ‖B A‖_F²            = tr((BᵀB)(AAᵀ))
    ‖B A − B₀A₀‖_F²     = ‖BA‖² + ‖B₀A₀‖² − 2 tr((B₀ᵀB)(AA₀ᵀ))

A side is one factor kind (A or B) of a set of adapters of one shape and placement: its
Grams come from one batched matmul on the device when they add up over the ranks' pieces
(placement.py), else the whole factors travel in the flush and the host takes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainspect.probes.placement import Tracked


@dataclass
class Side:
    """One factor kind (A or B) of a set of adapters whose Grams come out the same way.

    `gram`: each rank's Gram matrices of its pieces add up to the whole's (the factor is
    whole here, or cut only along the dims the Gram sums over), computed with one bmm
    for the set; else the pieces travel whole (placement.py) and the host takes the Gram.
    """

    kind: str  # "a" or "b"
    index: list[int]  # positions in the probe's adapter list
    factors: list[Tracked]
    rank: int
    gram: bool
    with_start: bool  # B₀A₀ may be non-zero: the start is kept (snapshot or buffer)
    snapshot: torch.Tensor | None = None  # (m, ...) local pieces at the start
    buffer: torch.Tensor | None = None  # gathered: (m · numel,) whole factors, then snapshots
    views: list[torch.Tensor] = field(default_factory=list)
    snapshot_views: list[torch.Tensor] = field(default_factory=list)
    plain_views: list[torch.Tensor] | None = None  # kept 2-D views of plain parameters



def keeps_start(ref: Any) -> bool:
    """Whether an adapter's start B₀A₀ is kept: not when B₀ = 0 (PEFT's default init),
    judged on whole factors (the same values on every rank); sharded adapters always keep
    it, so that every rank's state has the same layout without asking the others."""
    if ref.a.placement.whole and ref.b.placement.whole:
        return not bool((ref.b.data() == 0).all())
    return True


def as_2d(side: Side, t: torch.Tensor) -> torch.Tensor:
    """A piece as a 2-D matrix: A as (r, in_local), B as (out_local, r)."""
    return t.reshape((side.rank, -1) if side.kind == "a" else (-1, side.rank))


def stack_2d(side: Side, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stacked 2-D pieces: A as (m, r, in_local), B as (m, out_local, r)."""
    return torch.stack([as_2d(side, t) for t in tensors])


def _pieces_2d(side: Side) -> list[torch.Tensor]:
    """The side's local pieces as 2-D matrices. Plain parameters' 2-D views are kept from
    one flush to the next (reading and reshaping 300 factors anew costs a millisecond of
    Python and a dispatch each) while they still point at the parameters' storage;
    anything else (DTensor, FSDP1, ZeRO-3) is read anew."""
    views = side.plain_views
    if views is not None and all(v.data_ptr() == f.param.data_ptr()
                                 for v, f in zip(views, side.factors)):
        return views
    pieces = [as_2d(side, f.data()) for f in side.factors]
    if all(type(f.param) in (torch.Tensor, torch.nn.Parameter) and f.span is None
           and not hasattr(f.param, "ds_tensor") for f in side.factors):
        side.plain_views = pieces
    return pieces


def side_grams(side: Side) -> torch.Tensor:
    """(m, k, r, r) float64 Grams of a `gram` side's pieces: XXᵀ for A, XᵀX for B, and with
    a snapshot X₀ also the cross Gram (AA₀ᵀ, B₀ᵀB) and X₀'s own; no host sync."""
    x = torch.stack(_pieces_2d(side)).to(torch.float64)
    grams = [x @ x.transpose(1, 2) if side.kind == "a" else x.transpose(1, 2) @ x]
    if side.snapshot is None:
        return grams[0].unsqueeze(1)
    x0 = side.snapshot.to(torch.float64)
    if side.kind == "a":
        grams += [x @ x0.transpose(1, 2), x0 @ x0.transpose(1, 2)]
    else:
        grams += [x0.transpose(1, 2) @ x, x0.transpose(1, 2) @ x0]
    return torch.stack(grams, dim=1)


def host_grams(kind: str, m: int, rank: int, whole: np.ndarray,
               whole0: np.ndarray | None) -> np.ndarray:
    """The same Grams as `side_grams`, (m, k, r, r), from m gathered whole factors of one
    shape laid end to end in `whole` (and their starts in `whole0`)."""
    x = whole.reshape(m, rank, -1) if kind == "a" else whole.reshape(m, -1, rank)
    xt = x.transpose(0, 2, 1)
    grams = [x @ xt if kind == "a" else xt @ x]
    if whole0 is not None:
        x0 = whole0.reshape(x.shape)
        x0t = x0.transpose(0, 2, 1)
        grams += [x @ x0t, x0 @ x0t] if kind == "a" else [x0t @ x, x0t @ x0]
    return np.stack(grams, axis=1)


def delta_sq(gram_a: np.ndarray, gram_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(‖BA − B₀A₀‖_F², ‖B‖_F²) per adapter from (m, k, r, r) Grams (k = 1, or 3 with the
    start kept: the Gram, the cross Gram AA₀ᵀ or B₀ᵀB, the start's own):

        ‖BA‖² = tr((BᵀB)(AAᵀ)),  ⟨BA, B₀A₀⟩ = tr((B₀ᵀB)(AA₀ᵀ)),  ‖B₀A₀‖² likewise.
    """
    # AAᵀ is symmetric: tr(XY) = Σ X ⊙ Y
    sq = np.einsum("mij,mij->m", gram_b[:, 0], gram_a[:, 0])
    if gram_a.shape[1] == 3 and gram_b.shape[1] == 3:
        sq = (sq + np.einsum("mij,mij->m", gram_b[:, 2], gram_a[:, 2])
              - 2 * np.einsum("mij,mji->m", gram_b[:, 1], gram_a[:, 1]))
    return sq, np.trace(gram_b[:, 0], axis1=1, axis2=2)
