"""Nothing a training loop calls raises, whatever it is given: each call below is wrong
on purpose, and the run still finishes with every good value stored."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import trainspect as ts
from trainspect.records import Alert, Matrix, Scalar

circular: dict = {}
circular["self"] = circular


class Hostile:
    """A value whose every conversion fails."""

    def __float__(self):
        raise RuntimeError("no float for you")

    def __repr__(self):
        raise RuntimeError("no repr either")

    def __index__(self):
        raise RuntimeError("no index")


BAD_CALLS = [
    ("log", lambda r: r.log(None)),
    ("log", lambda r: r.log({"x": Hostile()}, step=1)),
    ("log", lambda r: r.log({"x": torch.ones(3)}, step=1)),
    ("log", lambda r: r.log({"x": 1.0}, step=Hostile())),
    ("log", lambda r: r.log({"x": 1.0}, step=torch.tensor(3))),
    ("log", lambda r: r.log({"x": 1.0}, step=float("inf"))),
    ("log", lambda r: r.log({"x": np.array([1.0, 2.0])}, step=1)),
    ("log", lambda r: r.log({"": 1.0, None: 2.0}, step=1)),
    ("observe", lambda r: r.observe(1, None, None)),
    ("observe", lambda r: r.observe(1, torch.randn(2, 3, 5), torch.zeros(2, 3), mask=Hostile())),
    ("observe", lambda r: r.observe(1, torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long),
                                    stream=Hostile())),
    ("observe", lambda r: r.observe(1, torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long),
                                    group="pos")),
    ("observe", lambda r: r.observe(Hostile(), torch.randn(2, 3, 5),
                                    torch.zeros(2, 3, dtype=torch.long))),
    ("alert", lambda r: r.alert(Hostile(), level=Hostile(), action=Hostile(), step=Hostile())),
    ("emit", lambda r: r.emit(Alert(step=2**70, rule="x", level="warning", message="far"),
                              Scalar("y", 1, Hostile(), 0.0), Matrix("m", 1, [[1, 2], [3]]),
                              "not a record", None)),
    ("set_meta", lambda r: r.set_meta(loop=circular, hostile=Hostile())),
    ("losses", lambda r: r.losses(1, components=None)),
    ("losses", lambda r: r.losses(1, components={"a": Hostile()}, weights={"a": "x"})),
    ("speed", lambda r: r.speed(1, attention_mask="nope", data_s=-1)),
    ("flush", lambda r: r.flush(timeout=Hostile())),
]


@pytest.mark.parametrize("method, call", BAD_CALLS,
                         ids=[f"{m}-{i}" for i, (m, _) in enumerate(BAD_CALLS)])
def test_a_wrong_call_never_raises(runs, method, call):
    run = ts.init(project="p")
    run.log({"good": 1.0}, step=0)
    call(run)  # must not raise
    run.log({"good": 2.0}, step=2)
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("good") == [(0, 1.0), (2, 2.0)], method
    assert view.status == "finished"
    assert math.isfinite(view.ended_at)
