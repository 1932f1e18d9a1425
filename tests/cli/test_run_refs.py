"""A run is named the same way everywhere (reader, every CLI command, resume, dashboard
links): its id, a unique prefix or suffix of it, or its name; several matches give one
error listing them."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

import trainspect as ts
from trainspect.cli import main
from trainspect.dashboard.catalog import Catalog


@pytest.fixture
def three_runs(runs):
    made = {}
    for project, name in (("p", "baseline"), ("q", "baseline"), ("p", "lr-sweep-3")):
        with ts.init(project=project, name=name) as run:
            run.log({"loss": 1.0}, step=1)
        made[(project, name)] = run.id
    return made


def test_reader_takes_ids_unique_parts_and_names(runs, three_runs):
    reader = ts.open(runs)
    sweep = three_runs[("p", "lr-sweep-3")]
    for ref in (sweep, f"p/{sweep}", sweep[-6:], sweep[-3:], "lr-sweep-3", "p/lr-sweep-3"):
        assert reader.run(ref).id == sweep, ref
    assert reader.run("p/baseline").id == three_runs[("p", "baseline")]


def test_ambiguous_and_unknown_references_say_what_to_do(runs, three_runs):
    reader = ts.open(runs)
    with pytest.raises(ts.TrainspectError) as ambiguous:
        reader.run("baseline")
    message = str(ambiguous.value)
    for project in ("p", "q"):
        assert f"{project}/{three_runs[(project, 'baseline')]} (baseline)" in message
    assert "matches 2 runs" in message and "project/id" in message
    with pytest.raises(ts.TrainspectError, match="matches 3 runs"):
        reader.run(next(iter(three_runs.values()))[:8])  # the date: every run today
    with pytest.raises(ts.TrainspectError, match="no run 'nothing'.*trainspect ls"):
        reader.run("nothing")


@pytest.mark.parametrize("command", ["show", "doctor", "export", "report"])
def test_every_command_takes_a_suffix_or_a_name(runs, three_runs, command, tmp_path, capsys):
    sweep = three_runs[("p", "lr-sweep-3")]
    extra = {"export": ["--format", "json", "-o", str(tmp_path / "x.json")],
             "report": ["-o", str(tmp_path / "x.html")]}.get(command, [])
    for ref in (sweep[-6:], "lr-sweep-3"):
        assert main([command, ref, *extra]) == 0, capsys.readouterr().err
        out = capsys.readouterr().out
        assert sweep in out or command == "doctor", out
    assert main([command, "baseline", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "matches 2 runs" in err


def test_resume_by_name(runs, three_runs):
    resumed = ts.init(project="p", resume="lr-sweep-3")
    resumed.finish()
    assert resumed.id == three_runs[("p", "lr-sweep-3")]


def test_dashboard_resolves_a_bare_reference(runs, three_runs):
    from trainspect.dashboard.server import start

    sweep = three_runs[("p", "lr-sweep-3")]
    catalog = Catalog(str(runs))
    assert catalog.ref(sweep).id == sweep and catalog.ref(sweep[-6:]).id == sweep
    assert catalog.ref("lr-sweep-3").id == sweep and catalog.ref(f"p/{sweep}").id == sweep
    server = start(runs, port=0)
    try:
        for ref in (sweep, sweep[-6:], "lr-sweep-3"):
            with urllib.request.urlopen(f"{server.url}api/runs/_/{ref}/panels/loss",
                                        timeout=30) as response:
                assert response.status == 200 and json.loads(response.read())
        for ref, status in (("baseline", 404), ("..%2F..%2Fetc%2Fpasswd", 404),
                            ("nothing", 404)):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"{server.url}api/runs/_/{ref}/panels/loss", timeout=30)
            assert refused.value.code == status
        with pytest.raises(urllib.error.HTTPError) as prefix:  # exact in project/run routes
            urllib.request.urlopen(f"{server.url}api/runs/p/{sweep[:-2]}/panels/loss",
                                   timeout=30)
        assert prefix.value.code == 404
    finally:
        server.stop()
