"""Where a parameter or a gradient lives across ranks: this rank's piece of it, and how the
pieces make the whole.

Sharded training keeps each tensor in pieces. FSDP2 and tensor parallelism use DTensors:
over each dimension of a device mesh a tensor is `Shard(d)` (cut along its dim d),
`Replicate` (the same on every rank of that mesh dimension) or, for some gradients,
`Partial` (the whole is the sum of the ranks' pieces). FSDP1 and DeepSpeed ZeRO-3 cut
the flattened tensor into one contiguous range per rank of the shard group.

The flush sums every rank's state in one all_reduce (flush.py), so a statistic pools
exactly in one of two ways:

- It is a sum over the tensor's elements (a squared norm, the Gram matrix BᵀB of B's
  rows when only rows are cut): each rank adds the value of its own piece. Every element
  is then counted `ranks / pieces` times over the world (once per replica: DDP ranks, the
  other dimensions of a mesh), so compute multiplies the pooled sum by `pieces / ranks`.
  This holds because every rank holds the same share of the replicas (SPMD).
- Otherwise the pieces themselves travel: each rank writes its piece at its `region` of a
  zero tensor of the whole's shape, and the pooled sum is `ranks / pieces` times the
  whole (a Partial piece adds up the same way: the pieces sum to the whole).

Everything here is read once, when `watch` attaches, except `local()`, which the hooks
call on the gradients of sampled steps.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Placement:
    """How a whole tensor is spread over the ranks, as far as pooling needs to know.

    shape: the whole tensor's shape.
    pieces: how many distinct pieces make the whole: 1 when every rank holds all of it
        (DDP, a tensor-parallel replicated bias), the product of the sizes of the mesh
        dimensions that cut it (Shard) or split it into addends (Partial) for a DTensor,
        the shard group's size for FSDP1 and ZeRO-3.
    partial: the pieces are addends of the whole (a DTensor gradient placed Partial), not
        parts of it.
    split: the whole's dims that are cut (a DTensor), or None when the flattened whole is
        cut into ranges (FSDP1, ZeRO-3).
    region: where this rank's piece sits in the whole: one (start, stop) per dim, or one of
        the flattened whole when `split` is None (pairs, not slices: they hash).
    """

    shape: tuple[int, ...]
    pieces: int = 1
    partial: bool = False
    split: tuple[int, ...] | None = ()
    region: tuple[tuple[int, int], ...] = ()

    @property
    def whole(self) -> bool:
        """True when this rank holds the whole tensor (it may be replicated elsewhere)."""
        return self.pieces == 1

    def norm_adds_up(self) -> bool:
        """Whether squared norms of the pieces add up to the whole's (not for addends)."""
        return not self.partial

    def numel(self) -> int:
        return math.prod(self.shape)


def is_dtensor(t: Any) -> bool:
    return hasattr(t, "_local_tensor") and hasattr(t, "placements")


def local(t: Any) -> Any:
    """This rank's piece of `t`: a DTensor's local tensor (its `_local_tensor`, read
    directly: `to_local()` is an autograd function call on every use), else `t`."""
    return getattr(t, "_local_tensor", t)


def of_dtensor(t: Any) -> Placement:
    """The placement of a DTensor (a parameter or a gradient)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh, placements = t.device_mesh, t.placements
    shape = tuple(t.shape)
    pieces, partial, split = 1, False, []
    for mesh_dim, placement in enumerate(placements):
        # FSDP2 on top of tensor parallelism cuts an already cut dim: `_StridedShard`,
        # which is not a `Shard` subclass but has its `dim`
        if placement.is_shard() or type(placement).__name__ == "_StridedShard":
            pieces *= mesh.size(mesh_dim)
            split.append(placement.dim % max(len(shape), 1))
        elif placement.is_partial():
            pieces *= mesh.size(mesh_dim)
            partial = True
    if pieces == 1:
        return Placement(shape=shape)
    local_shape, offset = compute_local_shape_and_global_offset(shape, mesh, placements)
    region = tuple((o, o + n) for o, n in zip(offset, local_shape))
    return Placement(shape=shape, pieces=pieces, partial=partial, split=tuple(sorted(set(split))),
                     region=region)


def placement_of(t: Any) -> Placement:
    """The placement of a parameter or gradient that is a DTensor or a plain tensor held
    whole (FSDP1 and ZeRO-3 pieces are described by `tracked_parameters`)."""
    if is_dtensor(t):
        return of_dtensor(t)
    return Placement(shape=tuple(t.shape))


def flat_placement(shape: Sequence[int], pieces: int, start: int, stop: int) -> Placement:
    """A range [start, stop) of the flattened whole, one of `pieces` ranges."""
    if pieces <= 1:
        return Placement(shape=tuple(shape))
    return Placement(shape=tuple(shape), pieces=pieces, split=None, region=((start, stop),))


@dataclass
class Tracked:
    """One trainable parameter as this rank holds it.

    name: the parameter's path in the model (`named_parameters` style).
    param: the tensor holding this rank's piece: the parameter itself, or FSDP1's flat
        parameter that holds several (then `span` is its (offset, numel) in there).
    placement: how the whole parameter is spread over the ranks.
    leaf: the tensor autograd accumulates the gradient into (FSDP1: the flat parameter),
        where a post-accumulate-grad hook sees the backward pass.
    """

    name: str
    param: Any
    placement: Placement
    span: tuple[int, int] | None = None
    leaf: Any = None

    def __post_init__(self) -> None:
        if self.leaf is None:
            self.leaf = self.param

    def data(self) -> torch.Tensor:
        """This rank's piece of the parameter's values (flattened for flat placements)."""
        part = getattr(self.param, "ds_tensor", None)
        if part is not None:  # ZeRO-3: the parameter is empty outside its module's forward
            start, stop = self.placement.region[0] if self.placement.region else (
                0, self.placement.numel())
            return part.detach().reshape(-1).narrow(0, 0, stop - start)  # less the padding
        x = local(self.param).detach()
        return x if self.span is None else x.reshape(-1).narrow(0, *self.span)

    def grad(self) -> torch.Tensor | None:
        """This rank's piece of the gradient, or None."""
        g = self.param.grad
        if g is None:
            return None
        g = local(g)
        return g if self.span is None else g.reshape(-1).narrow(0, *self.span)

    def grad_placement(self) -> Placement:
        """The gradient's placement: the parameter's, except for a DTensor gradient that
        is placed otherwise (Partial under sequence parallelism)."""
        g = self.param.grad
        if g is not None and is_dtensor(g) and tuple(g.placements) != tuple(
                self.param.placements):
            return of_dtensor(g)
        return self.placement


def tracked_parameters(model: torch.nn.Module) -> list[Tracked]:
    """Every trainable parameter of `model`, shared ones once, in `named_parameters` order,
    with FSDP1's flat parameters opened into the parameters they hold."""
    fsdp1 = _fsdp1_pieces(model)
    out: list[Tracked] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in fsdp1:
            out.extend(fsdp1[id(p)](name))
            continue
        zero3 = _zero3_placement(p)
        out.append(Tracked(name, p, zero3 if zero3 is not None else placement_of(p)))
    return out


def deepspeed_zero(tracked: Iterable[Tracked]) -> bool:
    """Whether DeepSpeed ZeRO manages these parameters (ZeRO-3 marks them with `ds_id`,
    ZeRO-1/2 links them to the optimizer's partitions with `_hp_mapping`)."""
    return any(hasattr(t.param, "ds_id") or hasattr(t.param, "_hp_mapping") for t in tracked)


def _fsdp1_pieces(model: torch.nn.Module) -> dict[int, Any]:
    """id(parameter) -> a function of its name giving its Tracked entries, for parameters
    that FSDP1 (`FullyShardedDataParallel`) manages: the original parameters with
    `use_orig_params=True` (1-D views of this rank's range), the flat parameters without."""
    out: dict[int, Any] = {}
    for _, module in model.named_modules():
        handle = getattr(module, "_handle", None)
        flat = getattr(handle, "flat_param", None)
        infos = getattr(flat, "_shard_param_infos", None)
        if flat is None or infos is None:
            continue
        pieces = handle.world_size if getattr(handle, "uses_sharded_strategy", False) else 1
        originals = getattr(flat, "_params", None)
        entries = list(zip(flat._fqns, flat._shapes, infos))
        if originals is not None:  # use_orig_params=True: the parameters stay, as views
            for p, (_, shape, info) in zip(originals, entries):
                out[id(p)] = _orig_entry(p, shape, info, pieces, flat)
        else:
            out[id(flat)] = _flat_entries(flat, entries, pieces)
    return out


def _region(info: Any) -> tuple[int, int]:
    if not info.in_shard:
        return 0, 0
    return info.intra_param_start_idx, info.intra_param_end_idx + 1


def _orig_entry(p: Any, shape: Any, info: Any, pieces: int, flat: Any) -> Any:
    def make(name: str) -> list[Tracked]:
        return [Tracked(name, p, flat_placement(shape, pieces, *_region(info)), leaf=flat)]
    return make


def _flat_entries(flat: Any, entries: list, pieces: int) -> Any:
    def make(name: str) -> list[Tracked]:
        prefix = name.rsplit("_flat_param", 1)[0]  # "layers.0._fsdp_wrapped_module."
        return [Tracked(prefix + fqn, flat, flat_placement(shape, pieces, *_region(info)),
                        span=(info.offset_in_shard or 0, info.numel_in_shard or 0))
                for fqn, shape, info in entries]
    return make


def _zero3_placement(p: Any) -> Placement | None:
    """A DeepSpeed ZeRO-3 parameter's placement: `ds_tensor` holds this rank's range of
    the flattened whole (`ds_numel` elements cut into equal partitions, the last padded)."""
    part = getattr(p, "ds_tensor", None)
    if part is None or not hasattr(p, "ds_numel"):
        return None
    group = getattr(p, "ds_process_group", None)
    import torch.distributed as dist

    pieces = dist.get_world_size(group) if dist.is_initialized() else 1
    rank = dist.get_rank(group) if dist.is_initialized() else 0
    size = part.ds_numel if hasattr(part, "ds_numel") else part.numel()
    start = min(rank * size, p.ds_numel)
    return flat_placement(tuple(p.ds_shape), pieces, start, min(start + size, p.ds_numel))


def gather_views(buffer: torch.Tensor, placements: Iterable[Placement],
                 offsets: Iterable[int]) -> list[torch.Tensor]:
    """Views of `buffer` (1-D) where each tensor's piece goes: the whole tensor laid out
    at its offset, then this rank's region of it."""
    views = []
    for placement, offset in zip(placements, offsets):
        whole = buffer.narrow(0, int(offset), placement.numel())
        # a range of the flattened whole, or a block of the whole
        whole = whole.view(-1) if placement.split is None else whole.view(placement.shape)
        for dim, (start, stop) in enumerate(placement.region):
            whole = whole.narrow(dim, start, stop - start)
        views.append(whole)
    return views
