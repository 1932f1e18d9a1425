"""The read-only commands: ls, show, export; errors are one line and exit code 2."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import pytest

import trainspect as ts
from trainspect.cli import main


@pytest.fixture
def finished_run(runs):
    with ts.init(project="proj", name="baseline", config={"lr": 0.1}) as run:
        for step in range(30):
            run.log({"loss": 3.0 - step / 10, "text/acc": step / 30}, step=step)
        run.log({"weird": math.nan}, step=29)
        run.alert("planted alert", level="warning", action="do the thing")
    return run


def test_ls_lists_runs_with_status_and_headline(finished_run, capsys):
    assert main(["ls"]) == 0
    out = capsys.readouterr().out
    assert finished_run.id in out and "finished" in out and "baseline" in out
    assert "loss=0.1" in out and "text/acc=0.9667" in out


def test_show_prints_metrics_config_and_alerts(finished_run, capsys):
    assert main(["show", finished_run.id[:15]]) == 0
    out = capsys.readouterr().out
    assert "lr=0.1" in out and "planted alert" in out and "do the thing" in out
    loss_line = next(line for line in out.splitlines() if line.startswith("loss"))
    assert loss_line.split()[1:] == ["29", "0.1", "0.1", "3", "30"]
    assert "nan" in next(line for line in out.splitlines() if line.startswith("weird"))


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_export_writes_every_point(finished_run, tmp_path, fmt):
    out = tmp_path / f"run.{fmt}"
    assert main(["export", finished_run.id, "--format", fmt, "-o", str(out)]) == 0
    if fmt == "csv":
        with out.open() as f:
            rows = list(csv.DictReader(f))
        loss = [(int(r["step"]), float(r["value"])) for r in rows if r["key"] == "loss"]
    elif fmt == "json":
        doc = json.loads(out.read_text())
        loss = [tuple(p) for p in doc["scalars"]["loss"]]
        assert doc["scalars"]["weird"] == [[29, "nan"]]
        assert doc["alerts"][0]["message"] == "planted alert"
    else:
        import pyarrow.parquet as pq  # in the dev extra: the parquet export must work
        table = pq.read_table(out).to_pylist()
        loss = [(r["step"], r["value"]) for r in table if r["key"] == "loss"]
    assert loss == [(s, 3.0 - s / 10) for s in range(30)]


def test_unknown_run_and_directory_are_one_line_and_exit_2(finished_run, tmp_path):
    for argv, expected in ((["show", "nope"], "no run 'nope'"),
                           (["ls", "--dir", str(tmp_path / "missing")], "no runs directory")):
        proc = subprocess.run([sys.executable, "-m", "trainspect", *argv],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2
        assert proc.stderr.strip().count("\n") == 0 and expected in proc.stderr


def test_parquet_without_pyarrow_says_how_to_get_it(finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now fails
    assert main(["export", finished_run.id, "--format", "parquet", "-o",
                 str(tmp_path / "x.parquet")]) == 2
    assert "pip install pyarrow" in capsys.readouterr().err


def test_read_commands_do_not_import_torch(finished_run, runs):
    code = ("import sys; from trainspect.cli import main; main(['ls']); "
            "main(['show', sys.argv[1]]); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code, finished_run.id], check=True, timeout=60,
                   capture_output=True)
