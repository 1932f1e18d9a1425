"""`ts.linear_cross_entropy` with a vocab-sharded LM head (tensor parallel).

The head's weight (and bias) is cut by rows over a tensor-parallel group: a DTensor
placed Shard(0) (`ColwiseParallel` on the head), or this rank's rows with
`vocab_start`, `vocab_size` and `tp_group`. Hidden states and labels are the same on
every rank of the group. The loss, the gradients and, with `run=`, every statistic
`run.observe` records come from kernels/linear_ce_vocab.py: per chunk the shard's
logits, their partials merged in two small all_reduces, the gradient in place; the
merged rows are kept in N-length buffers and folded once per batch by the token
probe's fold on the group's first rank only (each token counts once when the flush
pools the ranks). On sample steps every shard's top-5 of the sample rows rides in the
chunk's SUM and the run's SampleTaker builds the rows, as `observe` does.

Bad arguments raise a TrainspectError, as `linear_cross_entropy` does; a problem on the
statistics side is an alert and the loss is still computed. Not yet: a teacher and a
logit soft cap with a sharded head.
"""

from __future__ import annotations

import math
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.probes.samples import TOP_K
from trainspect.probes.vocab_parallel import (
    VocabSlice,
    dtensor_slice,
    is_dtensor,
    local_tensor,
    plain_slice,
    queue_samples,
)

UNSUPPORTED = ("target_hidden", "target_weight", "target_bias", "target_logits",
               "logit_softcap")


def head_slice(weight: Any, vocab_start: Any, vocab_size: Any, tp_group: Any) -> VocabSlice:
    """Which rows of the vocabulary this rank's head holds; TrainspectError if unclear."""
    if is_dtensor(weight):
        if vocab_start is not None or vocab_size is not None or tp_group is not None:
            problem = ("pass either a DTensor `weight` (its placements give the shard) or a "
                       "local shard with `vocab_start` and `vocab_size`, not both")
        else:
            where, problem = dtensor_slice(weight, 0, "weight")
    else:
        width = weight.shape[0] if hasattr(weight, "shape") and len(weight.shape) == 2 else 0
        where, problem = plain_slice(width, vocab_start, vocab_size, tp_group, "rows")
    if problem is not None:
        raise TrainspectError(f"linear_cross_entropy: {problem}")
    return where


def vocab_parallel_rows(hidden: Any, weight: Any, labels: Any, *, keep_rows: bool = False,
                        **options: Any) -> tuple[Any, Any]:
    """`linear_cross_entropy_rows` (probes/linear_ce.py) for a vocab-sharded head."""
    import torch
    import torch.distributed as dist

    from trainspect.kernels.linear_ce_vocab import HeadSlice, vocab_parallel_linear_ce
    from trainspect.probes.labels import observe_labels
    from trainspect.probes.linear_ce import _flat, recording_start

    given = [name for name in UNSUPPORTED if options.get(name) is not None]
    if given:
        raise TrainspectError(f"linear_cross_entropy: `{given[0]}` with a vocab-sharded head "
                              "is not supported yet")
    where = head_slice(weight, options.get("vocab_start"), options.get("vocab_size"),
                       options.get("tp_group"))
    if is_dtensor(hidden) and not _replicated_over_group(hidden, weight):
        raise TrainspectError(
            f"linear_cross_entropy: `hidden` is a DTensor placed {hidden.placements}; a "
            "vocab-sharded head needs the same hidden states on every rank of its group "
            "(sequence parallel: hidden.redistribute(mesh, [Replicate()]) first)")
    weight, bias = local_tensor(weight), local_tensor(options.get("bias"))
    hidden, labels = local_tensor(hidden), local_tensor(labels)
    hidden2, labels2, shape = _flat(hidden, labels)
    run, reduction = options.get("run"), options.get("reduction", "mean")
    ignore_index = options.get("ignore_index", -100)
    stream = options.get("stream", "text")
    recorder = None
    step, sample_shape = recording_start(run, options.get("step"), stream, where.size, hidden)
    if step is not None or keep_rows:
        recorder = _Rows(labels2.shape[0], labels2.device, ignore_index, where.group,
                         0 if sample_shape is None else math.prod(sample_shape))
    ranks = 1 if where.group is None else dist.get_world_size(where.group)
    rank = 0 if where.group is None else dist.get_rank(where.group)
    try:
        loss = vocab_parallel_linear_ce(
            hidden2, weight, labels2, HeadSlice(where.start, where.size, where.group, rank, ranks),
            bias=bias, ignore_index=ignore_index, reduction=reduction, sink=recorder,
            sample_rows=0 if recorder is None else recorder.sample_rows, sample_k=TOP_K,
            max_chunk_bytes=options.get("max_chunk_bytes"))
    except (ValueError, TypeError) as err:
        raise TrainspectError(f"linear_cross_entropy: {err}") from err
    if step is not None:
        with torch.no_grad():
            _finish(run, step, stream, where, recorder, labels2, sample_shape, ignore_index,
                    options)
            observe_labels(run, stream, None, (*shape, where.size), labels2.view(shape), None,
                           options.get("input_ids"), options.get("attention_mask"),
                           ignore_index, count=where.counts)
    loss = loss.view(shape) if reduction == "none" else loss
    return loss, None if recorder is None else recorder.rows.row_stats()


def _replicated_over_group(hidden: Any, weight: Any) -> bool:
    """Whether a DTensor `hidden` is the same on every rank of the head's group: Replicate
    on the mesh dimension (by name) that shards a DTensor `weight`, else everywhere."""
    names = getattr(hidden.device_mesh, "mesh_dim_names", None)
    if is_dtensor(weight) and names:
        weight_names = weight.device_mesh.mesh_dim_names or ()
        tp = {weight_names[i] for i, p in enumerate(weight.placements)
              if p.is_shard() and i < len(weight_names)}
        return all(p.is_replicate() for name, p in zip(names, hidden.placements) if name in tp)
    return all(p.is_replicate() for p in hidden.placements)


class _Rows:
    """The sink of the sharded pass: each chunk's merged rows into N-length buffers."""

    def __init__(self, n: int, device: Any, ignore_index: int, group: Any,
                 sample_rows: int) -> None:
        import torch
        import torch.distributed as dist

        from trainspect.probes.linear_ce import RowRecorder

        self.rows = RowRecorder(n, device, ignore_index=ignore_index, logit_softcap=None)
        self.fold_labels = torch.zeros(n, dtype=torch.int64, device=device)
        self.sample_rows = sample_rows
        ranks = 1 if group is None else dist.get_world_size(group)
        self.candidates = torch.zeros(ranks, sample_rows, TOP_K, 2, dtype=torch.float64,
                                      device=device)

    def __call__(self, start: int, stats: Any, fold_labels: Any, candidates: Any) -> None:
        import torch

        stop = start + fold_labels.shape[0]
        names = list(self.rows.fields)
        torch._foreach_copy_([self.rows.fields[k][start:stop] for k in names] +
                             [self.fold_labels[start:stop]],
                             [getattr(stats, k) for k in names] + [fold_labels])
        if candidates is not None:
            self.candidates[:, start:start + candidates.shape[1]] = candidates


def _finish(run: Any, step: int, stream: str, where: VocabSlice, recorder: _Rows, labels: Any,
            sample_shape: tuple[int, int] | None, ignore_index: int, options: dict) -> None:
    """Fold the merged rows into the stream (the group's first rank), queue the samples."""
    from trainspect.probes.tokens import token_probe

    try:
        token_probe(run).fold_rows(stream, None, 1, where.size, recorder.rows.row_stats(),
                                   recorder.fold_labels, None, ignore_index,
                                   count=where.counts)
    except Exception as err:
        run.probe_failed("tokens", "linear_cross_entropy", err)
        return
    if sample_shape is None:
        return
    try:
        input_ids, attention_mask = options.get("input_ids"), options.get("attention_mask")
        ids = None if input_ids is None else input_ids.reshape(-1, input_ids.shape[-1])
        mask = None if attention_mask is None or input_ids is None else attention_mask.reshape(
            ids.shape)
        queue_samples(run, step, stream, None, sample_shape, recorder.rows.row_stats(), labels,
                      recorder.candidates, ids, mask, options.get("token_names"), ignore_index)
    except Exception as err:
        run.probe_failed("samples", "linear_cross_entropy", err)
