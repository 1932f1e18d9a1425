"""The built-in alert rules, one module per family; `default_rules()` makes a fresh set."""

from __future__ import annotations

from trainspect.alerts.rule import Rule
from trainspect.alerts.rules.calibration import CalibrationDrift, ConfidentlyWrong
from trainspect.alerts.rules.composition import SumGap, ZeroWeightLeak
from trainspect.alerts.rules.divergence import GradExplosion, LossSpike, NonFinite
from trainspect.alerts.rules.draft import DraftCollapse
from trainspect.alerts.rules.evals import EvalPlateau, EvalRegression, Overfitting
from trainspect.alerts.rules.gradients import LoraBZero, NoGradient
from trainspect.alerts.rules.schedule import LrFrozenWarmup, LrZero
from trainspect.alerts.rules.supervision import EmptySupervision
from trainspect.alerts.rules.throughput import ThroughputDrop

# Most fundamental first: doctor ranks actions of equal level in this order.
BUILTIN: tuple[type[Rule], ...] = (
    NonFinite, NoGradient, EmptySupervision, ZeroWeightLeak, LrZero, LrFrozenWarmup,
    LoraBZero, SumGap, GradExplosion, LossSpike, ConfidentlyWrong, CalibrationDrift,
    Overfitting, EvalRegression, DraftCollapse, ThroughputDrop, EvalPlateau,
)


def default_rules() -> list[Rule]:
    """A fresh instance of every built-in rule (rules keep state: one set per run)."""
    return [cls() for cls in BUILTIN]


__all__ = [
    "BUILTIN", "CalibrationDrift", "ConfidentlyWrong", "DraftCollapse", "EmptySupervision",
    "EvalPlateau", "EvalRegression", "GradExplosion", "LoraBZero", "LossSpike", "LrFrozenWarmup",
    "LrZero", "NoGradient", "NonFinite", "Overfitting", "SumGap", "ThroughputDrop",
    "ZeroWeightLeak", "default_rules",
]
