"""Exporters mirror what the store holds: TensorBoard read back with its EventAccumulator,
MLflow from a local file store, wandb from its offline run file; a failing exporter is
switched off once and the run goes on."""

from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import trainspect as ts  # noqa: E402
from trainspect.integrations.exporters import Exporter, close_all, export_to  # noqa: E402

V = 9


def play(target) -> tuple:
    """A short run mirrored to `target`; returns the store's view and the exporters."""
    run = ts.init(project="exp", name="mirror", log_every=2, samples_every=2, num_samples=1,
                  config={"lr": 0.1, "model": {"layers": 2, "name": "tiny"}})
    exporters = export_to(run, target)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 5):
        ids = torch.randint(0, V, (2, 6), generator=g)
        logits = torch.randn(2, 6, V, generator=g)
        run.observe(step, logits=logits[:, :-1], labels=ids[:, 1:], input_ids=ids)
        run.log({"loss": 1.0 / step, "lr": 0.1, "nan": math.nan}, step=step)
    run.alert("planted alert", level="warning", action="do something")
    run.finish()
    close_all(exporters)
    return ts.open().run(run.id), exporters


def stored_scalars(view) -> dict[str, list[tuple[int, float]]]:
    return {key: view.series(key) for key in view.keys()}


def stored_positions(view) -> int:
    return sum(len(row["positions"]) for row in view.samples())


def test_tensorboard_event_files_hold_the_same_scalars_samples_and_alerts(runs):
    import tensorboard  # noqa: F401 - the dev extra installs it
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    view, (exporter,) = play("tensorboard")
    events = EventAccumulator(str(exporter.log_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    stored = stored_scalars(view)
    assert set(events.Tags()["scalars"]) == set(stored)
    for key, series in stored.items():
        got = [(e.step, e.value) for e in events.Scalars(key)]
        expected = [(s, float(np.float32(v))) for s, v in series]  # TensorBoard keeps float32
        assert len(got) == len(expected), key
        for (gs, gv), (es, ev) in zip(got, expected):
            assert gs == es and (gv == ev or (math.isnan(gv) and math.isnan(ev))), key
    text = {tag: events.Tensors(tag) for tag in events.Tags()["tensors"]}
    samples = text["samples/text/text_summary"]
    assert [e.step for e in samples] == [1, 2, 4]  # the first observed step, then every 2
    rows = sum(e.tensor_proto.string_val[0].decode().count("\n") - 1 for e in samples)
    assert rows == stored_positions(view)
    alert = text["alerts/text_summary"][0].tensor_proto.string_val[0].decode()
    assert "planted alert" in alert and "do something" in alert


def test_mlflow_sqlite_store_holds_the_same_metrics_params_samples_and_alerts(runs, tmp_path):
    import mlflow  # noqa: F401 - the dev extra installs it
    from mlflow.tracking import MlflowClient

    from trainspect.integrations.exporters.mlflow import MLflowExporter

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.create_experiment("exp", artifact_location=(tmp_path / "artifacts").as_uri())
    view, (exporter,) = play(MLflowExporter(tracking_uri=uri))
    mirrored = client.get_run(exporter.run_id)
    assert mirrored.info.status == "FINISHED"
    assert mirrored.data.tags["trainspect.run_id"] == view.id
    assert mirrored.data.params["lr"] == "0.1" and mirrored.data.params["model.layers"] == "2"
    for key, series in stored_scalars(view).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(exporter.run_id, key))
        assert len(history) == len(series), key
        for (gs, gv), (es, ev) in zip(history, series):
            assert gs == es and (gv == ev or (math.isnan(gv) and math.isnan(ev))), key
    files = {f.path for f in client.list_artifacts(exporter.run_id, "trainspect/samples/text")}
    assert files == {f"trainspect/samples/text/step-{s}.json" for s in (1, 2, 4)}
    def artifact(path: str):
        return json.loads(Path(client.download_artifacts(exporter.run_id, path,
                                                         str(tmp_path))).read_text())

    tables = [artifact(f) for f in sorted(files)]
    assert sum(len(t["data"]) for t in tables) == stored_positions(view)
    alerts = artifact("trainspect/alerts.json")
    assert [a["message"] for a in alerts] == ["planted alert"]


def leveldb_log(data: bytes, header: int = 7, block: int = 32768) -> list[bytes]:
    """The records of a LevelDB-format log (what a .wandb file is, after its 7-byte header):
    32 KiB blocks of chunks, each with a 7-byte header (crc32, length, kind)."""
    records, pending, pos = [], b"", header
    while pos + 7 <= len(data):
        left = block - pos % block
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if left < 7 or (length == 0 and kind == 0):  # block trailer or zero padding
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # FULL
            records.append(chunk)
        elif kind in (2, 3):  # FIRST, MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            records.append(pending + chunk)
            pending = b""
    return records


def wandb_records(run_dir, timeout_s: float = 30.0) -> list:
    """The records of an offline wandb run's .wandb file, once its exit record is in
    (wandb's service process writes the file after `finish()` returns)."""
    import time

    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout_s
    while True:
        (path,) = run_dir.glob("*.wandb")
        data = path.read_bytes()
        assert data[:4] == b":W&B"
        records = []
        for chunk in leveldb_log(data):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, "the offline run file was never completed"
        time.sleep(0.1)


def wandb_history(run_dir) -> list[dict]:
    """The history rows of an offline wandb run, read from its .wandb file."""
    rows = []
    for record in wandb_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            row: dict = {}
            for item in record.history.item:  # a table's fields are nested under its key
                path = [item.key] if item.key else list(item.nested_key)
                value = json.loads(item.value_json)
                if len(path) == 1:
                    row[path[0]] = value
                else:
                    row.setdefault(path[0], {})["/".join(path[1:])] = value
            rows.append(row)
    return rows


def test_wandb_offline_run_holds_the_same_scalars_samples_and_alerts(runs, tmp_path,
                                                                      monkeypatch):
    import wandb  # noqa: F401 - the dev extra installs it
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    view, (exporter,) = play("wandb")
    rows = wandb_history(Path(exporter.wandb_run.dir).parent)
    got: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if not isinstance(value, dict) and not key.startswith("_") and key != "trainspect/step":
                got.setdefault(key, []).append((row["trainspect/step"], value))
    stored = stored_scalars(view)
    assert set(got) == set(stored)
    for key, series in stored.items():
        assert len(got[key]) == len(series), key
        for (gs, gv), (es, ev) in zip(sorted(got[key]), series):
            assert gs == es, key
            assert gv == ev or (math.isnan(ev) and (gv is None or gv != gv)), key
    tables = [(row["trainspect/step"], row["samples/text"]) for row in rows
              if "samples/text" in row]
    assert [s for s, _ in tables] == [1, 2, 4]
    assert sum(t["nrows"] for _, t in tables) == stored_positions(view)
    assert any("alerts" in row for row in rows)


class Broken(Exporter):
    name = "broken"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def write(self, columns, records) -> None:
        self.calls += 1
        raise ConnectionError("server down")


def test_a_failing_exporter_is_switched_off_once_and_the_store_is_complete(runs, caplog):
    broken = Broken()
    with caplog.at_level(logging.WARNING, logger="trainspect"):
        view, exporters = play(broken)
    assert exporters == [broken] and broken.off and broken.calls == 1
    assert sum("broken exporter failed" in r.getMessage() for r in caplog.records) == 1
    assert view.series("loss") == [(s, 1.0 / s) for s in range(1, 5)]


def test_bad_names_and_missing_packages_are_one_clear_error(runs, monkeypatch):
    run = ts.init(project="exp")
    with pytest.raises(ts.TrainspectError, match="exporter name"):
        export_to(run, "neptune")
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ts.TrainspectError, match=r"pip install 'trainspect\[wandb\]'"):
        export_to(run, "wandb")
    run.finish()


def test_init_takes_exporters_and_finish_closes_them(runs):
    class Recording(Exporter):
        name = "recording"

        def __init__(self) -> None:
            super().__init__()
            self.keys: set[str] = set()
            self.closed = False

        def write(self, columns, records) -> None:
            self.keys.update(columns)

        def shutdown(self) -> None:
            self.closed = True

    recording = Recording()
    run = ts.init(project="exp", exporters=[recording])
    run.log({"loss": 1.0}, step=1)
    run.finish()
    assert recording.keys == {"loss"} and recording.closed
