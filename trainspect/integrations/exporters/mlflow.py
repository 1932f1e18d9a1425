"""MLflow: scalars as metrics, samples as tables, alerts as a JSON artifact, config as params.

The mirror is an MLflow run of its own in the experiment named after the project (or
`experiment=`), made through `MlflowClient`, so a run the script started with the
fluent API is left alone. Metric names keep trainspect's; characters MLflow refuses are
replaced by `_`. Samples land as `trainspect/samples/<stream>/step-<step>.json` tables,
alerts in `trainspect/alerts.json` (the latest 1000, rewritten when new ones come).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from trainspect.integrations.exporters import (
    ALERT_COLUMNS,
    SAMPLE_COLUMNS,
    Columns,
    Exporter,
    alert_rows,
    points,
    sample_tables,
)

BATCH = 1000  # metrics per log_batch call (MLflow's limit)
PARAM_CHARS = 6000  # MLflow's limit on a parameter value
MAX_ALERTS = 1000
_REFUSED = re.compile(r"[^\w\-. /:]")


def metric_name(key: str) -> str:
    return _REFUSED.sub("_", key)


def flat_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config as MLflow params: dotted keys, JSON values, cut to PARAM_CHARS."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = metric_name(f"{prefix}{key}")
        if isinstance(value, dict) and value:
            out.update(flat_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=repr)
            out[name] = text[:PARAM_CHARS]
    return out


class MLflowExporter(Exporter):
    """Mirror into an MLflow tracking store (`tracking_uri`, default MLflow's own)."""

    name = "mlflow"
    extra = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None,
                 run_name: str | None = None) -> None:
        super().__init__()
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.run_id: str | None = None
        self._alerts: list[list[Any]] = []

    def open(self, run: Any) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        name = self.experiment or run.project
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        created = self.client.create_run(
            experiment_id, run_name=self.run_name or run.name,
            tags={"trainspect.run_id": run.id, "trainspect.project": run.project})
        self.run_id = created.info.run_id
        params = [Param(k, v) for k, v in flat_params(run.config).items()]
        for i in range(0, len(params), 100):  # MLflow takes 100 params per call
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def write(self, columns: Columns, records: list[Any]) -> None:
        from mlflow.entities import Metric

        metrics = [Metric(metric_name(key), value, int(wall * 1000), step)
                   for key, step, value, wall in points(columns)]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])
        for (stream, step), rows in sample_tables(records).items():
            table = {column: [row[i] for row in rows] for i, column in enumerate(SAMPLE_COLUMNS)}
            self.client.log_table(self.run_id, data=table,
                                  artifact_file=f"trainspect/samples/{stream}/step-{step}.json")
        alerts = alert_rows(records)
        if alerts:
            self._alerts = (self._alerts + alerts)[-MAX_ALERTS:]
            self.client.log_dict(self.run_id, [dict(zip(ALERT_COLUMNS, a)) for a in self._alerts],
                                 "trainspect/alerts.json")

    def shutdown(self) -> None:
        self.client.set_terminated(self.run_id, status="FINISHED",
                                   end_time=int(time.time() * 1000))
