"""What the token probe adds up per stream, and the reference fold of per-row statistics.

A stream's state is three float64 tensors on the logits' device, fixed in size:

- ``sums`` (G, len(SUMS)): per group (draft position, audio codebook, or one group),
  one column per name in ``SUMS``;
- ``calibration`` (G, N_BINS, 3): per confidence bin, the count, the sum of top-1
  confidence and the sum of correct argmaxes;
- ``counters`` (len(COUNTERS),): per-stream counts.

and a per-call ``scratch`` (len(SCRATCH),) float64 that is zero between calls.

Only rows that are valid (supervised, label in range) and finite (see
``RowStats.finite``) are counted in ``sums`` and ``calibration``; valid rows that are not
finite are counted in ``counters["nonfinite_rows"]`` instead. The Triton kernel folds
its rows into these tensors itself (token_stats_triton.py); ``accumulate_rows`` here is
the torch fold, used by the torch backend and as the kernel's reference.

This module imports nothing else of trainspect's (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import torch
from torch import Tensor

from .token_stats import RowStats

__all__ = ["COL", "CONFIDENT", "COUNTERS", "CTR", "N_BINS", "SCRATCH", "SUMS",
           "accumulate_rows", "calibration_bin", "new_state"]

N_BINS = 10  # calibration bins of width 0.1: bin b holds b/10 <= conf < (b+1)/10, 1.0 in 9
CONFIDENT = 0.5  # "confidently wrong": wrong with top-1 probability above this

# Per-group sums, one column each (float64: exact counts up to 2**53 tokens).
SUMS = (
    "tokens",  # supervised (valid and finite) tokens
    "correct", "confident_wrong", "ce", "entropy", "conf", "label_prob",
    "teacher_agree", "kl", "alpha",  # with target_logits
    "chain_correct",  # tokens whose positions 0..g are all correct (groups = draft positions)
    "chain_base",  # tokens whose positions 0..g-1 are all correct and g is supervised
)
COL = {name: i for i, name in enumerate(SUMS)}
# Per-stream counters.
COUNTERS = (
    "calls",  # observe calls (a chunked call counts once, at its last chunk)
    "empty_calls",  # calls with no supervised (valid) row
    "bad_labels",  # labels outside [0, V) that are not ignore_index (and not masked out)
    "teacher_calls",  # calls with target_logits
    "nonfinite_rows",  # valid rows left out because their logits were not finite
)
CTR = {name: i for i, name in enumerate(COUNTERS)}
# Per-call scratch, zero between calls.
SCRATCH = ("call_tokens", "programs_done")
CTR_SCRATCH_TOKENS = SCRATCH.index("call_tokens")


def calibration_bin(conf: Tensor) -> Tensor:
    """The confidence bin of each top-1 probability: floor(N_BINS * conf), 1.0 in the last.

    One rule for the token probe, the fixed eval and the kernel: the product is formed
    in float64, where it is exact for a float32 ``conf`` (24 + 4 bits), so bin b holds
    exactly the confidences in [b / 10, (b + 1) / 10) as real numbers. (In float32,
    0.7f * 10 rounds up to 7.0 though 0.7f < 0.7.) Returns int64 in [0, N_BINS); NaN
    (a row that is not counted) goes to bin 0.
    """
    scaled = (conf.to(torch.float64) * N_BINS).nan_to_num_(0.0)  # NaN: a row left out
    return scaled.floor_().clamp_(0, N_BINS - 1).to(torch.int64)


def new_state(n_groups: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Zeroed (sums, calibration, counters, scratch) of one stream."""
    f64 = dict(dtype=torch.float64, device=device)
    return (torch.zeros(n_groups, len(SUMS), **f64), torch.zeros(n_groups, N_BINS, 3, **f64),
            torch.zeros(len(COUNTERS), **f64), torch.zeros(len(SCRATCH), **f64))


def accumulate_rows(
    state: tuple[Tensor, Tensor, Tensor, Tensor],
    stats: RowStats,
    labels: Tensor,
    mask: Tensor | None,
    n_groups: int,
    ignore_index: int,
    vocab_size: int,
    *,
    last_chunk: bool = True,
) -> None:
    """Fold per-row ``stats`` (rows in (token, group) order) into a stream's ``state``.

    ``labels`` and ``mask`` are the raw (N,) values given (for the out-of-range count);
    ``last_chunk`` False means more chunks of the same call follow: the call is counted
    (calls, empty calls, teacher calls) when its last chunk arrives.
    About twenty small kernels and no host sync; the Triton backend does the same fold
    inside its kernel.
    """
    sums, calibration, counters, scratch = state
    f64 = torch.float64
    finite = stats.finite if stats.finite is not None else stats.valid
    counted = stats.valid & finite
    correct = (stats.argmax == labels.to(torch.int64)) & counted  # (N,) bool
    zero = torch.zeros((), dtype=torch.float32, device=counted.device)

    def kept(values: Tensor) -> Tensor:  # NaN of rows left out must not reach the sums
        return torch.where(counted, values, zero)[:, None]

    flags = torch.stack([counted, correct, (stats.conf > CONFIDENT) & counted & ~correct], 1)
    columns = [flags.to(torch.float32), kept(stats.ce), kept(stats.entropy), kept(stats.conf),
               kept(stats.label_prob)]
    if stats.kl is not None:
        agree = (stats.argmax == stats.teacher_argmax) & counted
        columns += [agree[:, None].to(torch.float32), kept(stats.kl), kept(stats.alpha)]
    per_row = torch.cat(columns, dim=1).to(f64)  # (N, K): the first K of SUMS
    group_sums = per_row.view(-1, n_groups, per_row.shape[1]).sum(dim=0)  # (G, K)
    sums[:, :group_sums.shape[1]] += group_sums
    if n_groups > 1:  # chains over positions: token t's positions are consecutive rows
        hits = per_row[:, COL["correct"]].view(-1, n_groups)  # (M, G)
        chain = torch.cumprod(hits, dim=1)
        base = torch.cat([torch.ones_like(chain[:, :1]), chain[:, :-1]], dim=1)
        sums[:, COL["chain_correct"]] += chain.sum(dim=0)
        sums[:, COL["chain_base"]] += (base * per_row[:, 0].view(-1, n_groups)).sum(dim=0)
    else:
        sums[:, COL["chain_correct"]] += group_sums[:, COL["correct"]]
        sums[:, COL["chain_base"]] += group_sums[:, COL["tokens"]]

    bins = calibration_bin(torch.where(counted, stats.conf, zero))
    if n_groups > 1:
        bins += (torch.arange(bins.numel(), device=bins.device) % n_groups) * N_BINS
    # (N, 3); stacked, not indexed with a list (that would copy an index to the device: a sync)
    cells = torch.stack([per_row[:, COL["tokens"]], per_row[:, COL["conf"]],
                         per_row[:, COL["correct"]]], dim=1)
    calibration.view(-1, 3).index_add_(0, bins, cells)

    raw = labels.to(torch.int64)
    bad = (raw != ignore_index) & ((raw < 0) | (raw >= vocab_size))
    if mask is not None:
        bad &= mask.to(torch.bool)
    tokens = stats.valid.sum().to(f64)  # supervised rows, finite or not: "empty" = none
    scratch[CTR_SCRATCH_TOKENS] += tokens
    one = torch.ones_like(tokens)
    add = [one * 0, one * 0, bad.sum().to(f64), one * 0,
           (stats.valid & ~finite).sum().to(f64)]
    if last_chunk:
        add[CTR["calls"]] = one
        add[CTR["empty_calls"]] = (scratch[CTR_SCRATCH_TOKENS] == 0).to(f64)
        add[CTR["teacher_calls"]] = one if stats.kl is not None else one * 0
    counters += torch.stack(add)
    if last_chunk:
        scratch.zero_()

