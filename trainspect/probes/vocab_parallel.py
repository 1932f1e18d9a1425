"""`run.observe` on logits sharded over the vocabulary (tensor / loss parallel).

Each rank of a tensor-parallel group holds columns [vocab_start, vocab_start + V_r) of
the logits of the same rows: a DTensor placed `Shard(-1)` on one mesh dimension (its
placements give the shard and the group), or a plain local tensor with `vocab_start`,
`vocab_size` and the group (`tp_group`, default: every rank). One read of the shard
gives per-row partials, two all_reduces over the group merge them
(kernels/vocab_shard.py), and the merged rows are folded by the token probe's own
fold, so every statistic, the flush and the alerts are those of `observe` on the whole
logits. Only the group's first rank folds them (the others keep zeros of the same
layout): pooled over all ranks at the flush, each row counts once, as with one process.

On sample steps the sample rows' top-5 candidates of every shard ride in the same SUM
(each rank fills its own slot), so prediction samples are those of the whole logits.

Bad arguments become one `bad_input` alert naming the argument; the rank still takes
part in the group's collectives with rows of its own left out (the others then see
them as labels no shard holds), so a mistake on one rank never hangs the others.
A teacher (`target_logits`) is not supported with sharded logits yet.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from trainspect.probes.samples import FIELDS, TOP_K

log = logging.getLogger("trainspect.probes.vocab_parallel")


@dataclass
class VocabShard:
    """This rank's piece of vocab-parallel logits, as plain local tensors."""

    logits: Any  # (..., [G], V_r)
    labels: Any
    mask: Any
    vocab_start: int
    vocab_size: int
    group: Any  # the process group over the shards; None when this rank holds every column
    counts: bool  # this rank folds the rows: the first of the ranks that hold the same rows

    @property
    def whole(self) -> bool:
        return self.vocab_start == 0 and self.logits.shape[-1] == self.vocab_size


def local_tensor(value: Any) -> Any:
    """A DTensor's local piece; anything else as it is."""
    return value.to_local() if hasattr(value, "to_local") else value


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_dtensor(value: Any) -> bool:
    return hasattr(value, "device_mesh") and hasattr(value, "to_local")


@dataclass
class VocabSlice:
    """Which part of the vocabulary this rank holds, and with whom it shares the rows."""

    start: int
    size: int  # the whole vocabulary
    group: Any  # the process group over the shards; None when this rank holds it all
    counts: bool  # this rank counts the rows: the first of the ranks that hold the same rows


def dtensor_slice(t: Any, dim: int, name: str) -> tuple[VocabSlice | None, str | None]:
    """The slice of the vocabulary (dimension `dim` of DTensor `t`, the argument `name`)
    that its placements give this rank, or what keeps it from being read."""
    mesh, placements = t.device_mesh, t.placements
    dim %= t.dim()
    if any(p.is_partial() for p in placements):
        return None, (f"`{name}` is a DTensor placed {placements}: Partial values cannot be "
                      "read per shard; redistribute to Shard or Replicate first")
    vocab_dims = [i for i, p in enumerate(placements) if p.is_shard() and p.dim % t.dim() == dim]
    if len(vocab_dims) > 1:
        return None, (f"`{name}` is a DTensor sharded on the vocabulary over several mesh "
                      f"dimensions ({placements}); shard it on one (tensor parallel)")
    coords = mesh.get_coordinate()
    if coords is None:
        return None, f"`{name}` is a DTensor whose device mesh does not hold this rank"
    counts = all(coords[i] == 0 for i, p in enumerate(placements)
                 if p.is_replicate() or i in vocab_dims)
    vocab, width = t.shape[dim], t.to_local().shape[dim]
    if not vocab_dims:
        return VocabSlice(0, vocab, None, counts), None
    mesh_dim = vocab_dims[0]
    chunk = math.ceil(vocab / mesh.size(mesh_dim))
    start = min(coords[mesh_dim] * chunk, vocab)
    even = min(chunk, vocab - start)
    if width != even:
        return None, (f"`{name}` is a DTensor of V={vocab} placed {placements} whose local "
                      f"shard has {width}, not the {even} of an even Shard: redistribute it")
    return VocabSlice(start, vocab, mesh.get_group(mesh_dim), counts), None


def plain_slice(width: int, vocab_start: Any, vocab_size: Any, tp_group: Any, what: str
                ) -> tuple[VocabSlice | None, str | None]:
    """The slice `vocab_start`, `vocab_size`, `tp_group` say a shard of `width` entries
    (`what`: "columns", "rows") holds, or one sentence naming the argument that is off."""
    import torch

    if vocab_start is None or vocab_size is None:
        missing = "vocab_start" if vocab_start is None else "vocab_size"
        return None, (f"a vocab-parallel shard needs both `vocab_start` and `vocab_size`; "
                      f"`{missing}` is missing")
    if not _int(vocab_size) or vocab_size < max(width, 1):
        return None, (f"expected `vocab_size` to be the whole vocabulary, an int >= the shard's "
                      f"{width} {what}, got {vocab_size!r}")
    if not _int(vocab_start) or not 0 <= vocab_start <= vocab_size - width:
        return None, (f"expected `vocab_start` to be an int in [0, {vocab_size - width}] (the "
                      f"shard's {width} {what} must lie inside `vocab_size` {vocab_size}), got "
                      f"{vocab_start!r}")
    group, counts = tp_counts(tp_group)
    if group is None and width != vocab_size:
        return None, (f"`vocab_start` {vocab_start} with a shard of {width} of {vocab_size} "
                      f"{what} needs torch.distributed initialised (or `tp_group`)")
    if group is not None and torch.distributed.get_world_size(group) == 1:
        group = None
    return VocabSlice(vocab_start, vocab_size, group, counts), None


def tp_counts(tp_group: Any) -> tuple[Any, bool]:
    """(the process group of `tp_group`, whether this rank counts what the group shares).

    The ranks of a tensor-parallel group see the same rows; the group's first rank counts
    them, so that a sum over every rank counts each once. `tp_group`: a ProcessGroup or a
    1-D DeviceMesh; None: every rank (None and True without torch.distributed)."""
    import torch

    group = _group(torch, tp_group)
    if group is None:
        return None, True
    return group, torch.distributed.get_rank(group) == 0


def _group(torch: Any, tp_group: Any) -> Any:
    """The process group of `tp_group` (a ProcessGroup or a 1-D DeviceMesh), else every rank;
    None without torch.distributed."""
    if tp_group is not None and hasattr(tp_group, "get_group"):
        return tp_group.get_group()
    if tp_group is not None:
        return tp_group
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    return None


def vocab_shard(*args: Any) -> tuple[VocabShard | None, str | None]:
    """This rank's shard of vocab-parallel logits (`Run.observe`'s logits, labels, mask,
    target_logits, vocab_start, vocab_size, tp_group) and what is wrong with them (None
    when nothing is). Never raises: arguments odd enough to break the check are a problem.

    A shard comes back with a problem too when the group and the rows are known: the
    rank then joins the group's collectives without rows of its own (`stand_aside`).
    """
    try:
        return _vocab_shard(*args)
    except Exception as err:
        return None, (f"the vocab-parallel arguments could not be read "
                      f"({type(err).__name__}: {err})")


def _vocab_shard(logits: Any, labels: Any, mask: Any, target_logits: Any, vocab_start: Any,
                 vocab_size: Any, tp_group: Any) -> tuple[VocabShard | None, str | None]:
    import torch

    where, problem = None, None
    if is_dtensor(logits):
        if vocab_start is not None or vocab_size is not None or tp_group is not None:
            return None, ("pass either a DTensor `logits` (its placements give the shard) or "
                          "a local shard with `vocab_start` and `vocab_size`, not both")
        where, problem = dtensor_slice(logits, -1, "logits")
    elif isinstance(logits, torch.Tensor) and logits.dim() >= 1:  # else observe's check says
        where, problem = plain_slice(logits.shape[-1], vocab_start, vocab_size, tp_group,
                                     "columns")
    shard = None if where is None else VocabShard(
        local_tensor(logits), local_tensor(labels), local_tensor(mask), where.start,
        where.size, where.group, where.counts)
    if problem is None and shard is not None and target_logits is not None and not shard.whole:
        problem = ("`target_logits` with vocab-parallel logits is not supported yet: observe "
                   "the student alone, or gather the logits")
    if shard is None and problem is not None and isinstance(logits, torch.Tensor) and (
            tp_group is not None or vocab_start is not None):
        shard = VocabShard(local_tensor(logits), None, None, 0, 0, _group(torch, tp_group), False)
    return shard, problem


# ---- the call ------------------------------------------------------------------------------


def observe_shard(run: Any, probe: Any, step: int, stream: str, group: str | None,
                  shard: VocabShard, input_ids: Any, attention_mask: Any,
                  token_names: dict | None, ignore_index: int) -> None:
    """Fold the rows of this rank's shard, merged over its group, into `stream`; take
    samples on sample steps. Device work only: two all_reduces over the group."""
    from trainspect.kernels.vocab_shard import merge_shards

    logits = shard.logits
    n_groups = logits.shape[-2] if group else 1
    if shard.whole:  # every column here (a replicated DTensor): the usual pass
        if shard.counts:
            probe.update(stream, group, logits, shard.labels, shard.mask, None, ignore_index)
        else:
            probe.fold_rows(stream, group, n_groups, shard.vocab_size, None, shard.labels,
                            None, count=False)
        if run._samples.due(stream, step):
            run._take_samples(step, stream, group, logits, shard.labels, shard.mask, input_ids,
                              attention_mask, token_names, ignore_index)
        return
    labels = shard.labels.reshape(-1)
    mask = None if shard.mask is None else shard.mask.reshape(-1)
    due = run._samples.due(stream, step)
    sample = _sample_shape(logits, run._samples.num_samples) if due else None
    try:
        partials = _partials(logits, labels, shard.vocab_start)
        extra = None if sample is None else _top_candidates(logits, sample, shard)
    except Exception as err:  # re-raised: the caller reports the failed probe
        log.debug("trainspect: step %s: vocab shard of %r failed (%s); joining the group's "
                  "collectives empty so the other ranks do not wait", step, stream, err)
        _join_empty(shard, due, run._samples.num_samples)
        raise
    stats, fold_labels, _, candidates = merge_shards(
        partials, labels, shard.vocab_size, group=shard.group, mask=mask,
        ignore_index=ignore_index, extra=extra)
    probe.fold_rows(stream, group, n_groups, shard.vocab_size, stats, fold_labels, mask,
                    ignore_index, count=shard.counts)
    if sample is not None:
        try:
            _queue_samples(run, step, stream, group, logits, sample, stats, labels, candidates,
                           input_ids, attention_mask, token_names, ignore_index)
        except Exception as err:
            run.probe_failed("samples", "observe", err)


def stand_aside(run: Any, shard: VocabShard, stream: str, step: int) -> None:
    """Join the group's collectives with no rows of this rank's (its batch was skipped), so
    that the other ranks do not wait forever: they see those rows' labels in no shard."""
    try:
        _join_empty(shard, run._samples.due(stream, step), run._samples.num_samples)
    except Exception as err:
        run.probe_failed("tokens", "observe", err)


def _join_empty(shard: VocabShard, sample_due: bool, num_samples: int) -> None:
    import torch

    from trainspect.kernels.vocab_shard import ShardPartials, merge_shards

    if shard.group is None:
        return
    logits = shard.logits
    n = math.prod(logits.shape[:-1]) if logits.dim() > 1 else 1
    device = logits.device
    partials = ShardPartials(
        max=torch.full((n,), float("-inf"), device=device),
        argmax=torch.full((n,), 2**32 - 1, dtype=torch.int64, device=device),
        sumexp=torch.zeros(n, device=device), dot=torch.zeros(n, device=device),
        label_logit=torch.zeros(n, device=device),
        label_here=torch.zeros(n, dtype=torch.bool, device=device))
    extra = None
    if sample_due and logits.dim() > 1:
        k, positions = _sample_shape(logits, num_samples)
        tp = torch.distributed.get_world_size(shard.group)
        extra = torch.zeros(tp, k * positions, TOP_K, 2, dtype=torch.float64, device=device)
    labels = torch.full((n,), -100, dtype=torch.int64, device=device)
    merge_shards(partials, labels, 1, group=shard.group, extra=extra)


def _partials(logits: Any, labels: Any, vocab_start: int) -> Any:
    """One shard's partials over every row, read as 2-D views (no copy of the logits)."""
    import torch

    from trainspect.kernels.vocab_shard import ShardPartials, shard_partials
    from trainspect.probes.token_layout import row_blocks

    pieces, start = [], 0
    for block, _ in row_blocks(logits, None):
        stop = start + block.shape[0]
        pieces.append(shard_partials(block, labels[start:stop], vocab_start))
        start = stop
    if len(pieces) == 1:
        return pieces[0]
    return ShardPartials(*(torch.cat([getattr(p, f) for p in pieces])
                           for f in ShardPartials.__dataclass_fields__))


def _sample_shape(logits: Any, num_samples: int) -> tuple[int, int]:
    """(sequences, rows per sequence) of the sample rows, as SampleTaker lays them out."""
    if logits.dim() == 2:
        return 1, logits.shape[0]
    return min(num_samples, logits.shape[0]), math.prod(logits.shape[1:-1])


def _top_candidates(logits: Any, sample: tuple[int, int], shard: VocabShard) -> Any:
    """This rank's top-5 of the sample rows in its slot of the table the SUM gathers."""
    import torch.distributed as dist

    from trainspect.kernels.vocab_shard import top_candidates

    k, positions = sample
    rows = (logits if logits.dim() == 2 else logits[:k]).reshape(k * positions, -1)
    tp = 1 if shard.group is None else dist.get_world_size(shard.group)
    rank = 0 if shard.group is None else dist.get_rank(shard.group)
    return top_candidates(rows, shard.vocab_start, rank, tp, TOP_K)


def _queue_samples(run: Any, step: int, stream: str, group: str | None, logits: Any,
                   sample: tuple[int, int], stats: Any, labels: Any, candidates: Any,
                   input_ids: Any, attention_mask: Any, token_names: dict | None,
                   ignore_index: int) -> None:
    shape = (sample[0], sample[1]) if logits.dim() == 2 else (sample[0], *logits.shape[1:-1])
    queue_samples(run, step, stream, group, shape, stats, labels, candidates, input_ids,
                  attention_mask, token_names, ignore_index, one_sequence=logits.dim() == 2)


def queue_samples(run: Any, step: int, stream: str, group: str | None, shape: tuple,
                  stats: Any, labels: Any, candidates: Any, input_ids: Any,
                  attention_mask: Any, token_names: dict | None, ignore_index: int, *,
                  one_sequence: bool = False) -> None:
    """The sample rows, built by the run's SampleTaker from merged rows.

    `shape` is (k sequences, positions..., [G]) of the sample rows, which are the first
    rows of `stats`, `labels` (global ids) and the summed `candidates` table. As the
    fused linear cross-entropy does (probes/linear_ce.py): SampleTaker.take is handed a
    (*shape, 5) stand-in for the logits, which fixes the layout of the rows it builds,
    and its tensors are replaced by the merged ones (FIELDS, top ids, top probs).
    """
    import torch

    from trainspect.flush import Part
    from trainspect.kernels.vocab_shard import best_candidates

    k, rows = shape[0], math.prod(shape)
    positions = rows // k
    values, top_ids = best_candidates(candidates, TOP_K)
    stand_in = torch.zeros(*shape, TOP_K, device=labels.device)
    sample_labels = labels[:rows].view(shape)
    tensors, build = run._samples.take(
        step, stream, group, stand_in[0] if one_sequence else stand_in,
        sample_labels[0] if one_sequence else sample_labels, None, input_ids,
        attention_mask, token_names, ignore_index,
        on_rows=run._print_samples if run.verbose else None)
    fields = {name: getattr(stats, name)[:rows].view(k, positions)
              for name in FIELDS if name != "label"}
    fields["label"] = labels[:rows].to(torch.int64).view(k, positions)
    top_probs = torch.exp(values - values[:, :1]) * fields["conf"].reshape(-1)[:, None]
    recorded = [fields[name] for name in FIELDS]
    recorded += [top_ids.view(k, positions, TOP_K), top_probs.view(k, positions, TOP_K)]
    tensors[: len(recorded)] = recorded
    job = run._flusher.start([Part(tensors, build, reduce=False)])
    if job is not None:
        run._writer.jobs.append(job)
