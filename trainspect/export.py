"""Writing a run's data out as CSV, JSON or Parquet (long format: key, step, value)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from trainspect.errors import TrainspectError
from trainspect.store.reader import RunView

FORMATS = ("csv", "json", "parquet")


def export_run(view: RunView, format: str, output: str | Path) -> int:
    """Write every scalar of `view` to `output`; returns the number of points written."""
    if format not in FORMATS:
        raise TrainspectError(f"expected `format` to be one of {FORMATS}, got {format!r}")
    output = Path(output)
    series = {key: view.arrays(key) for key in view.keys()}
    points = sum(int(steps.size) for steps, _ in series.values())
    try:
        if format == "csv":
            _csv(series, output)
        elif format == "json":
            _json(view, series, output)
        else:
            _parquet(series, output)
    except OSError as err:
        raise TrainspectError(f"cannot write {output}: {err.strerror or err}") from err
    return points


def _csv(series: dict, output: Path) -> None:
    with output.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "step", "value"])
        for key, (steps, vals) in series.items():
            writer.writerows((key, s, repr(v)) for s, v in zip(steps.tolist(), vals.tolist()))


def _json_value(value: float) -> float | str:
    return value if math.isfinite(value) else repr(value)  # JSON has no NaN or inf


def _json(view: RunView, series: dict, output: Path) -> None:
    document = {
        "run": {"id": view.id, "project": view.project, "name": view.name,
                "status": view.status, "meta": view.meta},
        "scalars": {key: [[s, _json_value(v)] for s, v in zip(steps.tolist(), vals.tolist())]
                    for key, (steps, vals) in series.items()},
        "alerts": view.alerts(),
        "samples": view.samples(),
    }
    with output.open("w") as f:
        json.dump(document, f, default=repr)


def _parquet(series: dict, output: Path) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as err:
        raise TrainspectError(
            "parquet export needs pyarrow, which is not installed: pip install pyarrow "
            "(or use --format csv / json)"
        ) from err
    import numpy as np

    keys = [np.full(steps.size, key, dtype=object) for key, (steps, _) in series.items()]
    table = pa.table({
        "key": pa.array(np.concatenate(keys) if keys else [], pa.string()),
        "step": pa.array(np.concatenate([s for s, _ in series.values()]) if keys else [],
                         pa.int64()),
        "value": pa.array(np.concatenate([v for _, v in series.values()]) if keys else [],
                          pa.float64()),
    })
    pq.write_table(table, output)
