"""The plain values that flow from probes and the run to the store and alert rules.

Records are host-side Python values, created at the flush (or by `Run.log` /
`Run.alert`), never device tensors. The store writes them; alert rules read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

AlertLevel = Literal["info", "warning", "critical"]
ALERT_LEVELS: tuple[str, ...] = ("info", "warning", "critical")


@dataclass(frozen=True)
class Scalar:
    """One metric value at one step."""

    key: str
    step: int
    value: float
    wall_time: float


@dataclass(frozen=True)
class Matrix:
    """A small 2-D table (calibration bins, LoRA layers x blocks, pattern x length)."""

    key: str
    step: int
    values: list[list[float]]
    row_labels: list[str] = field(default_factory=list)
    col_labels: list[str] = field(default_factory=list)
    wall_time: float = 0.0


@dataclass(frozen=True)
class SampleRow:
    """One sampled example: its context and, per supervised position, what was predicted."""

    step: int
    stream: str
    group: int
    sample_id: str
    context: str
    positions: list[dict[str, Any]]
    wall_time: float = 0.0


@dataclass(frozen=True)
class Alert:
    """Something the user should act on: what happened (with numbers) and what to do."""

    step: int
    rule: str
    level: str
    message: str
    action: str = ""
    state: Literal["fired", "cleared"] = "fired"
    wall_time: float = 0.0


@dataclass(frozen=True)
class EvalExample:
    """One fixed-eval example's result at one evaluation (the `eval_examples` table)."""

    step: int
    eval_name: str
    example_id: str
    pattern: str
    length_bin: str
    ref_tokens: int
    tokens: int
    correct_tokens: int
    ce: float
    em: bool
    output: str
    prompt: str
    reference: str
    checkpoint: str | None = None
    wall_time: float = 0.0
