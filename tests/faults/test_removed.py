"""The run's file or its whole folder removed while the run writes: the file is made
again (meta, one critical alert, a count of what went with the old one) and flush()
says False once; nothing logged afterwards is lost and training never sees an error."""

from __future__ import annotations

import logging
import shutil

import pytest

import trainspect as ts


@pytest.mark.parametrize("remove", ["folder", "file"])
def test_a_removed_run_file_is_made_again_and_counted(runs, remove, caplog):
    run = ts.init(project="p", name="keeps-its-name", config={"lr": 0.1})
    for step in range(100):
        run.log({"a": float(step)}, step=step)
    assert run.flush()
    if remove == "folder":
        shutil.rmtree(runs)
    else:
        for path in run.path.parent.glob(run.path.name + "*"):
            path.unlink()
    with caplog.at_level(logging.ERROR, logger="trainspect"):
        for step in range(100, 200):
            run.log({"a": float(step)}, step=step)
        assert run.flush() is False  # the loss is never a silent True
        run.log({"a": 200.0}, step=200)
        assert run.flush() is True
    run.finish()
    errors = [r.getMessage() for r in caplog.records if "removed" in r.getMessage()]
    assert len(errors) == 1 and "100 points" in errors[0]
    view = ts.open(runs).run(run.id)
    assert view.series("a") == [(s, float(s)) for s in range(100, 201)]
    assert view.name == "keeps-its-name" and view.config == {"lr": 0.1}
    assert view.status == "finished"
    assert (view.meta["file_recreated"], view.meta["lost_points"]) == (1, 100)
    alerts = [a for a in view.alerts() if a["rule"] == "store_lost"]
    assert len(alerts) == 1 and alerts[0]["level"] == "critical"


def test_a_folder_that_cannot_come_back_is_reported_and_kept_in_memory(tmp_path, caplog):
    root = tmp_path / "runs"
    run = ts.init(project="p", dir=root)
    run.log({"a": 0.0}, step=0)
    assert run.flush()
    shutil.rmtree(root)
    root.write_text("a file where the runs directory was")
    with caplog.at_level(logging.ERROR, logger="trainspect"):
        run.log({"a": 1.0}, step=1)
        assert run.flush(timeout=5) is False
        assert run.flush(timeout=5) is False
    errors = [r.getMessage() for r in caplog.records if "cannot be made again" in r.getMessage()]
    assert len(errors) == 1
    root.unlink()  # the place is free again: the held point gets written
    run.log({"a": 2.0}, step=2)
    assert run.flush() is False  # this flush made the file again: one False for the loss
    run.finish()
    view = ts.open(root).run(run.id)
    assert view.series("a") == [(1, 1.0), (2, 2.0)] and view.meta["lost_points"] == 1
