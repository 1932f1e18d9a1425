"""`ts.linear_cross_entropy`: the loss of an LM head without its logits, and with `run=`
every statistic `run.observe` records, from the same pass.

The fused loss (kernels/linear_ce.py) takes the rows in chunks; each chunk's one
`row_stats` call (the row-statistics core, docs/architecture.md) gives the loss, the
gradient and the per-row results (argmax, top-1 probability, label probability,
cross-entropy, entropy; with a teacher its argmax, KL and acceptance), kept here in
N-length device buffers. After the last chunk they are folded into the run's
`TokenProbe` state for the stream with the fold `observe` uses (`token_sums.
accumulate_rows`), so they pool across flush windows and ranks exactly as observe's
sums do; one fold per batch rather than one per chunk (see RowRecorder). On sample steps the
top-5 of the sample rows is read from the chunk that holds them, before the pass
overwrites it with the gradient, and the rows go to the run's SampleTaker. Nothing is
read back to the host.

A problem on the statistics side (a finished run, a stream whose vocabulary changed,
a failing probe) becomes a warning or an alert; the loss is still computed. Bad
arguments of the loss itself (shapes, dtypes) raise a TrainspectError, as
F.cross_entropy would raise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from trainspect.errors import TrainspectError

SAMPLE_TOP_K = 5  # as probes/samples.py's TOP_K
OPTIONS = frozenset((
    "bias", "ignore_index", "reduction", "logit_softcap", "run", "step", "stream",
    "target_hidden", "target_weight", "target_bias", "target_logits", "input_ids",
    "attention_mask", "token_names", "max_chunk_bytes",
    "vocab_start", "vocab_size", "tp_group"))  # linear_cross_entropy's keywords


@dataclass
class Teacher:
    """Where each chunk's teacher logits come from: given rows, or a teacher's head."""

    logits: Any = None  # (N, V)
    hidden: Any = None  # (N, H_t)
    weight: Any = None  # (V, H_t)
    bias: Any = None  # (V,)

    def rows(self, start: int, stop: int, dtype: Any) -> Any:
        import torch

        if self.logits is not None:
            return self.logits[start:stop]
        with torch.no_grad():
            h = self.hidden[start:stop].to(dtype)
            w = self.weight.to(dtype)
            if self.bias is None:
                return h @ w.t()
            return torch.addmm(self.bias.to(dtype), h, w.t())


class RowRecorder:
    """The row pass that keeps each row's statistics in N-length device buffers.

    Each chunk is one `row_stats` pass (the row-statistics core): ce for the loss, the
    statistics, and the gradient written over the chunk. Its fields are copied into the
    buffers (one multi-tensor copy); the caller folds them into the run once, after the
    last chunk, instead of twenty small kernels per chunk.
    """

    def __init__(self, n: int, device: Any, *, ignore_index: int, logit_softcap: float | None,
                 teacher: Teacher | None = None, sample_rows: int = 0) -> None:
        import torch

        self.n = n
        self.ignore_index = ignore_index
        self.logit_softcap = logit_softcap
        self.teacher = teacher
        f32 = dict(dtype=torch.float32, device=device)
        self.fields: dict[str, Any] = {
            "valid": torch.zeros(n, dtype=torch.bool, device=device),
            "finite": torch.zeros(n, dtype=torch.bool, device=device),
            "argmax": torch.zeros(n, dtype=torch.int64, device=device),
            "conf": torch.zeros(n, **f32), "label_prob": torch.zeros(n, **f32),
            "ce": torch.zeros(n, **f32), "entropy": torch.zeros(n, **f32),
        }
        if teacher is not None:
            self.fields.update(teacher_argmax=torch.zeros(n, dtype=torch.int64, device=device),
                               kl=torch.zeros(n, **f32), alpha=torch.zeros(n, **f32))
        self.sample_rows = sample_rows  # rows [0, sample_rows) are sampled: keep their top-k
        self.top_ids = self.top_logits = None
        self.sample_error: BaseException | None = None
        if sample_rows:
            self.top_ids = torch.zeros(sample_rows, SAMPLE_TOP_K, dtype=torch.int64,
                                       device=device)
            self.top_logits = torch.zeros(sample_rows, SAMPLE_TOP_K, **f32)

    def __call__(self, logits: Any, labels: Any, first_row: int, grad: bool) -> Any:
        import torch

        from trainspect.kernels.linear_ce import chunk_row_stats

        stop = first_row + logits.shape[0]
        if first_row < self.sample_rows and self.sample_error is None:
            self._top_k(logits[: min(stop, self.sample_rows) - first_row], first_row)
        teacher = None
        if self.teacher is not None:
            teacher = self.teacher.rows(first_row, stop, logits.dtype)
        stats = chunk_row_stats(logits, labels, target_logits=teacher,
                                ignore_index=self.ignore_index,
                                logit_softcap=self.logit_softcap, grad=grad)
        names = list(self.fields)
        torch._foreach_copy_([self.fields[k][first_row:stop] for k in names],
                             [getattr(stats, k) for k in names])
        return stats.ce

    def _top_k(self, rows: Any, first_row: int) -> None:
        """The sample rows' top-k, read before the pass overwrites them with gradients."""
        import torch

        try:
            top = torch.topk(rows, min(SAMPLE_TOP_K, rows.shape[1]), dim=-1)
            values = top.values.float()
            if self.logit_softcap is not None:
                values = torch.tanh(values / self.logit_softcap) * self.logit_softcap
            stop = first_row + rows.shape[0]
            self.top_ids[first_row:stop, : values.shape[1]] = top.indices
            self.top_logits[first_row:stop, : values.shape[1]] = values
        except Exception as err:  # reported by the caller as a failed samples probe
            self.sample_error = err

    def row_stats(self) -> Any:
        from trainspect.kernels.token_stats import RowStats

        return RowStats(**self.fields)


def linear_cross_entropy(
    hidden: Any, weight: Any, labels: Any, *, bias: Any = None, ignore_index: int = -100,
    reduction: str = "mean", logit_softcap: float | None = None, run: Any = None,
    step: int | None = None, stream: str = "text", target_hidden: Any = None,
    target_weight: Any = None, target_bias: Any = None, target_logits: Any = None,
    input_ids: Any = None, attention_mask: Any = None, token_names: dict | None = None,
    max_chunk_bytes: int | None = None, vocab_start: int | None = None,
    vocab_size: int | None = None, tp_group: Any = None,
) -> Any:
    """``F.cross_entropy(hidden @ weight.T + bias, labels)`` without the [N, V] logits.

    `hidden` is [..., H] (e.g. [B, T, H]; a causal LM passes `hidden[:, :-1]` with
    `labels[:, 1:]`), `labels` the matching [...] integers (`ignore_index` where not
    supervised). Autograd reaches `hidden`, `weight` and `bias`. `reduction` is
    "mean", "sum" or "none" (then the result has the labels' shape, 0 where ignored).
    `logit_softcap` (Gemma 2) caps the logits as cap * tanh(z / cap).

    With `run`, the statistics `run.observe(step, logits, labels, stream=stream)` would
    record come from the same pass (and samples on sample steps, with `input_ids`,
    `attention_mask` and `token_names` as observe takes them). A teacher adds
    agreement, KL and acceptance: either `target_logits` [..., V], or its head's inputs
    `target_hidden` [..., H_t] with `target_weight` [V, H_t] (and `target_bias`), whose
    logits are formed chunk by chunk too. `step` defaults to the run's last step.
    A vocab-sharded head (tensor parallel): `weight` a DTensor placed Shard(0), or this
    rank's rows with `vocab_start`, `vocab_size` and `tp_group` (probes/linear_ce_vocab.py).
    """
    return linear_cross_entropy_rows(
        hidden, weight, labels, bias=bias, ignore_index=ignore_index, reduction=reduction,
        logit_softcap=logit_softcap, run=run, step=step, stream=stream,
        target_hidden=target_hidden, target_weight=target_weight, target_bias=target_bias,
        target_logits=target_logits, input_ids=input_ids, attention_mask=attention_mask,
        token_names=token_names, max_chunk_bytes=max_chunk_bytes, vocab_start=vocab_start,
        vocab_size=vocab_size, tp_group=tp_group)[0]


def linear_cross_entropy_rows(
    hidden: Any, weight: Any, labels: Any, *, keep_rows: bool = False, **options: Any,
) -> tuple[Any, Any]:
    """`linear_cross_entropy`, and with `keep_rows` (or a recording run) each row's
    statistics as a `RowStats` of N-length tensors (else None): what a fused LM head
    returns per token (entropy, whether the label was the argmax) for TRL."""
    import torch

    from trainspect.kernels.linear_ce import fused_linear_ce

    unknown = set(options) - OPTIONS
    if unknown:
        raise TypeError(f"linear_cross_entropy got unexpected arguments {sorted(unknown)}")
    if any(options.get(k) is not None for k in ("vocab_start", "vocab_size", "tp_group")) or (
            hasattr(weight, "device_mesh")):  # a vocab-sharded head
        from trainspect.probes.linear_ce_vocab import vocab_parallel_rows

        return vocab_parallel_rows(hidden, weight, labels, keep_rows=keep_rows, **options)
    run, reduction = options.get("run"), options.get("reduction", "mean")
    ignore_index = options.get("ignore_index", -100)
    cap = options.get("logit_softcap")
    hidden2, labels2, shape = _flat(hidden, labels)
    teacher = _teacher(options.get("target_logits"), options.get("target_hidden"),
                       options.get("target_weight"), options.get("target_bias"),
                       hidden2.shape[0],
                       weight.shape[0] if isinstance(weight, torch.Tensor) else None, run)
    stats = RunStats.start(run, options.get("step"), options.get("stream", "text"), hidden,
                           weight, labels2, teacher, ignore_index, cap)
    recorder = None if stats is None else stats.recorder
    if recorder is None and keep_rows:
        recorder = RowRecorder(labels2.shape[0], labels2.device, ignore_index=ignore_index,
                               logit_softcap=cap)
    try:
        loss = fused_linear_ce(hidden2, weight, labels2, bias=options.get("bias"),
                               ignore_index=ignore_index, reduction=reduction,
                               logit_softcap=cap, row_pass=recorder,
                               max_chunk_bytes=options.get("max_chunk_bytes"))
    except (ValueError, TypeError) as err:
        raise TrainspectError(f"linear_cross_entropy: {err}") from err
    if stats is not None:
        stats.finish(options.get("input_ids"), options.get("attention_mask"),
                     options.get("token_names"), shape)
    loss = loss.view(shape) if reduction == "none" else loss
    return loss, None if recorder is None else recorder.row_stats()


def _flat(hidden: Any, labels: Any) -> tuple[Any, Any, tuple]:
    import torch

    if not isinstance(hidden, torch.Tensor) or hidden.dim() < 2:
        got = tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__
        raise TrainspectError(f"linear_cross_entropy: expected `hidden` of shape [..., H], "
                              f"got {got}")
    if not isinstance(labels, torch.Tensor) or tuple(labels.shape) != tuple(hidden.shape[:-1]):
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise TrainspectError(
            f"linear_cross_entropy: expected `labels` of shape {tuple(hidden.shape[:-1])} to "
            f"match hidden {tuple(hidden.shape)}, got {got} (a causal LM passes "
            "hidden[:, :-1] with labels[:, 1:])")
    return hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1), tuple(labels.shape)


def _teacher(logits: Any, hidden: Any, weight: Any, bias: Any, n: int, vocab: int | None,
             run: Any) -> Teacher | None:
    """The teacher's rows, checked: (N, V) logits, or a head of the same vocabulary."""
    if logits is None and hidden is None and weight is None:
        return None
    if run is None:
        raise TrainspectError("linear_cross_entropy: a teacher (`target_logits` or "
                              "`target_hidden`/`target_weight`) only feeds statistics: pass "
                              "`run=` too, or drop the teacher")
    if logits is not None:
        if hidden is not None or weight is not None:
            raise TrainspectError("linear_cross_entropy: pass either `target_logits` or "
                                  "`target_hidden` with `target_weight`, not both")
        rows = logits.reshape(-1, logits.shape[-1])
        if tuple(rows.shape) != (n, vocab):
            raise TrainspectError(f"linear_cross_entropy: expected `target_logits` with {n} "
                                  f"rows of V={vocab}, got {tuple(logits.shape)}")
        return Teacher(logits=rows.detach())
    if hidden is None or weight is None:
        raise TrainspectError("linear_cross_entropy: `target_hidden` and `target_weight` go "
                              "together (the teacher's last hidden states and its LM head)")
    rows = hidden.reshape(-1, hidden.shape[-1])
    if rows.shape[0] != n or weight.dim() != 2 or weight.shape[0] != vocab or (
            weight.shape[1] != rows.shape[1]):
        raise TrainspectError(f"linear_cross_entropy: expected `target_hidden` with {n} rows "
                              f"and `target_weight` (V={vocab}, {rows.shape[1]}), got "
                              f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    return Teacher(hidden=rows.detach(), weight=weight.detach(),
                   bias=None if bias is None else bias.detach())



def recording_start(run: Any, step: Any, stream: str, vocab: int, hidden: Any
                    ) -> tuple[int | None, tuple[int, int] | None]:
    """The step a fused loss records at and its sample rows' (sequences, positions), the
    first sequences of the batch on sample steps; (None, None) when nothing is recorded
    (no run, or a problem with the step or the stream's layout: said once)."""
    if run is None:
        return None, None
    if run._finished:
        run._reject("linear_cross_entropy", stream, "the run has finished")
        return None, None
    try:
        step = run._advance(step)
    except TrainspectError as err:
        run._reject("step", step, str(err))
        return None, None
    if "tokens" in run._disabled:
        return None, None
    probe = run.probe("tokens")
    known = None if probe is None else probe.streams.get(stream)
    if known is not None and (known.group is not None or known.vocab_size != vocab):
        run._input_alert(
            f"observe:{stream}:layout",
            f"linear_cross_entropy(stream={stream!r}): V={vocab} differs from the stream's "
            f"first batch (group={known.group!r}, V={known.vocab_size})",
            "Use one stream name per head layout; this batch's statistics were skipped "
            "(the loss was computed).")
        return None, None
    if not run._samples.due(stream, step):
        return step, None
    n_seq = 1 if hidden.dim() == 2 else math.prod(hidden.shape[:-2])
    positions = hidden.shape[-2] if hidden.dim() > 2 else hidden.shape[0]
    return step, (min(run._samples.num_samples, n_seq), positions)


class RunStats:
    """One call's statistics for a run: the recorder, then the fold and the samples."""

    def __init__(self, run: Any, step: int, stream: str, vocab: int, labels: Any,
                 recorder: RowRecorder, sample_shape: tuple[int, int] | None,
                 ignore_index: int) -> None:
        self.run, self.step, self.stream, self.vocab = run, step, stream, vocab
        self.labels = labels
        self.recorder = recorder
        self.sample_shape = sample_shape
        self.ignore_index = ignore_index

    @classmethod
    def start(cls, run: Any, step: Any, stream: str, hidden: Any, weight: Any, labels: Any,
              teacher: Teacher | None, ignore_index: int,
              logit_softcap: float | None) -> RunStats | None:
        """The statistics of this call, or None (no run, or nothing to record: said once)."""
        vocab = weight.shape[0]
        step, sample_shape = recording_start(run, step, stream, vocab, hidden)
        if step is None:
            return None
        recorder = RowRecorder(labels.shape[0], labels.device, ignore_index=ignore_index,
                               logit_softcap=logit_softcap, teacher=teacher,
                               sample_rows=0 if sample_shape is None else math.prod(sample_shape))
        return cls(run, step, stream, vocab, labels, recorder, sample_shape, ignore_index)

    def finish(self, input_ids: Any, attention_mask: Any, token_names: dict | None,
               label_shape: tuple) -> None:
        """Fold the rows into the stream's sums; check the labels against the inputs as
        `observe` does (probes/labels.py); queue the samples. Never raises."""
        import torch

        from trainspect.probes.labels import observe_labels

        run = self.run
        observe_labels(run, self.stream, None, (*label_shape, self.vocab),
                       self.labels.view(label_shape), None, input_ids, attention_mask,
                       self.ignore_index)
        try:
            from trainspect.kernels.token_sums import accumulate_rows
            from trainspect.probes.tokens import token_probe

            probe = token_probe(run)
            state = probe._state(self.stream, None, 1, self.vocab, self.labels.device)
            with torch.no_grad():  # the fold `observe` and `observe_rows` use, once per batch
                accumulate_rows(probe._tensors(state), self.recorder.row_stats(), self.labels,
                                None, 1, self.ignore_index, self.vocab)
        except Exception as err:
            run.probe_failed("tokens", "linear_cross_entropy", err)
            return
        if self.sample_shape is not None:
            try:
                if self.recorder.sample_error is not None:
                    raise self.recorder.sample_error
                self._samples(input_ids, attention_mask, token_names)
            except Exception as err:
                run.probe_failed("samples", "linear_cross_entropy", err)

    def _samples(self, input_ids: Any, attention_mask: Any, token_names: dict | None) -> None:
        """The sample rows, built by the run's SampleTaker from the fields kept per row.

        SampleTaker.take computes its fields from logits; here they exist already, so it
        is handed a (k, P, top-k) stand-in for the logits (it only fixes the layout of
        the rows it builds) and its tensors are replaced by the recorded ones, in its
        order: FIELDS, then top ids and top probabilities.
        """
        import torch

        from trainspect.flush import Part
        from trainspect.probes.samples import FIELDS

        run, rec = self.run, self.recorder
        k, positions = self.sample_shape
        rows = k * positions
        labels = self.labels[:rows].view(k, positions)
        ids = None if input_ids is None else input_ids.reshape(-1, input_ids.shape[-1])
        mask = None if attention_mask is None or input_ids is None else attention_mask.reshape(
            ids.shape)
        stand_in = torch.zeros(k, positions, SAMPLE_TOP_K, device=labels.device)
        tensors, build = run._samples.take(
            self.step, self.stream, None, stand_in, labels, None, ids, mask, token_names,
            self.ignore_index, on_rows=run._print_samples if run.verbose else None)
        fields = {name: rec.fields[name][:rows].view(k, positions)
                  for name in FIELDS if name != "label"}
        fields["label"] = labels.to(torch.int64)
        top_logits = rec.top_logits.view(k, positions, SAMPLE_TOP_K)
        conf = fields["conf"][..., None]
        top_probs = torch.exp(top_logits - top_logits[..., :1]) * conf
        recorded = [fields[name] for name in FIELDS]
        recorded += [rec.top_ids.view(k, positions, SAMPLE_TOP_K), top_probs]
        tensors[: len(recorded)] = recorded
        job = run._flusher.start([Part(tensors, build, reduce=False)])
        if job is not None:
            run._writer.jobs.append(job)
