"""Token statistics per stream and group: what the model predicts and whether its
confidence is deserved, accumulated on the device and turned into metrics at the flush.

`update` (behind `Run.observe`) and `observe_rows` (behind a fused linear
cross-entropy, which hands over one chunk of rows at a time) run the row-statistics
core (`kernels.token_stats`) and fold every row into fixed-size float64 sums laid out
by `kernels.token_sums`: per group (draft position, audio codebook, or one group) the
columns of `SUMS`, a [G, 10, 3] calibration table, and per-stream counters. Nothing is
read back until the flush, and the logits are not kept after the call. `compute`
pools the window's sums (and, through the run's one all_reduce, the ranks' sums) into
ratios: never an average of per-batch ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainspect.kernels.token_sums import COL, COUNTERS, CTR, N_BINS, SUMS
from trainspect.probes.token_layout import fold_triton_batch, pad_like, padded_rows, row_blocks
from trainspect.records import Alert, Matrix, Scalar


@dataclass
class StreamState:
    """Device sums of one stream: fixed size, allocated at its first `observe`."""

    group: str | None
    n_groups: int
    vocab_size: int
    sums: Any  # (G, len(SUMS)) float64
    calibration: Any  # (G, N_BINS, 3) float64: count, sum of conf, sum of correct
    counters: Any  # (len(COUNTERS),) float64
    scratch: Any  # (len(SCRATCH),) float64, zero between calls; never flushed
    ema_raw: float = 0.0  # the CE EMA before bias correction (starts at 0, as Adam's)
    ema_weight: float = 0.0  # 1 - prod(decay): the weight the EMA has gathered so far
    ema_step: int | None = None
    ema_first: bool = True  # the first window's weight waits for the second's span
    alerted: set[str] = field(default_factory=set)  # alert rules already raised (once a run)


class TokenProbe:
    """The probe behind `Run.observe`: one `StreamState` per stream."""

    name = "tokens"

    def __init__(self, ema_span_steps: int = 300, backend: str = "auto") -> None:
        self.streams: dict[str, StreamState] = {}
        self.backend = backend  # "auto": the Triton kernel on CUDA, the torch path elsewhere
        # EMA weight per step for a span of N steps, as pandas' `ewm(span=N)`.
        self.ema_alpha_per_step = 2.0 / (ema_span_steps + 1)

    # ---- the training step (device work only) -----------------------------------------

    def update(self, stream: str, group: str | None, logits: Any, labels: Any, mask: Any,
               target_logits: Any, ignore_index: int = -100) -> None:
        """Add one batch. Shapes are checked by the caller; (..., G, V) when grouped."""
        from trainspect.kernels.token_stats import resolve_backend

        vocab = logits.shape[-1]
        n_groups = logits.shape[-2] if group else 1
        state = self._state(stream, group, n_groups, vocab, logits.device)
        if resolve_backend(self.backend, logits.device) == "triton":
            fold_triton_batch(logits, labels, mask, target_logits, n_groups,
                              self._tensors(state), ignore_index, True)
        else:
            self._update_torch(state, logits, labels, mask, target_logits, n_groups,
                               ignore_index)

    def _update_torch(self, state: StreamState, logits: Any, labels: Any, mask: Any,
                      target_logits: Any, n_groups: int, ignore_index: int) -> None:
        """The torch path: per-row statistics of 2-D views, then the torch fold."""
        from trainspect.kernels.token_stats import row_stats
        from trainspect.kernels.token_sums import accumulate_rows

        padded = padded_rows(logits, target_logits, n_groups)
        if padded is not None:  # e.g. logits[:, :-1]: one 2-D view with gap rows, ignored
            rows, teacher, row_strides = padded
            blocks = [(rows, teacher)]
            label_rows = pad_like(labels, row_strides, rows.shape[0], ignore_index)
            mask_rows = None if mask is None else pad_like(mask, row_strides, rows.shape[0],
                                                           False)
        else:
            blocks = row_blocks(logits, target_logits)  # (n_i, V) views, no copy
            label_rows = labels.reshape(-1)
            mask_rows = None if mask is None else mask.reshape(-1)
        start = 0
        for i, (block, teacher_block) in enumerate(blocks):
            stop = start + block.shape[0]
            block_labels = label_rows[start:stop]
            block_mask = None if mask_rows is None else mask_rows[start:stop]
            stats = row_stats(block, block_labels, target_logits=teacher_block,
                              mask=block_mask, ignore_index=ignore_index, backend="torch")
            accumulate_rows(self._tensors(state), stats, block_labels, block_mask, n_groups,
                            ignore_index, logits.shape[-1], last_chunk=i == len(blocks) - 1)
            start = stop

    def observe_rows(self, stream: str, logits: Any, labels: Any, *, mask: Any = None,
                     target_logits: Any = None, ignore_index: int = -100,
                     grad_out: Any = None, logit_softcap: float | None = None,
                     grad_scale: Any = None, last_chunk: bool = True,
                     backend: str | None = None) -> Any:
        """Fold one chunk of rows (N, V) with labels (N,) into `stream`; return its RowStats.

        The entry point of a fused linear cross-entropy (docs/architecture.md, "The
        row-statistics core"): the same pass gives the per-row statistics (ce for the
        loss, `finite`, ...), writes the gradient into `grad_out` when given, and folds
        every row into the stream's sums exactly as `update` does (on CUDA, in the same
        launch). `last_chunk=False` says more chunks of the same batch follow; the batch
        is counted as one call (calls, empty batches, teacher calls) at its last chunk.
        Raises ValueError for bad arguments or a stream first observed with another
        layout.
        """
        from trainspect.kernels.token_stats import check_arguments, resolve_backend, row_stats
        from trainspect.kernels.token_sums import accumulate_rows

        check_arguments(logits, labels, target_logits=target_logits, mask=mask,
                        grad_out=grad_out, logit_softcap=logit_softcap, grad_scale=grad_scale)
        vocab = logits.shape[-1]
        known = self.streams.get(stream)
        if known is not None and (known.group is not None or known.vocab_size != vocab):
            raise ValueError(f"stream {stream!r} was first observed with group="
                             f"{known.group!r} and V={known.vocab_size}; rows of V={vocab} "
                             f"need a stream of their own")
        state = self._state(stream, None, 1, vocab, logits.device)
        chosen = resolve_backend(backend or self.backend, logits.device)
        if chosen == "triton":
            from trainspect.kernels.token_stats_triton import row_stats_triton

            return row_stats_triton(
                logits, labels, mask=mask, ignore_index=ignore_index,
                target_logits=target_logits, grad_out=grad_out,
                logit_softcap=None if logit_softcap is None else float(logit_softcap),
                grad_scale=grad_scale, fold=self._tensors(state), last_chunk=last_chunk)
        stats = row_stats(logits, labels, target_logits=target_logits, mask=mask,
                          ignore_index=ignore_index, backend="torch", grad_out=grad_out,
                          logit_softcap=logit_softcap, grad_scale=grad_scale)
        accumulate_rows(self._tensors(state), stats, labels, mask, 1, ignore_index, vocab,
                        last_chunk=last_chunk)
        return stats

    def fold_rows(self, stream: str, group: str | None, n_groups: int, vocab: int,
                  stats: Any, labels: Any, mask: Any, ignore_index: int = -100, *,
                  count: bool = True) -> None:
        """Fold one batch's per-row statistics computed elsewhere (vocab-parallel logits,
        merged across their shards: probes/vocab_parallel.py) into `stream`, as `update`
        folds its own rows. `count=False` only makes the stream exist: a rank whose rows
        another rank of its tensor-parallel group counts keeps zeros of the same layout."""
        from trainspect.kernels.token_sums import accumulate_rows

        state = self._state(stream, group, n_groups, vocab, labels.device)
        if count:
            accumulate_rows(self._tensors(state), stats, labels, mask, n_groups, ignore_index,
                            vocab)

    @staticmethod
    def _tensors(state: StreamState) -> tuple[Any, Any, Any, Any]:
        return state.sums, state.calibration, state.counters, state.scratch

    def _state(self, stream: str, group: str | None, n_groups: int, vocab: int,
               device: Any) -> StreamState:
        from trainspect.kernels.token_sums import new_state

        state = self.streams.get(stream)
        if state is None:
            sums, calibration, counters, scratch = new_state(n_groups, device)
            state = StreamState(group=group, n_groups=n_groups, vocab_size=vocab, sums=sums,
                                calibration=calibration, counters=counters, scratch=scratch)
            self.streams[stream] = state
        return state

    # ---- the flush -----------------------------------------------------------------------

    def state(self) -> list[Any]:
        return [t for s in self.streams.values() for t in (s.sums, s.calibration, s.counters)]

    def reset(self) -> None:
        for s in self.streams.values():
            s.sums.zero_()
            s.calibration.zero_()
            s.counters.zero_()

    def compute(self, arrays: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        records: list[Any] = []
        for i, (name, s) in enumerate(list(self.streams.items())[: len(arrays) // 3]):
            sums = arrays[3 * i].reshape(s.n_groups, len(SUMS))
            calibration = arrays[3 * i + 1].reshape(s.n_groups, N_BINS, 3)
            counters = arrays[3 * i + 2].reshape(len(COUNTERS))
            records.extend(self._stream_records(name, s, sums, calibration, counters, step,
                                                wall_time))
        return records

    def _stream_records(self, stream: str, s: StreamState, sums: np.ndarray,
                        calibration: np.ndarray, counters: np.ndarray, step: int,
                        wall_time: float) -> list[Any]:
        if counters[CTR["calls"]] == 0:
            return []  # not observed in this window
        has_teacher = counters[CTR["teacher_calls"]] > 0
        nonfinite = int(counters[CTR["nonfinite_rows"]])
        bad = int(counters[CTR["bad_labels"]])
        out: dict[str, float] = {
            "supervised_tokens": float(sums[:, COL["tokens"]].sum()),
            "empty_mask_batches": float(counters[CTR["empty_calls"]]),
            "nonfinite_rows": float(nonfinite),
            "out_of_range_labels": float(bad),
        }
        out.update(ratios(sums.sum(axis=0), calibration.sum(axis=0), has_teacher))
        if "ce" in out:
            out["ce_ema"] = self._ema(s, out["ce"], step)
        if s.group:
            for g in range(s.n_groups):
                per_group = ratios(sums[g], calibration[g], has_teacher)
                per_group["supervised_tokens"] = sums[g, COL["tokens"]]
                if s.group == "pos" and sums[g, COL["chain_base"]] > 0:
                    per_group["cond_acc"] = sums[g, COL["chain_correct"]] / sums[g,
                                                                                 COL["chain_base"]]
                for metric, value in per_group.items():
                    out[f"{s.group}{g}/{metric}"] = value
            if s.group == "pos":
                out.update(acceptance(sums))
        records: list[Any] = [Scalar(f"{stream}/{k}", step, float(v), wall_time)
                              for k, v in out.items()]
        records.append(Matrix(
            f"{stream}/calibration", step, calibration.sum(axis=0).tolist(),
            row_labels=[f"{b / N_BINS:.1f}-{(b + 1) / N_BINS:.1f}" for b in range(N_BINS)],
            col_labels=["count", "sum_conf", "sum_correct"], wall_time=wall_time,
        ))
        if nonfinite and "logits_nonfinite" not in s.alerted:
            s.alerted.add("logits_nonfinite")
            kept = int(out["supervised_tokens"])
            records.append(Alert(
                step=step, rule="logits_nonfinite", level="critical",
                message=f"stream '{stream}', step {step}: {nonfinite} supervised rows of the "
                        f"logits had NaN or inf values in this window and were left out of "
                        f"the token statistics ({kept} rows kept; {stream}/nonfinite_rows "
                        f"counts them per window; this alert is shown once)",
                action="The loss is likely NaN too: check for overflow (fp16 without a loss "
                       "scaler, a learning rate that is too high), see grad/norm and "
                       "hidden/*/nonfinite around this step, and restart from the last "
                       "finite checkpoint.",
                wall_time=wall_time,
            ))
        if bad and "labels_out_of_range" not in s.alerted:
            s.alerted.add("labels_out_of_range")
            records.append(Alert(
                step=step, rule="labels_out_of_range", level="critical",
                message=f"stream '{stream}', step {step}: {bad} labels in this window were "
                        f"outside [0, {s.vocab_size}) and not the ignore index; they were "
                        f"ignored ({stream}/out_of_range_labels counts them per window; "
                        f"this alert is shown once)",
                action="Check the label construction: the vocabulary size of the head "
                       f"({s.vocab_size}) must cover every label id, and padding must be -100.",
                wall_time=wall_time,
            ))
        return records

    def _ema(self, s: StreamState, ce: float, step: int) -> float:
        """Bias-corrected EMA of the window CE, weighted by the steps each window spans.

        As Adam's moments: the raw EMA starts at 0 and is divided by the weight it has
        gathered, 1 - prod(decay), so a short run's EMA is the weighted mean of its
        windows so far rather than its first window. A window spans the steps since the
        previous one; the first, whose start is unknown, counts as long as the second
        (the first window's EMA is its CE whatever its span). A window whose CE is not
        finite is left out. Nothing here depends on the number of ranks.
        """
        if not math.isfinite(ce):
            return s.ema_raw / s.ema_weight if s.ema_weight > 0 else ce
        beta = 1.0 - self.ema_alpha_per_step
        if s.ema_step is None:  # the first window: its EMA is its CE
            s.ema_raw, s.ema_weight, s.ema_step = ce, 1.0, step
            return ce
        span = max(step - s.ema_step, 1)
        decay = beta**span
        if s.ema_first:  # the second window: give the first the same span, now known
            s.ema_raw, s.ema_weight, s.ema_first = (1.0 - decay) * s.ema_raw, 1.0 - decay, False
        s.ema_raw = decay * s.ema_raw + (1.0 - decay) * ce
        s.ema_weight = 1.0 - (1.0 - s.ema_weight) * decay
        s.ema_step = step
        return s.ema_raw / s.ema_weight


def token_probe(run: Any) -> TokenProbe:
    """The run's token probe (the one behind `run.observe`), attached on first use."""
    probe = run.probe(TokenProbe.name)
    if probe is None:
        probe = run.add_probe(TokenProbe())
    return probe


def ratios(sums: np.ndarray, calibration: np.ndarray, has_teacher: bool) -> dict[str, float]:
    """Metrics of docs/architecture.md's metric table from the pooled sums of one group
    (or of all groups)."""
    n = sums[COL["tokens"]]
    if n == 0:
        return {}
    conf = sums[COL["conf"]] / n
    target_conf = sums[COL["label_prob"]] / n
    out = {
        "acc": sums[COL["correct"]] / n,
        "conf": conf,
        "target_conf": target_conf,
        "conf_gap": target_conf - conf,
        "entropy": sums[COL["entropy"]] / n,
        "ce": sums[COL["ce"]] / n,
        "ece": expected_calibration_error(calibration),
        "confident_wrong": sums[COL["confident_wrong"]] / n,
    }
    if has_teacher:
        out.update(teacher_agree=sums[COL["teacher_agree"]] / n, kl=sums[COL["kl"]] / n,
                   alpha=sums[COL["alpha"]] / n)
    return out


def expected_calibration_error(calibration: np.ndarray) -> float:
    """ECE over pooled bins: sum_b |sum correct_b - sum conf_b| / N."""
    total = calibration[:, 0].sum()
    if total == 0:
        return math.nan
    return float(np.abs(calibration[:, 2] - calibration[:, 1]).sum() / total)


def acceptance(sums: np.ndarray) -> dict[str, float]:
    """Simulated acceptance length of a draft head, from per-position sums (G positions).

    `accept_len` = sum_k prod_{i<=k} acc_i, with acc_i each position's pooled accuracy
    (the formula in docs/architecture.md: it treats positions as independent). `accept_len_tokens`
    counts, per token, how many leading positions were all correct, averaged over
    tokens whose position 0 is supervised: the same quantity measured without the
    independence assumption. Both count accepted draft tokens only; add 1 for the
    target model's own token to compare with papers' tau.
    """
    tokens = sums[:, COL["tokens"]]
    if tokens[0] == 0:
        return {}
    acc = np.divide(sums[:, COL["correct"]], tokens, out=np.zeros_like(tokens),
                    where=tokens > 0)
    return {
        "accept_len": float(np.cumprod(acc).sum()),
        "accept_len_tokens": float(sums[:, COL["chain_correct"]].sum() / tokens[0]),
    }
