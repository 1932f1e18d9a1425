"""Weights & Biases: scalars against `trainspect/step`, samples and alerts as tables.

Charts use `trainspect/step` as their x-axis (`define_metric`), so batches that reach
the mirror out of step order (an eval emitted after a later flush, a resumed run that
goes back) are plotted where they belong instead of being dropped. The mirror is its
own wandb run (`reinit="create_new"`): a wandb run the script opened itself is left
alone. `notify=True` also sends warning and critical alerts as wandb alerts.
"""

from __future__ import annotations

from typing import Any

from trainspect.integrations.exporters import (
    ALERT_COLUMNS,
    SAMPLE_COLUMNS,
    Columns,
    Exporter,
    alert_rows,
    by_step,
    sample_tables,
)

STEP_KEY = "trainspect/step"


class WandbExporter(Exporter):
    """Mirror into a wandb run; options go to `wandb.init` (project defaults to the run's)."""

    name = "wandb"
    extra = "wandb"

    def __init__(self, notify: bool = False, **init_kwargs: Any) -> None:
        super().__init__()
        self.notify = notify
        self.init_kwargs = init_kwargs
        self.wandb_run: Any = None

    def open(self, run: Any) -> None:
        import wandb

        self._wandb = wandb
        options = {"project": run.project, "name": run.name,
                   "config": {**run.config, "trainspect_run_id": run.id},
                   "reinit": "create_new", **self.init_kwargs}
        self.wandb_run = wandb.init(**options)
        self.wandb_run.define_metric(STEP_KEY)
        self.wandb_run.define_metric("*", step_metric=STEP_KEY)

    def write(self, columns: Columns, records: list[Any]) -> None:
        for step, values in by_step(columns).items():
            self.wandb_run.log({**values, STEP_KEY: step})
        for (stream, step), rows in sample_tables(records).items():
            table = self._wandb.Table(columns=list(SAMPLE_COLUMNS), data=rows)
            self.wandb_run.log({f"samples/{stream}": table, STEP_KEY: step})
        alerts = alert_rows(records)
        if alerts:
            table = self._wandb.Table(columns=list(ALERT_COLUMNS), data=alerts)
            self.wandb_run.log({"alerts": table, STEP_KEY: max(a[0] for a in alerts)})
            if self.notify:
                self._send(alerts)

    def _send(self, alerts: list[list[Any]]) -> None:
        levels = {"warning": self._wandb.AlertLevel.WARN, "critical": self._wandb.AlertLevel.ERROR}
        for step, rule, level, state, message, action in alerts:
            if level in levels and state == "fired":
                self.wandb_run.alert(title=f"{rule} at step {step}",
                                     text=f"{message}\n{action}".strip(), level=levels[level])

    def shutdown(self) -> None:
        self.wandb_run.finish()
