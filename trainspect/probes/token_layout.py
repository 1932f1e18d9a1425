"""How the token probe lays a batch's logits out for the row-statistics pass: one launch
of the fused fold over any strided (..., [G], V) tensor on CUDA, and 2-D row views (no
copy) for the torch path.
"""

from __future__ import annotations

from typing import Any


def fold_triton_batch(logits: Any, labels: Any, mask: Any, target: Any, n_groups: int,
                 state: tuple[Any, ...], ignore_index: int, last: bool) -> None:
    """One launch folds the batch; a layout of more than three leading axes that do not
    merge is split along the first axis (the batch still counts as one call)."""
    from trainspect.kernels.token_stats_triton import fold_triton

    if fold_triton(logits, labels, mask, target, n_groups, state, ignore_index,
                   last_chunk=last):
        return
    for i in range(logits.shape[0]):
        fold_triton_batch(logits[i], labels[i], None if mask is None else mask[i],
                     None if target is None else target[i], n_groups, state, ignore_index,
                     last and i == logits.shape[0] - 1)


def padded_rows(logits: Any, target: Any, n_groups: int) -> tuple[Any, Any, list[int]] | None:
    """A 2-D (rows, V) view over a sliced tensor, with the rows the slice skipped left in.

    `logits[:, :-1]` of a contiguous (B, T, V) tensor has no 2-D view, but its rows sit
    at a constant stride in memory: viewed as (B*T - 1, V), it is the sliced tensor plus
    one skipped row per sequence. Those gap rows get the ignore label and cost the
    kernel next to nothing, and the pass stays one launch over all rows. Returns the
    view, the teacher's matching view, and each leading axis's stride in rows; None
    when the layout does not allow it (then the caller splits along the first axis).
    """
    if logits.dim() < 3 or logits.stride(-1) != 1 or min(logits.stride()[:-1]) <= 0:
        return None  # e.g. expanded (stride-0) logits: split along the first axis instead
    row = logits.stride(-2)
    strides = [st // row for st in logits.stride()[:-1]]
    if row < logits.shape[-1] or any(st % row for st in logits.stride()[:-1]):
        return None
    for outer, inner, extent in zip(strides, strides[1:], logits.shape[1:-1]):
        if inner == 0 or outer % inner or outer // inner < extent:
            return None
    if n_groups > 1 and logits.dim() >= 4 and strides[-2] != n_groups:
        return None  # the group axis itself is sliced: row % G would not be the group
    if target is not None and (target.stride() != logits.stride()):
        return None
    n_rows = 1 + sum((d - 1) * st for d, st in zip(logits.shape[:-1], strides))
    if n_groups > 1 and n_rows % n_groups:
        return None

    def view(x: Any) -> Any:
        return x.as_strided((n_rows, x.shape[-1]), (row, 1), x.storage_offset())

    return view(logits), None if target is None else view(target), strides


def pad_like(values: Any, row_strides: list[int], n_rows: int, fill: Any) -> Any:
    """`values` (the leading shape of the logits) laid out at the padded view's rows."""
    import torch

    size = values.shape[0] * row_strides[0]
    padded = torch.full((size,), fill, dtype=values.dtype, device=values.device)
    padded.as_strided(tuple(values.shape), tuple(row_strides)).copy_(values)
    return padded[:n_rows]


def row_blocks(logits: Any, target: Any) -> list[tuple[Any, Any]]:
    """(..., V) as 2-D row blocks without copying: one view if possible, else per slice.

    `logits[:, :-1]` of a contiguous (B, T, V) tensor has no 2-D view; reshaping it
    would copy the whole tensor, so it is split along its first axis instead. The
    teacher's logits are split the same way, whatever their own strides.
    """
    vocab = logits.shape[-1]
    try:
        return [(logits.view(-1, vocab), None if target is None else target.view(-1, vocab))]
    except RuntimeError:
        if logits.dim() <= 2:
            return [(logits.reshape(-1, vocab), None if target is None else
                     target.reshape(-1, vocab))]
        return [pair for i in range(logits.shape[0])
                for pair in row_blocks(logits[i], None if target is None else target[i])]
