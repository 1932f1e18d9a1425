"""The evaluations a run has made so far, and the alerts that say when that story changes.

A run's history lives beside the run object (a weak mapping: it goes with the run)
and starts from what the run's store already holds, so a resumed run's trends and
best checkpoint include the attempts before it. Alerts fire when a condition starts
(a plateau of EM, CE and accuracy together, EM regressing, calibration drift beyond
the eval's sampling noise; see trends.py) and clear when it ends, not at every
evaluation.
"""

from __future__ import annotations

import logging
import sqlite3
import weakref
from dataclasses import dataclass, field
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.eval.trends import EvalPoint, eval_points, train_loss
from trainspect.records import Alert

log = logging.getLogger("trainspect.eval")

_HISTORIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class EvalHistory:
    """One named eval's points in one run, by step, and the alerts now fired."""

    points: list[EvalPoint] = field(default_factory=list)
    fired: set[str] = field(default_factory=set)

    def add(self, point: EvalPoint) -> None:
        """Add (or, at a step evaluated before, replace) a point; keep them by step."""
        self.points = [p for p in self.points if p.step != point.step] + [point]
        self.points.sort(key=lambda p: p.step)

    def checkpoints(self) -> dict[str, str]:
        return {str(p.step): p.checkpoint for p in self.points if p.checkpoint}


def history_for(run: Any, name: str) -> EvalHistory:
    per_run = _HISTORIES.get(run)
    if per_run is None:
        per_run = {}
        _HISTORIES[run] = per_run
    if name not in per_run:
        per_run[name] = EvalHistory(points=_stored_points(run, name))
    return per_run[name]


def _open_view(run: Any) -> Any:
    from trainspect.store.reader import RunView

    path = getattr(run, "path", None)
    if path is None or not path.is_file():
        return None
    try:
        return RunView(path)
    except (TrainspectError, sqlite3.Error) as err:
        log.debug("trainspect: cannot read %s for the eval history: %s", path, err)
        return None


def _stored_points(run: Any, name: str) -> list[EvalPoint]:
    view = _open_view(run)
    if view is None:
        return []
    try:
        return eval_points(view, name)
    except (TrainspectError, sqlite3.Error) as err:
        log.debug("trainspect: cannot read the eval history of %s: %s", run, err)
        return []
    finally:
        view.close()


def latest_train_loss(run: Any, step: int) -> tuple[str, float] | None:
    """The training CE committed to the run's store at or before `step` (lags a flush)."""
    view = _open_view(run)
    if view is None:
        return None
    try:
        return train_loss(view, step)
    except (TrainspectError, sqlite3.Error) as err:
        log.debug("trainspect: cannot read the training loss of %s: %s", run, err)
        return None
    finally:
        view.close()


def transition_alerts(history: EvalHistory, summary: dict[str, Any], name: str, step: int,
                      weakest: tuple[str, float] | None, wall_time: float) -> list[Alert]:
    """Alerts for conditions that started (fired) or ended (cleared) at this evaluation."""
    best = summary["best"]
    em, trend_em = summary.get("em"), summary["trend"]["em"]
    add_data = (f"; add training data like the '{weakest[0]}' prompts ({weakest[1]:.0%} EM)"
                if weakest else "")
    ce = summary.get("ce")
    ce_text = f", CE {ce:.3f}" if ce is not None else ""
    conditions = {
        # a plateau is a decision point, not a fault: info, like the engine's own rule
        f"{name}_plateau": (
            bool(summary.get("plateau")) and em is not None, "info",
            lambda: (f"fixed eval '{name}': EM {em:.1%}{ce_text} and token accuracy have "
                     f"stopped improving over the last evals (best EM {best['em']:.1%} at "
                     f"{best['checkpoint']}, {summary['evals_since_best']} evals ago)"),
            f"Diminishing returns: consider stopping and using {best['checkpoint']}{add_data}.",
        ),
        f"{name}_regressing": (
            trend_em == "regressing" and em is not None, "warning",
            lambda: (f"fixed eval '{name}': EM is falling, {em:.1%} now against "
                     f"{best['em']:.1%} at {best['checkpoint']}"),
            f"Stop or lower the learning rate, and use {best['checkpoint']}; a growing "
            "eval-train CE gap means overfitting.",
        ),
        f"{name}_calibration_drift": (
            bool(summary.get("calibration_drift")), "warning",
            lambda: (f"fixed eval '{name}': ECE {summary['ece']:.3f} is "
                     f"{summary['ece'] - summary['ece_best']:.3f} ({summary['ece_drift']:.0%}) "
                     f"above its best {summary['ece_best']:.3f}, more than the eval's "
                     "sampling noise: the model is growing over-confident"),
            "Run a finishing pass at a lower learning rate (0.5x) or use EMA weights.",
        ),
    }
    alerts = []
    for rule, (active, level, message, action) in conditions.items():
        if active and rule not in history.fired:
            history.fired.add(rule)
            alerts.append(Alert(step=step, rule=rule, level=level, message=message(),
                                action=action, wall_time=wall_time))
        elif not active and rule in history.fired:
            history.fired.discard(rule)
            alerts.append(Alert(step=step, rule=rule, level="info", state="cleared",
                                message=f"fixed eval '{name}': {rule} no longer holds",
                                wall_time=wall_time))
    return alerts
