"""Run.log never raises into training, handles every value type, and the lifecycle
(context manager, flush cadence, status) behaves as documented."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest

import trainspect as ts


def test_log_never_raises_and_rejects_non_numbers_once_per_key(runs, caplog):
    run = ts.init(project="p")
    with caplog.at_level(logging.WARNING, logger="trainspect"):
        for step in range(3):
            run.log({"ok": 1.5, "text": "hello", "none": None, "list": [1, 2]}, step=step)
        run.log({"x": 1.0}, step="not a step")
        run.log({"x": 1.0}, step=math.nan)
        run.log("not a dict", step=4)
        run.log({3: 1.0}, step=5)
    run.finish()
    assert run.rejected_values == 3 * 3 + 2 + 1 + 1
    warnings = [r.getMessage() for r in caplog.records]
    assert sum("text=" in w for w in warnings) == 1  # once per key, not once per call
    assert any("step" in w for w in warnings)
    assert any("expected a dict" in w for w in warnings)
    assert run.errors == {}
    view = ts.open(runs).run(run.id)
    assert view.series("ok") == [(0, 1.5), (1, 1.5), (2, 1.5)]


def test_log_accepts_ints_bools_numpy_and_cpu_tensors(runs):
    import torch
    with ts.init(project="p") as run:
        run.log({"i": 3, "b": True, "np": np.float32(0.25), "arr": np.array([2.0]),
                 "t": torch.tensor(1.5, requires_grad=True) * 2, "t16": torch.tensor(0.5).half(),
                 "nan": torch.tensor(float("nan"))}, step=7)
    view = ts.open(runs).run(run.id)
    got = {k: view.series(k) for k in view.keys()}
    assert got == {"i": [(7, 3.0)], "b": [(7, 1.0)], "np": [(7, 0.25)], "arr": [(7, 2.0)],
                   "t": [(7, 3.0)], "t16": [(7, 0.5)], "nan": got["nan"]}
    assert math.isnan(got["nan"][0][1])


def test_step_defaults_count_calls_then_follow_given_steps(runs):
    with ts.init(project="p") as run:
        run.log({"a": 1.0})
        run.log({"a": 2.0})
        run.log({"a": 3.0}, step=10)
        run.log({"b": 4.0})  # no step: the last given one
    view = ts.open(runs).run(run.id)
    assert view.series("a") == [(0, 1.0), (1, 2.0), (10, 3.0)]
    assert view.series("b") == [(10, 4.0)]


def test_context_manager_marks_failed_on_exception(runs):
    with pytest.raises(RuntimeError), ts.init(project="p") as run:
        run.log({"a": 1.0}, step=0)
        raise RuntimeError("boom")
    view = ts.open(runs).run(run.id)
    assert view.status == "failed"
    assert "boom" in view.meta["error"]
    assert view.series("a") == [(0, 1.0)]


def test_metadata_records_config_host_and_versions(runs):
    with ts.init(project="p", name="nice", config={"lr": 3e-4, "layers": [1, 2]}) as run:
        pass
    view = ts.open(runs).run(run.id)
    assert view.name == "nice" and view.config == {"lr": 3e-4, "layers": [1, 2]}
    assert view.status == "finished" and view.ended_at >= view.started_at
    assert view.meta["versions"]["trainspect"] == ts.__version__
    assert view.meta["pid"] > 0 and view.meta["host"]


def test_records_reach_the_store_within_a_second_of_the_window_flush(runs):
    run = ts.init(project="p", log_every=10)
    view = None
    for step in range(1, 12):  # step 11 starts a new window: the first one flushes
        run.log({"a": float(step)}, step=step)
    deadline = time.time() + 1.0
    while time.time() < deadline:
        view = ts.open(runs).run(run.id)
        if len(view.series("a")) >= 10:
            break
        time.sleep(0.05)
    assert len(view.series("a")) >= 10
    run.finish()


def test_bad_arguments_name_themselves(runs):
    with pytest.raises(ts.TrainspectError, match="project"):
        ts.init(project="../escape")
    with pytest.raises(ts.TrainspectError, match="log_every"):
        ts.init(project="p", log_every=0)


def test_alert_goes_to_console_and_store(runs, caplog):
    with caplog.at_level(logging.INFO, logger="trainspect"), ts.init(project="p") as run:
        run.log({"a": 1.0}, step=3)
        run.alert("loss spiked to 9.1", level="critical", action="lower the LR")
        run.alert("bad level", level="loud")
    assert any("loss spiked to 9.1" in r.getMessage() and "lower the LR" in r.getMessage()
               for r in caplog.records)
    alerts = ts.open(runs).run(run.id).alerts()
    assert [(a["step"], a["level"], a["message"], a["action"]) for a in alerts] == [
        (3, "critical", "loss spiked to 9.1", "lower the LR"), (3, "warning", "bad level", "")]


def test_log_after_finish_is_dropped_not_raised(runs):
    run = ts.init(project="p")
    run.finish()
    run.log({"a": 1.0}, step=1)
    assert run.flush() is False
    assert run.rejected_values == 1
