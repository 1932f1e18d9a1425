"""Token statistics per stream and group: what the model predicts and whether its
confidence is deserved, accumulated on the device and turned into metrics at the flush.

`update` runs the fused pass (`kernels.token_stats.row_stats`) over the logits and
adds per-row results into fixed-size float64 sums: per group (draft position, audio
codebook, or one group) the columns of `SUMS`, a [G, 10, 3] calibration table, and
per-stream counters. Nothing is read back until the flush, and the logits are not
kept after the call. `compute` pools the window's sums (and, through the run's one
all_reduce, the ranks' sums) into ratios: never an average of per-batch ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainspect.records import Alert, Matrix, Scalar

N_BINS = 10  # calibration bins of width 0.1; a confidence of exactly 1.0 goes in the last
CONFIDENT = 0.5  # "confidently wrong": wrong with top-1 probability above this

# Per-group sums, one column each (float64: exact counts up to 2**53 tokens).
SUMS = (
    "tokens",  # supervised tokens
    "correct", "confident_wrong", "ce", "entropy", "conf", "label_prob",
    "teacher_agree", "kl", "alpha",  # with target_logits
    "chain_correct",  # tokens whose positions 0..g are all correct (groups = draft positions)
    "chain_base",  # tokens whose positions 0..g-1 are all correct and g is supervised
)
COL = {name: i for i, name in enumerate(SUMS)}
# Per-stream counters.
COUNTERS = ("calls", "empty_calls", "bad_labels", "teacher_calls")
CTR = {name: i for i, name in enumerate(COUNTERS)}


@dataclass
class StreamState:
    """Device sums of one stream: fixed size, allocated at its first `observe`."""

    group: str | None
    n_groups: int
    vocab_size: int
    sums: Any  # (G, len(SUMS)) float64
    calibration: Any  # (G, N_BINS, 3) float64: count, sum of conf, sum of correct
    counters: Any  # (len(COUNTERS),) float64
    ce_ema: float | None = None
    ema_step: int | None = None
    group_labels: list[str] = field(default_factory=list)


class TokenProbe:
    """The probe behind `Run.observe`: one `StreamState` per stream."""

    name = "tokens"

    def __init__(self, ema_span_steps: int = 300) -> None:
        self.streams: dict[str, StreamState] = {}
        # EMA weight per step for a span of N steps, as pandas' `ewm(span=N)`.
        self.ema_alpha_per_step = 2.0 / (ema_span_steps + 1)

    # ---- the training step (device work only) -----------------------------------------

    def update(self, stream: str, group: str | None, logits: Any, labels: Any, mask: Any,
               target_logits: Any, ignore_index: int = -100) -> None:
        """Add one batch. Shapes are checked by the caller; (..., G, V) when grouped."""

        from trainspect.kernels.token_stats import row_stats

        vocab = logits.shape[-1]
        n_groups = logits.shape[-2] if group else 1
        state = self._state(stream, group, n_groups, vocab, logits.device)
        padded = _padded_rows(logits, target_logits, n_groups)
        if padded is not None:  # e.g. logits[:, :-1]: one 2-D view with gap rows, ignored
            rows, teacher, row_strides = padded
            blocks = [(rows, teacher)]
            label_rows = _pad_like(labels, row_strides, rows.shape[0], ignore_index)
            mask_rows = None if mask is None else _pad_like(mask, row_strides, rows.shape[0],
                                                            False)
        else:
            blocks = _row_blocks(logits, target_logits)  # (n_i, V) views, no copy
            label_rows = labels.reshape(-1)
            mask_rows = None if mask is None else mask.reshape(-1)
        parts, start = [], 0
        for block, teacher_block in blocks:
            stop = start + block.shape[0]
            parts.append(row_stats(
                block, label_rows[start:stop], target_logits=teacher_block,
                mask=None if mask_rows is None else mask_rows[start:stop],
                ignore_index=ignore_index,
            ))
            start = stop
        stats = parts[0] if len(parts) == 1 else _cat(parts)

        self._accumulate(state, stats, label_rows, mask_rows, n_groups, ignore_index)

    @staticmethod
    def _accumulate(state: StreamState, stats: Any, labels: Any, mask: Any, n_groups: int,
                    ignore_index: int) -> None:
        """Fold per-row results into the sums: about twenty small kernels, no sync.

        The kernel already writes 0 to every output of a row that is not valid, so
        sums of ce, entropy, conf and label_prob need no masking here.
        """
        import torch

        valid = stats.valid
        correct = (stats.argmax == labels) & valid  # (N,) bool
        flags = torch.stack([valid, correct, (stats.conf > CONFIDENT) & valid & ~correct], 1)
        columns = [flags.to(torch.float32), stats.ce[:, None], stats.entropy[:, None],
                   stats.conf[:, None], stats.label_prob[:, None]]
        if stats.kl is not None:
            agree = (stats.argmax == stats.teacher_argmax) & valid
            columns += [agree[:, None].to(torch.float32), stats.kl[:, None],
                        stats.alpha[:, None]]
        per_row = torch.cat(columns, dim=1).to(torch.float64)  # (N, K): the first K of SUMS
        sums = per_row.view(-1, n_groups, per_row.shape[1]).sum(dim=0)  # (G, K)
        state.sums[:, :sums.shape[1]] += sums
        if n_groups > 1:  # chains over positions: token t's positions are consecutive rows
            hits = per_row[:, 1].view(-1, n_groups)  # (M, G) correct
            chain = torch.cumprod(hits, dim=1)
            base = torch.cat([torch.ones_like(chain[:, :1]), chain[:, :-1]], dim=1)
            state.sums[:, COL["chain_correct"]] += chain.sum(dim=0)
            state.sums[:, COL["chain_base"]] += (base * per_row[:, 0].view(-1, n_groups)).sum(0)
        else:
            state.sums[:, COL["chain_correct"]] += sums[:, 1]
            state.sums[:, COL["chain_base"]] += sums[:, 0]

        bins = (stats.conf * N_BINS).to(torch.int64).clamp_(0, N_BINS - 1)  # 1.0: last bin
        if n_groups > 1:
            bins += (torch.arange(bins.numel(), device=bins.device) % n_groups) * N_BINS
        cells = torch.stack([per_row[:, COL["tokens"]], per_row[:, COL["conf"]],
                             per_row[:, COL["correct"]]], dim=1)  # (N, 3)
        state.calibration.view(-1, 3).index_add_(0, bins, cells)

        raw = labels.to(torch.int64)
        bad = (raw != ignore_index) & ~valid  # supervised-looking label the kernel refused
        if mask is not None:
            bad &= mask.to(torch.bool)
        tokens = sums[:, 0].sum()
        one = torch.ones_like(tokens)
        state.counters += torch.stack([one, (tokens == 0).to(torch.float64),
                                       bad.sum().to(torch.float64),
                                       one if stats.kl is not None else one * 0])

    def _state(self, stream: str, group: str | None, n_groups: int, vocab: int,
               device: Any) -> StreamState:
        import torch

        state = self.streams.get(stream)
        if state is None:
            state = StreamState(
                group=group, n_groups=n_groups, vocab_size=vocab,
                sums=torch.zeros(n_groups, len(SUMS), dtype=torch.float64, device=device),
                calibration=torch.zeros(n_groups, N_BINS, 3, dtype=torch.float64, device=device),
                counters=torch.zeros(len(COUNTERS), dtype=torch.float64, device=device),
            )
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
            counters = arrays[3 * i + 2]
            records.extend(self._stream_records(name, s, sums, calibration, counters, step,
                                                wall_time))
        return records

    def _stream_records(self, stream: str, s: StreamState, sums: np.ndarray,
                        calibration: np.ndarray, counters: np.ndarray, step: int,
                        wall_time: float) -> list[Any]:
        if counters[CTR["calls"]] == 0:
            return []  # not observed in this window
        has_teacher = counters[CTR["teacher_calls"]] > 0
        out: dict[str, float] = {
            "supervised_tokens": float(sums[:, COL["tokens"]].sum()),
            "empty_mask_batches": float(counters[CTR["empty_calls"]]),
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
        bad = int(counters[CTR["bad_labels"]])
        if bad:
            records.append(Alert(
                step=step, rule="labels_out_of_range", level="critical",
                message=f"stream '{stream}': {bad} labels in this window were outside "
                        f"[0, {s.vocab_size}) and not -100; they were ignored",
                action="Check the label construction: the vocabulary size of the head "
                       f"({s.vocab_size}) must cover every label id, and padding must be -100.",
                wall_time=wall_time,
            ))
        return records

    def _ema(self, s: StreamState, ce: float, step: int) -> float:
        """EMA of the window CE, weighted by the steps the window spans."""
        if s.ce_ema is None or s.ema_step is None or not math.isfinite(s.ce_ema):
            s.ce_ema = ce
        else:
            span = max(step - s.ema_step, 1)
            alpha = 1.0 - (1.0 - self.ema_alpha_per_step) ** span
            s.ce_ema = alpha * ce + (1.0 - alpha) * s.ce_ema
        s.ema_step = step
        return s.ce_ema


def ratios(sums: np.ndarray, calibration: np.ndarray, has_teacher: bool) -> dict[str, float]:
    """Metrics of docs/architecture.md's metric table from pooled sums of one group (or all groups)."""
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


def _padded_rows(logits: Any, target: Any, n_groups: int) -> tuple[Any, Any, list[int]] | None:
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


def _pad_like(values: Any, row_strides: list[int], n_rows: int, fill: Any) -> Any:
    """`values` (the leading shape of the logits) laid out at the padded view's rows."""
    import torch

    size = values.shape[0] * row_strides[0]
    padded = torch.full((size,), fill, dtype=values.dtype, device=values.device)
    padded.as_strided(tuple(values.shape), tuple(row_strides)).copy_(values)
    return padded[:n_rows]


def _row_blocks(logits: Any, target: Any) -> list[tuple[Any, Any]]:
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
                for pair in _row_blocks(logits[i], None if target is None else target[i])]


def _cat(parts: list[Any]) -> Any:
    import torch

    from trainspect.kernels.token_stats import RowStats

    def join(name: str) -> Any:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return RowStats(**{name: join(name) for name in RowStats.__dataclass_fields__})
