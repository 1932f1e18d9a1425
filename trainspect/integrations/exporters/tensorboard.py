"""TensorBoard: scalars as scalar summaries, samples and alerts as Markdown text.

Event files go to `log_dir`, by default `<runs dir>/<project>/tensorboard/<run id>`, so
`tensorboard --logdir <runs dir>/<project>/tensorboard` shows a project's runs side by
side. Written with torch's SummaryWriter (the `tensorboard` package must be installed);
flushed after every batch so TensorBoard follows the run live.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainspect.integrations.exporters import (
    ALERT_COLUMNS,
    SAMPLE_COLUMNS,
    Columns,
    Exporter,
    alert_rows,
    markdown_table,
    points,
    sample_tables,
)


class TensorBoardExporter(Exporter):
    """Mirror into TensorBoard event files under `log_dir`."""

    name = "tensorboard"
    extra = "tensorboard"

    def __init__(self, log_dir: str | Path | None = None) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.writer: Any = None

    def open(self, run: Any) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self.log_dir is None:
            self.log_dir = Path(run.root) / run.project / "tensorboard" / run.id
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def write(self, columns: Columns, records: list[Any]) -> None:
        for key, step, value, wall in points(columns):
            self.writer.add_scalar(key, value, global_step=step, walltime=wall)
        for (stream, step), rows in sample_tables(records).items():
            self.writer.add_text(f"samples/{stream}", markdown_table(SAMPLE_COLUMNS, rows),
                                 global_step=step)
        alerts = alert_rows(records)
        if alerts:
            self.writer.add_text("alerts", markdown_table(ALERT_COLUMNS, alerts),
                                 global_step=max(a[0] for a in alerts))
        self.writer.flush()

    def shutdown(self) -> None:
        self.writer.close()
