"""`doctor`: each section against hand-computed values, the replay, the run states, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import trainspect as ts
from trainspect import cli
from trainspect.alerts.doctor import diagnose, format_diagnosis
from trainspect.records import Matrix

from .series import CONFIG, FAULTS, healthy


def _trend_reference(steps, values):
    """slope and t of the least-squares line, via numpy's lstsq and its covariance."""
    x = np.column_stack([np.ones(len(steps)), np.asarray(steps, float)])
    y = np.asarray(values, float)
    coef, residual, *_ = np.linalg.lstsq(x, y, rcond=None)
    sigma2 = float(residual[0]) / (len(y) - 2)
    se = math.sqrt(sigma2 * np.linalg.inv(x.T @ x)[1, 1])
    return coef[1], coef[1] / se


@pytest.fixture
def eval_run(runs):
    rng = np.random.default_rng(0)
    with ts.init(project="p", name="evals") as run:
        for step in range(120):
            run.log({"loss": 3.0 - 0.01 * step + 0.05 * rng.standard_normal(),
                     "speed/tokens_per_s": 1000.0 + rng.standard_normal(),
                     "text/ece": 0.02 + 0.001 * step}, step=step)
        for step, em in zip((19, 39, 59, 79, 99, 119), (0.5, 0.6, 0.72, 0.7, 0.71, 0.69)):
            run.log({"eval/em": em}, step=step)
        run.alert("saved checkpoint-60", level="info", step=59)
    return ts.open().run(run.id)


def test_best_checkpoint_and_trends(eval_run):
    d = diagnose(eval_run)
    assert d["best"] == {"checkpoint": "checkpoint-60", "step": 59, "metric": "eval/em",
                         "value": 0.72, "source": "eval/em"}
    trends = {t["key"]: t for t in d["trends"]}
    assert list(trends) == ["loss", "eval/em", "speed/tokens_per_s"]
    steps, values = eval_run.arrays("loss")
    slope, t = _trend_reference(steps[-40:], values[-40:])  # max(5, 120 // 3) points
    assert trends["loss"]["slope"] == pytest.approx(slope, rel=1e-9)
    assert trends["loss"]["t"] == pytest.approx(t, rel=1e-9)
    assert (trends["loss"]["verdict"], trends["loss"]["first_step"]) == ("improving", 80)
    assert trends["speed/tokens_per_s"]["verdict"] == "stuck"
    assert trends["eval/em"]["verdict"] in ("stuck", "improving")  # 5 of 6 evals: noisy
    assert d["run"]["status"] == "finished" and d["run"]["step"] == 119


def test_weakest_patterns_positions_codebooks_and_layers(runs):
    with ts.init(project="p") as run:
        run.log({"eval/reasoning/em": 0.4, "eval/math/em": 0.6, "eval/factual/em": 0.9,
                 "eval/reasoning/long/em": 0.3, "eval/math/short/em": 0.7,
                 "draft/pos0/acc": 0.8, "draft/pos1/acc": 0.6, "draft/pos2/acc": 0.45,
                 "draft/pos3/acc": 0.1, "draft/pos1/cond_acc": 0.75,
                 "draft/pos2/cond_acc": 0.74, "draft/pos3/cond_acc": 0.22,
                 "audio/cb0/acc": 0.7, "audio/cb1/acc": 0.4, "audio/cb2/acc": 0.55,
                 "lora/0/qkv": 0.1, "lora/0/mlp": 0.2, "lora/1/qkv": 0.5, "lora/1/mlp": 0.3,
                 "lora/2/qkv": 0.05, "grad/l0/norm": 2.0, "grad/l1/norm": 0.5}, step=10)
    w = diagnose(ts.open().run(run.id))["weakest"]
    assert [(p["name"], p["em"]) for p in w["patterns"]] == [
        ("reasoning", 0.4), ("math", 0.6), ("factual", 0.9)]
    assert [(c["pattern"], c["bin"]) for c in w["cells"]] == [("reasoning", "long"),
                                                              ("math", "short")]
    assert [p["index"] for p in w["positions"]] == [0, 1, 2, 3]
    assert w["bottleneck"]["index"] == 3 and "0.22" in w["bottleneck"]["why"]
    assert [(c["index"], c["acc"]) for c in w["codebooks"]] == [(1, 0.4), (2, 0.55), (0, 0.7)]
    most = [(x["layer"], round(x["delta"], 9)) for x in w["layers"]["most"]]
    assert most == [("1", 0.8), ("0", 0.3), ("2", 0.05)]  # qkv + mlp per layer
    assert w["layers"]["least"] == []  # three layers: all are in "most"
    assert [x["layer"] for x in w["grad_layers"]["largest"]] == ["l0", "l1"]


def test_weakest_layers_print_no_empty_least_or_smallest_entry(runs):
    with ts.init(project="p") as few:
        few.log({"lora/0/qkv": 0.1, "lora/1/qkv": 0.5, "grad/l0/norm": 2.0,
                 "grad/l1/norm": 0.5}, step=10)
    text = format_diagnosis(diagnose(ts.open().run(few.id)))
    assert "  LoRA       adapting most: 1 (0.5), 0 (0.1)\n" in text + "\n"
    assert "  gradients  largest: l0 (2), l1 (0.5)\n" in text + "\n"
    assert "least:" not in text and "smallest:" not in text
    with ts.init(project="p") as many:
        many.log({f"lora/{i}/qkv": 0.1 * (i + 1) for i in range(7)}, step=10)
    text = format_diagnosis(diagnose(ts.open().run(many.id)))
    assert "adapting most: 6 (0.7), 5 (0.6), 4 (0.5); least: 0 (0.1), 1 (0.2), 2 (0.3)" in text


def test_weakest_from_matrices_when_there_are_no_scalars(runs):
    with ts.init(project="p") as run:
        run.log({"loss": 1.0}, step=5)
        run.emit(Matrix("eval/pattern_length", 5, [[0.9, math.nan], [0.2, 0.4]],
                        row_labels=["factual", "math"], col_labels=["short", "long"]),
                 Matrix("lora/layers", 5, [[0.1, 0.1, 0.0], [0.6, 0.2, 0.1]],
                        row_labels=["L0", "L1"], col_labels=["qkv", "o", "mlp"]))
    w = diagnose(ts.open().run(run.id))["weakest"]
    assert [(p["name"], round(p["em"], 9)) for p in w["patterns"]] == [("math", 0.3),
                                                                       ("factual", 0.9)]
    assert [c["bin"] for c in w["cells"]] == ["short", "long", "short"]  # NaN cell skipped
    assert [(x["layer"], round(x["delta"], 9)) for x in w["layers"]["most"]] == [
        ("L1", 0.9), ("L0", 0.2)]


def _log(run, fault=None):
    for step, metrics in healthy(fault=fault):
        run.log(metrics, step=step)


def test_replay_finds_what_a_live_engine_stored(runs):
    with ts.init(project="p", config=CONFIG) as live:
        _log(live, FAULTS["overfitting"])
    with ts.init(project="p", config=CONFIG, alerts=False) as quiet:  # no rules on
        _log(quiet, FAULTS["overfitting"])
    stored = diagnose(ts.open().run(live.id))
    replayed = diagnose(ts.open().run(quiet.id))
    assert (stored["alerts"]["source"], replayed["alerts"]["source"]) == ("store", "replay")
    fields = ("step", "rule", "level", "message", "action")
    assert [tuple(a[f] for f in fields) for a in replayed["alerts"]["active"]] == \
           [tuple(a[f] for f in fields) for a in stored["alerts"]["active"]]
    assert [a["rule"] for a in stored["alerts"]["active"]] == ["overfitting",
                                                               "regression:eval/ce"]
    assert diagnose(ts.open().run(quiet.id), "never")["alerts"]["active"] == []


def test_nothing_logged_and_little_logged_degrade_to_plain_words(runs):
    with ts.init(project="p") as empty:
        pass
    d = diagnose(ts.open().run(empty.id))
    assert d["verdict"] == "Finished. Nothing logged to judge yet."
    assert d["best"] is None and d["trends"] == [] and d["actions"] == []
    with ts.init(project="p") as short:
        for step in range(3):
            short.log({"loss": 1.0 + step}, step=step)
    d = diagnose(ts.open().run(short.id))
    assert [(t["key"], t["verdict"]) for t in d["trends"]] == [("loss", "too few points")]
    assert not any(d["weakest"].values())
    assert "too few points" in format_diagnosis(d)


def test_cli_prints_the_diagnosis_and_json_for_scripts(runs, capsys):
    main = cli.main
    with ts.init(project="p", config=CONFIG, alerts=False) as run:
        _log(run, FAULTS["zero_weight_leak"])
    assert main(["doctor", run.id[:15]]) == 0
    text = capsys.readouterr().out
    assert "Broken: loss component 'feature' has weight 0" in text
    assert "next actions:\n  1. [critical] Skip adding a component whose weight is 0" in text
    assert "patterns   reasoning" in text and "(rules replayed over the stored run)" in text
    assert main(["doctor", run.id, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["actions"][0]["rule"] == "zero_weight_leak:feature"
    assert set(doc) == {"run", "verdict", "best", "trends", "weakest", "alerts", "actions"}
    assert main(["doctor", "nope"]) == 2
    assert "no run 'nope'" in capsys.readouterr().err


def test_a_crashed_run_is_named_and_resuming_comes_first(runs):
    script = textwrap.dedent(f"""
        import os, sys
        import trainspect as ts
        run = ts.init(project="p", dir={str(runs)!r})
        for step in range(20):
            run.log({{"loss": 2.0 - step / 100}}, step=step)
        run.flush()
        print(run.id)
        os._exit(0)  # dies without finishing, like a killed job
    """)
    run_id = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True).stdout.strip()
    doctor = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom trainspect import cli\n"
         f"cli.main(['doctor', {run_id!r}, '--json'])\n"
         "assert 'torch' not in sys.modules\n"],
        capture_output=True, text=True, timeout=60, check=True)
    d = json.loads(doctor.stdout)
    assert d["run"]["status"] == "crashed" and d["verdict"].startswith("Crashed at step 19")
    assert d["actions"][0]["rule"] == "run_state"
    assert f"resume={run_id!r}" in d["actions"][0]["text"]
