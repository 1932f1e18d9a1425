"""What an evaluation adds up, and the metrics made from the pooled sums.

Everything is a sum, so batches, and ranks of a distributed eval, pool by adding:

- token sums (float64, on the model's device): supervised tokens, and over them the
  sums of cross-entropy, correct argmax, entropy, top-1 confidence, label probability;
- a 10-bin calibration table (count, sum of confidence, sum of correct) binned by
  top-1 confidence, as the token probe's `text/calibration`;
- pattern x length cells: examples seen and exactly matched;
- example sums: examples, exact matches, and per-example mean CE and token accuracy
  with their squares (for the standard errors the trend test uses).

Ratios are made once, from the pooled sums: never an average of per-batch ratios.
The per-row statistics come from the fused token-statistics pass, never from a
softmax of our own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

N_BINS = 10  # calibration bins of width 0.1 (kernels.token_sums: the same rule and count)
TOKEN_SUMS = ("tokens", "ce", "correct", "entropy", "conf", "label_prob")
EXAMPLE_SUMS = ("n", "em", "ce_mean", "ce_mean_sq", "acc_mean", "acc_mean_sq")


class TokenSums:
    """Device accumulators of the teacher-forced pass (fixed size, whatever the eval size)."""

    def __init__(self, device: Any) -> None:
        import torch

        self.sums = torch.zeros(len(TOKEN_SUMS), dtype=torch.float64, device=device)
        self.calibration = torch.zeros(N_BINS, 3, dtype=torch.float64, device=device)

    def add(self, stats: Any, labels: Any, batch: int, length: int) -> Any:
        """Add one batch's RowStats (rows = B*T); return per-example (B, 3) float64 sums:
        supervised tokens, correct tokens, summed CE."""
        import torch

        from trainspect.kernels.token_sums import calibration_bin

        f64 = torch.float64
        valid = stats.valid.to(f64)  # (B*T,)
        correct = (stats.argmax == labels.to(torch.int64)).to(f64) * valid
        ce = stats.ce.to(f64) * valid
        conf = stats.conf.to(f64) * valid
        columns = torch.stack([valid, ce, correct, stats.entropy.to(f64) * valid, conf,
                               stats.label_prob.to(f64) * valid], dim=1)  # (B*T, 6)
        self.sums += columns.sum(dim=0)
        bins = calibration_bin(stats.conf)  # the token probe's rule, so a token bins alike
        self.calibration.index_add_(0, bins, torch.stack([valid, conf, correct], dim=1))
        return columns[:, [0, 2, 1]].view(batch, length, 3).sum(dim=1)  # (B, 3)

    def flat(self) -> Any:
        """(len(TOKEN_SUMS) + N_BINS * 3,) float64 on the device: what the ranks sum."""
        import torch

        return torch.cat([self.sums, self.calibration.reshape(-1)])


def example_sums(examples: list[Any], patterns: list[str], n_bins: int) -> np.ndarray:
    """Host sums of one rank's examples: cells (2, P, L) then EXAMPLE_SUMS, flattened."""
    index = {name: i for i, name in enumerate(patterns)}
    cells = np.zeros((2, len(patterns), n_bins))
    sums = np.zeros(len(EXAMPLE_SUMS))
    for ex in examples:
        p, b = index[ex.pattern], ex.length_bin_index
        cells[0, p, b] += 1
        cells[1, p, b] += ex.em
        acc = ex.correct_tokens / ex.tokens if ex.tokens else 0.0
        sums += (1.0, float(ex.em), ex.ce, ex.ce * ex.ce, acc, acc * acc)
    return np.concatenate([cells.reshape(-1), sums])


@dataclass(frozen=True)
class Pooled:
    """Every sum of one evaluation, pooled over batches and ranks."""

    tokens: np.ndarray  # (len(TOKEN_SUMS),)
    calibration: np.ndarray  # (N_BINS, 3): count, sum of conf, sum of correct
    seen: np.ndarray  # (P, L) examples per pattern x length cell
    correct: np.ndarray  # (P, L) exact matches per cell
    examples: np.ndarray  # (len(EXAMPLE_SUMS),)

    @staticmethod
    def unpack(flat: np.ndarray, n_patterns: int, n_bins: int) -> Pooled:
        sizes = [len(TOKEN_SUMS), N_BINS * 3, n_patterns * n_bins, n_patterns * n_bins,
                 len(EXAMPLE_SUMS)]
        parts = np.split(np.asarray(flat, dtype=np.float64), np.cumsum(sizes)[:-1])
        return Pooled(parts[0], parts[1].reshape(N_BINS, 3),
                      parts[2].reshape(n_patterns, n_bins), parts[3].reshape(n_patterns, n_bins),
                      parts[4])

    def metrics(self) -> dict[str, float]:
        """em, ce, acc, entropy, conf, target_conf, ece, n, tokens and standard errors."""
        tok = dict(zip(TOKEN_SUMS, self.tokens.tolist()))
        ex = dict(zip(EXAMPLE_SUMS, self.examples.tolist()))
        n, tokens = ex["n"], tok["tokens"]
        out = {"n": n, "tokens": tokens}
        if n > 0:
            out["em"] = ex["em"] / n
            out["em_se"] = binomial_se(ex["em"], n)
            out["ce_se"] = mean_se(ex["ce_mean"], ex["ce_mean_sq"], n)
            out["acc_se"] = mean_se(ex["acc_mean"], ex["acc_mean_sq"], n)
        if tokens > 0:
            out.update(ce=tok["ce"] / tokens, acc=tok["correct"] / tokens,
                       entropy=tok["entropy"] / tokens, conf=tok["conf"] / tokens,
                       target_conf=tok["label_prob"] / tokens,
                       ece=float(np.abs(self.calibration[:, 2] - self.calibration[:, 1]).sum()
                                 / tokens))
        return out

    def cell_em(self) -> np.ndarray:
        """(P, L) exact-match rate per cell; NaN where no example fell."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.seen > 0, self.correct / np.maximum(self.seen, 1), np.nan)


def binomial_se(successes: float, n: float) -> float:
    """sqrt(p(1-p)/n) with p = (k+1)/(n+2) (Laplace), so 0% and 100% still have noise."""
    p = (successes + 1.0) / (n + 2.0)
    return math.sqrt(p * (1.0 - p) / n)


def mean_se(total: float, total_sq: float, n: float) -> float:
    """Standard error of a mean from the sum and the sum of squares of n values."""
    if n < 2 or not math.isfinite(total_sq):
        return math.nan
    var = max(total_sq - total * total / n, 0.0) / (n - 1.0)
    return math.sqrt(var / n)
