"""Bad files in a runs directory: each is listed as unreadable on one line while the
rest work (ls, ts.open(dir), the dashboard's run list); naming one in show, doctor,
export or report gives one line on stderr and exit code 2."""

from __future__ import annotations

import json
import urllib.request

import pytest

import trainspect as ts
from tests.faults.files import good_run, make_bad_files
from tests.faults.procs import run
from trainspect.cli import main

KINDS = ("empty", "header", "junk", "truncated", "overwritten")


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    root = tmp_path_factory.mktemp("messy")
    ids = [good_run(root, "one"), good_run(root, "two", steps=400)]
    bad = make_bad_files(root, ts.open(root).run(ids[1]).path)
    return root, ids, bad


def test_reader_lists_good_runs_and_names_the_bad_files(messy):
    root, ids, bad = messy
    reader = ts.open(root)
    assert sorted(v.id for v in reader.runs()) == sorted(ids)
    views, unreadable = reader.scan()
    assert sorted(v.id for v in views) == sorted(ids)
    assert sorted(u.path.name for u in unreadable) == sorted(p.name for p in bad.values())
    for u in unreadable:
        assert u.reason and "\n" not in u.reason
    for kind, path in bad.items():
        with pytest.raises(ts.TrainspectError, match="unreadable|cannot read"):
            view = reader.run(f"p/{path.stem}")
            view.keys(), view.series("loss"), view.alerts()  # noqa: B018 - read everything
        assert kind


def test_ls_lists_the_rest_and_one_line_per_bad_file(messy):
    root, ids, bad = messy
    out = run("from trainspect.cli import main; raise SystemExit(main(['ls', '--dir', "
              f"{str(root)!r}]))")  # a process of its own: nothing cached from other tests
    assert out.returncode == 0, out.stderr
    for run_id in ids:
        assert run_id in out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == len(bad), out.stderr
    for path in bad.values():
        assert sum(path.name in line and "unreadable" in line for line in lines) == 1


@pytest.mark.parametrize("command", ["show", "doctor", "export", "report"])
def test_naming_a_bad_file_is_one_line_and_exit_2(messy, tmp_path, command, capsys):
    root, _, bad = messy
    for kind in KINDS:
        argv = [command, f"p/{bad[kind].stem}", "--dir", str(root)]
        if command == "export":
            argv += ["--format", "json", "-o", str(tmp_path / "out.json")]
        if command == "report":
            argv += ["-o", str(tmp_path / "out.html")]
        code = main(argv)
        out = capsys.readouterr()
        assert code == 2, (kind, out.out, out.err)
        assert out.err.count("\n") == 1 and bad[kind].name in out.err, (kind, out.err)
        assert not (tmp_path / "out.json").exists() and not (tmp_path / "out.html").exists()


def test_dashboard_run_list_serves_the_good_runs(messy):
    from trainspect.dashboard.server import start

    root, ids, _ = messy
    server = start(root, port=0)
    try:
        with urllib.request.urlopen(server.url + "api/runs", timeout=30) as response:
            assert response.status == 200
            listing = json.loads(response.read())
    finally:
        server.stop()
    assert sorted(r["id"] for r in listing["runs"]) == sorted(ids)
