"""Each panel's query (`_impl`) against hand-computed tables, without HTTP."""

from __future__ import annotations

import math

import numpy as np
import pytest

import trainspect as ts
from tests.dashboard.conftest import view_of
from tests.dashboard.synthetic import LAYERS, make_run
from trainspect import Alert, Matrix, SampleRow
from trainspect.dashboard.panels import (
    PANELS,
    base,
    calibration,
    doctor,
    fixed_eval,
    lora,
    losses,
    names,
    patterns,
    predictions,
    scalars,
    tokens,
)
from trainspect.dashboard.panels.base import ClientError


def _run(runs, **kwargs):
    return ts.init(project="p", dir=runs, **kwargs)


def _view(runs, run):
    run.finish()
    return view_of(runs, f"p/{run.id}")


def test_token_key_parses_the_naming_contract():
    assert names.token_key("text/acc") == ("text", "", -1, "acc")
    assert names.token_key("draft/pos3/cond_acc") == ("draft", "pos", 3, "cond_acc")
    assert names.token_key("audio/cb12/ce") == ("audio", "cb", 12, "ce")
    for not_token in ("loss", "eval/ce", "loss/kd/raw", "grad/norm", "text/unknown_metric",
                      "hidden/l0/mean", "lr", "a/b/c/acc"):
        assert names.token_key(not_token) is None, not_token
    assert names.streams(["audio/acc", "text/ce", "draft/pos0/acc"]) == ["text", "audio", "draft"]


def test_reliability_and_ece_match_a_hand_computed_table():
    # bin 0: conf 0.1, acc 0.0 ; bin 1 empty ; bin 2: conf 0.8, acc 0.9
    bins, ece, tokens_seen = calibration.reliability([[10, 1.0, 0], [0, 0, 0], [30, 24, 27]])
    assert [b["conf"] for b in bins] == [pytest.approx(0.1), None, pytest.approx(0.8)]
    assert [b["acc"] for b in bins] == [0.0, None, pytest.approx(0.9)]
    assert ece == pytest.approx((10 * 0.1 + 30 * 0.1) / 40)
    assert tokens_seen == 40
    assert calibration.reliability([[0, 0, 0]])[1] is None


def test_calibration_panel_steps_and_streams(runs):
    run = _run(runs)
    run.emit(Matrix("text/calibration", 10, [[4, 2, 4], [4, 3, 1]]),
             Matrix("text/calibration", 20, [[4, 2, 2], [4, 3, 3]]),
             Matrix("audio/calibration", 20, [[1, 0.5, 1]]))
    run.log({"text/ece": 0.3}, step=10)
    view = _view(runs, run)
    latest = calibration._impl(view)
    assert latest["streams"] == ["text", "audio"] and latest["steps"] == [10, 20]
    assert latest["step"] == 20 and latest["ece"] == pytest.approx(0.0)
    early = calibration._impl(view, step=15)
    # (4|1.0 - 0.5| + 4|0.25 - 0.75|) / 8 = 0.5
    assert early["step"] == 10 and early["ece"] == pytest.approx(0.5)
    assert calibration._impl(view, stream="audio")["bins"][0]["acc"] == 1.0
    assert latest["charts"][0]["series"][0]["key"] == "text/ece"
    with pytest.raises(ClientError):
        calibration._impl(view, stream="nope")


@pytest.mark.parametrize("values, expected", [
    ([0.5, 0.6, 0.7, 0.8], "improving"),
    ([0.8, 0.801, 0.8, 0.802], "plateau"),
    ([0.8, 0.7, 0.7, 0.71], "regressing"),
    ([0.5, 0.6, 0.7], "too few evals"),
    ([0.5, math.nan, 0.6, 0.7, 0.8], "improving"),
])
def test_fixed_eval_trend(values, expected):
    assert fixed_eval.trend(values) == expected


def test_best_checkpoint_from_meta_then_alert_then_series(runs):
    run = _run(runs)
    for step, em in ((100, 0.5), (200, 0.8), (300, 0.8), (400, 0.7)):
        run.log({"eval/em": em, "eval/ce": 1 - em}, step=step)
    view = _view(runs, run)
    data = fixed_eval._impl(view)
    assert data["best"]["step"] == 200 and data["best"]["source"] == "eval/em"  # earliest best
    assert data["latest"] == {"eval/em": 0.7, "eval/ce": pytest.approx(0.3)}
    assert data["evals"] == 4 and data["trend"] == "improving"  # best of last 3 > first

    run = _run(runs)
    run.log({"eval/em": 0.5}, step=1)
    run.emit(Alert(step=1, rule="eval_plateau", level="warning", message="flat",
                   action="use checkpoint-15200 and stop"))
    assert fixed_eval._impl(_view(runs, run))["best"]["checkpoint"] == "checkpoint-15200"

    run = _run(runs)
    run.log({"eval/em": 0.5}, step=1)
    run.finish(best_checkpoint={"checkpoint": "ckpt-7", "step": 7, "em": 0.9})
    best = fixed_eval._impl(view_of(runs, f"p/{run.id}"))["best"]
    assert best == {"checkpoint": "ckpt-7", "step": 7, "em": 0.9, "source": "meta"}


def test_loss_composition_flags_planted_faults():
    assert losses.flags(2.0, 0.5, 1.0) == []
    assert losses.flags(40.0, 0.0, 4.0) == [
        "weight is 0 but it still adds to the total", "scaled 4 is not raw x weight = 0"]
    assert losses.flags(2.0, 0.5, 1.5) == ["scaled 1.5 is not raw x weight = 1"]


def test_loss_composition_table(runs):
    run = _run(runs)
    run.log({"loss/kd/raw": 2.0, "loss/kd/weight": 0.5, "loss/kd/scaled": 1.0,
             "loss/feat/raw": 3.0, "loss/feat/weight": 0.0, "loss/feat/scaled": 3.0,
             "loss/total": 4.0, "loss/sum_gap": 0.25}, step=1)
    data = losses._impl(_view(runs, run))
    rows = {r[0]: r for r in data["table"]["rows"]}
    assert rows["kd"][1:5] == [2.0, 0.5, 1.0, 0.25]
    assert rows["feat"][4] == 0.75 and "weight is 0" in rows["feat"][5]
    assert any("differs from the sum" in p for p in data["problems"])
    assert {c["id"] for c in data["charts"]} == {"scaled", "raw", "weight", "sum_gap"}


def test_tokens_panel_groups_and_latest_table(runs):
    run = _run(runs)
    for step in (1, 2):
        run.log({"draft/acc": 0.5 * step, "draft/pos0/acc": 0.9, "draft/pos1/acc": 0.6,
                 "draft/pos2/acc": 0.2 * step, "draft/pos1/conf": 0.7, "text/acc": 0.1},
                step=step)
    view = _view(runs, run)
    data = tokens._impl(view, "draft")
    assert data["streams"] == ["text", "draft"] and data["groups"] == ["pos0", "pos1", "pos2"]
    table = {r[0]: r[1:] for r in data["table"]["rows"]}
    assert table["acc"] == [1.0, 0.9, 0.6, 0.4]
    assert table["conf"] == [None, None, 0.7, None]
    acc_chart = next(c for c in data["charts"] if c["id"] == "draft/acc")
    assert [s["label"] for s in acc_chart["series"]] == ["all", "pos0", "pos1", "pos2"]
    assert tokens._impl(view)["stream"] == "text"
    with pytest.raises(ClientError):
        tokens._impl(view, "missing")


def test_prediction_positions_are_normalised():
    p = predictions.position({"predicted": "a", "target": "b", "pred_conf": 0.8,
                              "target_conf": 0.1}, 4)
    assert p == {"t": 4, "pred": "a", "label": "b", "pred_prob": 0.8, "label_prob": 0.1,
                 "match": False, "confident_wrong": True}
    q = predictions.position({"pred": 7, "label": 7, "pred_prob": float("nan"), "t": 2}, 0)
    assert q["match"] is True and q["pred"] == "7" and q["pred_prob"] is None and q["t"] == 2


def test_predictions_step_and_follow(runs):
    run = _run(runs)
    for step in (100, 200, 300):
        for sid in ("a", "b"):
            run.emit(SampleRow(step=step, stream="text", group=0, sample_id=sid,
                               context=f"{sid}@{step}",
                               positions=[{"pred": "x", "label": "x" if step > 100 else "y"}]))
    view = _view(runs, run)
    data = predictions._impl(view, step=250)
    assert data["step"] == 200 and [r["sample_id"] for r in data["rows"]] == ["a", "b"]
    assert data["steps"] == [100, 200, 300] and data["sample_ids"] == ["a", "b"]
    followed = predictions._impl(view, sample_id="b")
    assert [r["step"] for r in followed["rows"]] == [100, 200, 300]
    assert [r["acc"] for r in followed["rows"]] == [0.0, 1.0, 1.0]
    assert followed["rows"][0]["context"] == "b@100"
    assert len(data["table"]["rows"]) == 2


def test_patterns_heatmap_nan_cells_and_weakest(runs):
    run = _run(runs)
    run.emit(Matrix("eval/pattern_length", 50, [[0.9, math.nan], [0.3, 0.6]],
                    ["factual", "reasoning"], ["0-100", "100-300"]))
    data = patterns._impl(_view(runs, run))
    assert data["values"] == [[0.9, None], [0.3, 0.6]]
    assert [(w["pattern"], w["length"]) for w in data["weakest"]] == [
        ("reasoning", "0-100"), ("reasoning", "100-300"), ("factual", "0-100")]


def test_patterns_fall_back_to_eval_scalars(runs):
    run = _run(runs)
    run.log({"eval/math/2000+/em": 0.2, "eval/math/0-100/em": 0.8,
             "eval/code/100-300/em": 0.5}, step=5)
    data = patterns._impl(_view(runs, run))
    assert data["source"] == "scalars"
    assert data["row_labels"] == ["code", "math"]
    assert data["col_labels"] == ["0-100", "100-300", "2000+"]
    assert data["values"] == [[None, 0.5, None], [0.8, None, 0.2]]


def test_lora_top_k_and_timeline(runs):
    rng = np.random.default_rng(0)
    run = _run(runs)
    mats = {step: rng.random((6, 3)) for step in (10, 20, 30)}
    for step, m in mats.items():
        run.emit(Matrix("lora/layers", step, m.tolist(), [str(i) for i in range(6)],
                        ["qkv", "o", "mlp"]))
    view = _view(runs, run)
    data = lora._impl(view, top_k=3)
    totals = np.sqrt((mats[30] ** 2).sum(axis=1))  # a layer's Frobenius norm over its blocks
    assert [t["layer"] for t in data["top"]] == [str(i) for i in np.argsort(-totals)[:3]]
    assert data["top"][0]["total"] == pytest.approx(totals.max())
    timeline = np.array(data["timeline"]["values"])  # (layers, steps)
    assert data["timeline"]["steps"] == [10, 20, 30]
    np.testing.assert_allclose(timeline, np.stack([np.sqrt((mats[s] ** 2).sum(1))
                                                   for s in (10, 20, 30)], 1))
    assert lora._impl(view, step=15)["step"] == 10


def test_lora_thin_keeps_ends_and_count():
    steps = list(range(0, 1000, 5))
    kept = lora.thin(steps, 10)
    assert len(kept) == 10 and kept[0] == 0 and kept[-1] == 995 and kept == sorted(kept)
    assert lora.thin([1, 2], 10) == [1, 2]


def test_doctor_missing_and_failing(runs, monkeypatch):
    run = _run(runs)
    run.log({"loss": 1.0}, step=1)
    view = _view(runs, run)
    monkeypatch.setattr(doctor, "_load", lambda: None)
    assert doctor._impl(view) == {"empty": True, "available": False,
                                  "message": "doctor not available"}

    def broken(view):
        raise RuntimeError("boom")

    monkeypatch.setattr(doctor, "_load", lambda: broken)
    assert "RuntimeError: boom" in doctor._impl(view)["message"]
    monkeypatch.setattr(doctor, "_load", lambda: lambda v: {"x": float("nan"), "y": [1, {2}]})
    assert doctor._impl(view)["diagnosis"] == {"x": None, "y": [1, "{2}"]}


def test_scalars_shows_unclaimed_keys_in_pages(runs):
    run = _run(runs)
    run.log({f"custom/k{i:03d}": float(i) for i in range(200)} | {"loss": 1.0, "text/acc": 0.5},
            step=1)
    view = _view(runs, run)
    first = scalars._impl(view)
    assert first["total"] == 200 and first["pages"] == 17 and len(first["charts"]) == 12
    last = scalars._impl(view, page=99)
    assert last["page"] == 16 and [c["id"] for c in last["charts"]] == [
        f"custom/k{i:03d}" for i in range(192, 200)]
    assert [c["id"] for c in scalars._impl(view, filter="k19")["charts"]] == [
        f"custom/k{i}" for i in range(190, 200)]


def test_every_panel_shows_an_empty_state_on_an_empty_run(runs):
    run = _run(runs)
    view = _view(runs, run)
    for name, panel in PANELS.items():
        data = panel.query(view, {})
        if name != "doctor":  # the doctor, when installed, always has a verdict
            assert data["empty"] is True, name


def test_every_panel_answers_for_a_full_run(runs):
    ref = make_run(runs, steps=200)
    view = view_of(runs, ref)
    for name, panel in PANELS.items():
        data = panel.query(view, {})
        if name != "scalars":  # every key of the synthetic run has its own panel
            assert data["empty"] is False, name
    assert len(lora._impl(view)["layers"]) == LAYERS


def test_series_are_min_max_buckets_and_export_rows_cover_every_point(runs):
    run = _run(runs)
    for step in range(1, 1001):
        run.log({"loss": 100.0 if step == 500 else float(step % 7)}, step=step)
    view = _view(runs, run)
    pts = base.points(view, "loss", 50)
    assert len(pts) <= 50 and max(p[2] for p in pts) == 100.0  # the spike survives
    assert min(p[1] for p in pts) == 0.0
    detail = base.range_points(view, "loss", 490, 510, 1000)
    assert [p[0] for p in detail] == list(range(490, 511))
    data = PANELS["loss"].query(view, {"buckets": "all"})
    header, rows = base.export_rows(data)
    assert header == ["chart", "series", "step", "min", "max"] and len(rows) == 1000
    with pytest.raises(ClientError):
        base.buckets_param({"buckets": "0"})
    with pytest.raises(ClientError):
        base.int_param({"step": "x"}, "step", None)


def test_lora_layer_totals_add_up_to_the_probes_total(runs):
    """A layer's total is the Frobenius norm over its blocks: over all layers these give
    back `lora/total`, which the probe computes from the adapters directly."""
    from trainspect.demo.train import TrainConfig, train

    run = _run(runs, system_metrics=False)
    train(run, steps=12, config=TrainConfig(train_size=64, batch_size=4, max_len=48))
    view = _view(runs, run)
    data = lora._impl(view)
    assert data["family"] == "lora" and data["step"] == view.series("lora/total")[-1][0]
    assert math.sqrt(sum(t * t for t in data["totals"])) == pytest.approx(
        view.series("lora/total")[-1][1], rel=1e-6)
