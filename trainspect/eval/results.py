"""The results of one evaluation: per example, and in total (what `evaluate` returns)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ExampleResult:
    """How the model did on one example."""

    index: int
    """Position in the FixedEval's rows."""
    id: str
    """The row's stable id."""
    pattern: str
    length_bin_index: int
    length_bin: str
    ref_tokens: int
    """Reference response tokens, without the end token."""
    tokens: int
    """Supervised tokens (the target, end token included)."""
    correct_tokens: int
    """Target tokens whose teacher-forced argmax was right."""
    ce: float
    """Mean cross-entropy over its target tokens, nats."""
    em: bool
    """Exact match, by greedy decoding or teacher-forced argmax (`EvalResult.em_mode`)."""
    output: str
    """What the model produced: the greedy continuation, or the teacher-forced argmax."""


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: headline metrics, pattern x length cells, calibration, examples."""

    step: int
    checkpoint: str | None
    em_mode: str
    """"greedy" or "teacher_forced"."""
    metrics: dict[str, float]
    """em, ce, acc, entropy, conf, target_conf, ece, n, tokens, em_se, ce_se, acc_se."""
    patterns: list[str]
    """Row labels of the pattern x length matrices."""
    length_bins: list[str]
    """Column labels of the pattern x length matrices."""
    seen: list[list[float]]
    correct: list[list[float]]
    cell_em: list[list[float]]
    """EM per cell; NaN where no example fell."""
    calibration: list[list[float]]
    """10 bins of (count, sum of confidence, sum of correct), by top-1 confidence."""
    examples: list[ExampleResult]
    summary: dict[str, Any] = field(default_factory=dict)
    """Best checkpoint, trends, drift and train gap over the run's evals (trends.summarize)."""

    @property
    def em(self) -> float:
        return self.metrics.get("em", float("nan"))

    @property
    def ce(self) -> float:
        return self.metrics.get("ce", float("nan"))

    @property
    def ece(self) -> float:
        return self.metrics.get("ece", float("nan"))

    def pattern_em(self) -> dict[str, float | None]:
        """EM per pattern (None where the pattern has no example)."""
        out: dict[str, float | None] = {}
        for name, seen_row, correct_row in zip(self.patterns, self.seen, self.correct):
            n = sum(seen_row)
            out[name] = sum(correct_row) / n if n else None
        return out
