"""Alerts that say what to do: rules over the record stream, the engine, delivery, doctor.

    from trainspect.alerts import AlertEngine, Finding, Rule, default_rules

`AlertEngine` runs on the run's writer thread (`run.add_observer(engine.observe)`);
built-in rules live in `trainspect.alerts.rules`, one module per family; `doctor`
diagnoses a stored run, replaying its series through the rules when needed.
No torch here: the read-only CLI imports this package.
"""

from __future__ import annotations

from trainspect.alerts.delivery import Webhook, alert_line
from trainspect.alerts.engine import AlertEngine, engine_for_run
from trainspect.alerts.rule import HOLD, Context, Finding, Rule
from trainspect.alerts.rules import default_rules

__all__ = ["HOLD", "AlertEngine", "Context", "Finding", "Rule", "Webhook", "alert_line",
           "default_rules", "engine_for_run"]
