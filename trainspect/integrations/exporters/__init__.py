"""Mirrors of a run in the tools teams already use: Weights & Biases, TensorBoard, MLflow.

    run = ts.init(project="qwen-lora")
    export_to(run, "wandb", "tensorboard")          # or exporter objects with options:
    export_to(run, WandbExporter(entity="team"), MLflowExporter(tracking_uri="sqlite:///m.db"))

An exporter is a writer-thread observer (`run.add_observer`): it sees every batch the
store commits, as `(columns, records)` (columns: {key: [(steps, values, wall_times),
...]}, records: the batch's Matrix, SampleRow and Alert objects), and never touches
the training thread. It mirrors scalars, prediction samples (as tables) and alerts.
One that fails (the tool is not installed, the server is down) logs once and is
switched off; the run's own store is never affected. Only the writing rank (rank 0)
exports. `close_all` ends the mirrors (their runs are marked finished) after the
run's last batch.
"""

from __future__ import annotations

import importlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.records import Alert, SampleRow

log = logging.getLogger("trainspect.exporters")

# name -> (module, class, the pip extra that installs the tool)
KNOWN = {
    "wandb": ("trainspect.integrations.exporters.wandb", "WandbExporter", "wandb"),
    "tensorboard": ("trainspect.integrations.exporters.tensorboard", "TensorBoardExporter",
                    "tensorboard"),
    "mlflow": ("trainspect.integrations.exporters.mlflow", "MLflowExporter", "mlflow"),
}

Columns = dict[str, list[tuple[Any, Any, Any]]]


class Exporter:
    """Base class: subclasses implement `open(run)`, `write(...)` and `shutdown()`."""

    name = "exporter"
    extra = ""  # the pip extra that installs the tool

    def __init__(self) -> None:
        self.off = False

    # ---- what subclasses implement --------------------------------------------------

    def open(self, run: Any) -> None:
        """Start the mirror of `run` (training thread, once)."""

    def write(self, columns: Columns, records: list[Any]) -> None:
        """Mirror one committed batch (writer thread)."""

    def shutdown(self) -> None:
        """End the mirror (after the run's last batch)."""

    # ---- the observer protocol ------------------------------------------------------

    def __call__(self, columns: Columns, records: list[Any]) -> list[Any]:
        if not self.off:
            try:
                self.write(columns, records)
            except Exception as err:
                self.fail("write", err)
        return []  # exporters add nothing to the store

    def close(self) -> None:
        if self.off:
            return
        try:
            self.shutdown()
        except Exception as err:
            self.fail("close", err)
        self.off = True

    def fail(self, where: str, err: BaseException) -> None:
        """Log once and switch off; the run and its store carry on."""
        self.off = True
        log.warning("trainspect: the %s exporter failed in %s (%s: %s) and was switched off; "
                    "the run's own store is not affected", self.name, where,
                    type(err).__name__, err, exc_info=log.isEnabledFor(logging.DEBUG))


def make(target: Any) -> Exporter:
    """An exporter from a name ("wandb", "tensorboard", "mlflow") or an Exporter."""
    if isinstance(target, Exporter):
        return target
    if not isinstance(target, str) or target not in KNOWN:
        raise TrainspectError(f"expected an exporter name ({', '.join(KNOWN)}) or an Exporter, "
                              f"got {target!r}")
    module, cls, _ = KNOWN[target]
    return getattr(importlib.import_module(module), cls)()


def export_to(run: Any, *targets: Any) -> list[Exporter]:
    """Mirror `run` to each target from now on; returns the exporters (rank 0 only).

    A tool that is not installed raises TrainspectError naming the pip extra; one that
    fails to start (no server, no login) is logged and left out.
    """
    from trainspect.distributed import is_writer

    exporters = [make(t) for t in targets]
    if not is_writer():
        return []
    opened = []
    for exporter in exporters:
        try:
            exporter.open(run)
        except ImportError as err:
            raise TrainspectError(f"the {exporter.name} exporter needs its package: "
                                  f"pip install 'trainspect[{exporter.extra}]' ({err})") from err
        except Exception as err:
            exporter.fail("open", err)
            continue
        run.add_observer(exporter)
        opened.append(exporter)
    return opened


def close_all(exporters: Iterable[Exporter]) -> None:
    """End every mirror; call after `run.finish()` so the last batch is in."""
    for exporter in exporters:
        exporter.close()


# ---- payloads shared by the exporters (pure) --------------------------------------------


def by_step(columns: Columns) -> dict[int, dict[str, float]]:
    """{step: {key: value}} from the committed columns, the last value winning."""
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for key, segments in columns.items():
        for steps, values, _ in segments:
            for step, value in zip(steps.tolist(), values.tolist()):
                out[int(step)][key] = float(value)
    return dict(sorted(out.items()))


def points(columns: Columns) -> Iterable[tuple[str, int, float, float]]:
    """(key, step, value, wall_time) of every committed point."""
    for key, segments in columns.items():
        for steps, values, times in segments:
            for step, value, wall in zip(steps.tolist(), values.tolist(), times.tolist()):
                yield key, int(step), float(value), float(wall)


SAMPLE_COLUMNS = ("step", "stream", "group", "sample_id", "context", "t", "predicted", "target",
                  "match", "pred_prob", "label_prob", "confident_wrong")


def sample_tables(records: Sequence[Any]) -> dict[tuple[str, int], list[list[Any]]]:
    """{(stream, step): rows of SAMPLE_COLUMNS}, one row per sampled position."""
    tables: dict[tuple[str, int], list[list[Any]]] = defaultdict(list)
    for row in records:
        if not isinstance(row, SampleRow):
            continue
        for p in row.positions:
            tables[(row.stream, row.step)].append([
                row.step, row.stream, row.group, row.sample_id, row.context, p.get("t"),
                p.get("pred"), p.get("label"), bool(p.get("match")), p.get("pred_prob"),
                p.get("label_prob"), bool(p.get("confident_wrong"))])
    return dict(tables)


ALERT_COLUMNS = ("step", "rule", "level", "state", "message", "action")


def alert_rows(records: Sequence[Any]) -> list[list[Any]]:
    return [[a.step, a.rule, a.level, a.state, a.message, a.action]
            for a in records if isinstance(a, Alert)]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (TensorBoard's text plugin renders it)."""
    def cell(value: Any) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
