"""The built-in alert rules, one module per family; `default_rules()` makes a fresh set."""

from __future__ import annotations

from trainspect.alerts.rule import Rule
from trainspect.alerts.rules.calibration import CalibrationDrift, ConfidentlyWrong
from trainspect.alerts.rules.composition import (
    ComponentConstant,
    SumGap,
    TotalScaled,
    ZeroWeightLeak,
)
from trainspect.alerts.rules.data import (
    AnswerEnd,
    LabelAlignment,
    PaddingSupervised,
    PromptSupervised,
    RepeatedBatches,
    VocabMismatch,
)
from trainspect.alerts.rules.divergence import (
    ActivationGrowth,
    GradExplosion,
    LossDivergence,
    LossSpike,
    NonFinite,
)
from trainspect.alerts.rules.draft import DraftCollapse
from trainspect.alerts.rules.evals import EvalPlateau, EvalRegression, Overfitting
from trainspect.alerts.rules.gradients import NoGradient
from trainspect.alerts.rules.schedule import (
    LossScaleCollapse,
    LrFrozenWarmup,
    LrZero,
    WeightDecayTooStrong,
)
from trainspect.alerts.rules.supervision import EmptySupervision
from trainspect.alerts.rules.throughput import Straggler, ThroughputDrop
from trainspect.alerts.rules.updates import WeightsFrozen

# Most fundamental first: doctor ranks actions of equal level in this order. Data that
# cannot train the model right comes before what it does to the numbers, a cause before
# its symptoms (an overflowing loss scale before the non-finite gradients it skips).
BUILTIN: tuple[type[Rule], ...] = (
    VocabMismatch, LabelAlignment, EmptySupervision, LossScaleCollapse, NonFinite, NoGradient,
    WeightsFrozen, LrZero, LrFrozenWarmup, WeightDecayTooStrong, TotalScaled, ZeroWeightLeak,
    PromptSupervised, PaddingSupervised, AnswerEnd, RepeatedBatches, ComponentConstant,
    SumGap, ActivationGrowth, LossDivergence, GradExplosion, LossSpike, ConfidentlyWrong,
    CalibrationDrift, Overfitting, EvalRegression, DraftCollapse, Straggler, ThroughputDrop,
    EvalPlateau,
)


def default_rules() -> list[Rule]:
    """A fresh instance of every built-in rule (rules keep state: one set per run)."""
    return [cls() for cls in BUILTIN]


__all__ = [
    "BUILTIN", "ActivationGrowth", "AnswerEnd", "CalibrationDrift", "ComponentConstant",
    "ConfidentlyWrong", "DraftCollapse", "EmptySupervision", "EvalPlateau", "EvalRegression",
    "GradExplosion", "LabelAlignment", "LossDivergence", "LossScaleCollapse", "LossSpike",
    "LrFrozenWarmup", "LrZero", "NoGradient", "NonFinite", "Overfitting", "PaddingSupervised",
    "PromptSupervised", "RepeatedBatches", "Straggler", "SumGap", "ThroughputDrop",
    "TotalScaled", "VocabMismatch", "WeightDecayTooStrong", "WeightsFrozen", "ZeroWeightLeak",
    "default_rules",
]
