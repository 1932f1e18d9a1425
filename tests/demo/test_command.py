"""`trainspect demo` end to end: a few steps into a real run, read back from the store."""

from __future__ import annotations

import pytest

import trainspect as ts
from trainspect.demo.command import run_demo
from trainspect.demo.progress import ProgressLine
from trainspect.demo.train import ProgressEvent
from trainspect.errors import TrainspectError


def test_demo_stores_a_finished_run_and_says_how_to_look(tmp_path, capsys):
    assert run_demo(steps=5, dir=str(tmp_path)) == 0
    out = capsys.readouterr().out
    (view,) = ts.open(tmp_path).runs(project="demo")
    assert view.status == "finished"
    assert [step for step, _ in view.series("loss")] == [0, 1, 2, 3, 4]
    assert {"loss", "lr", "token_acc", "grad_norm", "tokens_per_s"} <= set(view.keys())
    assert view.config["steps"] == 5 and view.config["model"]["lora_r"] == 8
    assert f"trainspect show {view.id} --dir {tmp_path}" in out
    assert str(view.path) in out
    assert "step     5/5" in out


def test_steps_must_be_positive(tmp_path):
    with pytest.raises(TrainspectError, match="expected `--steps` to be a positive int, got -1"):
        run_demo(steps=-1, dir=str(tmp_path))


def test_progress_line_without_a_terminal(capsys):
    import sys

    ProgressLine(sys.stdout)(ProgressEvent(step=49, steps=100, loss=1.5, acc=0.5, lr=3e-3,
                                           elapsed_s=7.25, tokens_per_s=6000.0))
    line = capsys.readouterr().out
    assert line.startswith("step    50/100 [############............] loss  1.500  acc 0.500")
    assert line.endswith("6,000 tok/s\n")


def test_demo_exercises_every_probe_and_planted_faults_show(tmp_path):
    assert run_demo(steps=20, dir=str(tmp_path), plant_faults=True) == 0
    (view,) = ts.open(tmp_path).runs(project="demo")
    keys = set(view.keys())
    for key in ("text/acc", "text/ece", "text/ce_ema", "loss/ce/raw", "loss/z_loss/weight",
                "loss/aux/scaled", "loss/sum_gap", "grad/norm", "eval/em", "eval/ce"):
        assert key in keys, key
    assert any(k.startswith("lora/") for k in keys) and any(k.startswith("hidden/") for k in keys)
    assert view.samples() and view.matrix("text/calibration") is not None
    weights = [w for _, w in view.series("loss/z_loss/weight")]
    assert weights[0] < weights[-1]  # window means: the curriculum switched it on
    rules = {a["rule"] for a in view.alerts() if a["state"] == "fired"}
    assert "losses.leak" in rules  # the component with weight 0 that reaches the total
    nonfinite = [a for a in view.alerts() if "nonfinite" in a["rule"]]
    assert nonfinite and any("layers.1" in a["message"] for a in nonfinite)
    assert rules & {"grads.frozen_layers", "lora.b_zero", "lora_b_zero"}
