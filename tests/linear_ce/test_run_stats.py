"""With `run=`, the fused loss records what `run.observe` records on the materialised
logits of the same data: every metric (1e-5 relative), the calibration bins, the
samples with their top-5, the teacher's agreement, KL and acceptance, pooled over flush
windows; and a problem on the statistics side never stops the loss."""

from __future__ import annotations

import logging

import pytest
import torch

import trainspect as ts
from tests.linear_ce.helpers import assert_close_samples, assert_close_series, head_batch, stored

STEPS = 5
RUN = dict(project="lce", log_every=2, samples_every=2, num_samples=2)


def logits_of(batch, cap=None):
    z = batch["hidden"] @ batch["weight"].T + batch["bias"]
    return z if cap is None else cap * torch.tanh(z / cap)


def play(name: str, fused: bool, cap=None, teacher: str | None = None, chunk=None) -> None:
    with ts.init(name=name, **RUN) as run:
        for step in range(1, STEPS + 1):
            b = head_batch(step)
            t = head_batch(100 + step) if teacher else None
            if fused:
                kwargs = {}
                if teacher == "logits":
                    kwargs["target_logits"] = logits_of(t)
                elif teacher == "head":
                    kwargs.update(target_hidden=t["hidden"], target_weight=t["weight"],
                                  target_bias=t["bias"])
                loss = ts.linear_cross_entropy(
                    b["hidden"], b["weight"], b["labels"], bias=b["bias"], logit_softcap=cap,
                    run=run, step=step, input_ids=b["input_ids"], max_chunk_bytes=chunk,
                    **kwargs)
                assert torch.isfinite(loss)
            else:
                run.observe(step, logits_of(b, cap), b["labels"], input_ids=b["input_ids"],
                            target_logits=None if t is None else logits_of(t))


@pytest.mark.parametrize("cap", [None, 5.0])
@pytest.mark.parametrize("chunk", [None, 5 * 37 * 4])  # one chunk; chunks of 5 rows
def test_statistics_and_samples_match_observe_on_the_logits(runs, cap, chunk):
    play("observe", fused=False, cap=cap)
    play("fused", fused=True, cap=cap, chunk=chunk)
    ref, got = stored(runs, "observe"), stored(runs, "fused")
    keys = sorted(k for k in ref if not k.startswith("_"))
    assert {"text/acc", "text/conf", "text/target_conf", "text/conf_gap", "text/entropy",
            "text/ce", "text/ce_ema", "text/ece", "text/confident_wrong",
            "text/supervised_tokens"} <= set(keys)
    assert sorted(k for k in got if not k.startswith("_")) == keys
    assert 0.05 < ref["text/acc"][-1][1] < 0.95  # the data is neither trivial nor hopeless
    assert max(v for _, v in ref["text/confident_wrong"]) > 0
    assert_close_series(ref, got, rel=1e-5)
    bins_ref, bins_got = ref["_calibration"]["values"], got["_calibration"]["values"]
    for row_ref, row_got in zip(bins_ref, bins_got):
        assert row_ref[0] == row_got[0]  # counts exactly
        assert row_got[1:] == pytest.approx(row_ref[1:], rel=1e-5, abs=1e-6)
    assert_close_samples(ref["_samples"], got["_samples"])
    # the first observed step, then every samples_every (2) steps
    assert {row["step"] for row in got["_samples"]} == {1, 2, 4}


@pytest.mark.parametrize("teacher", ["logits", "head"])
def test_teacher_agreement_kl_and_acceptance_match_observe(runs, teacher):
    play("observe", fused=False, teacher=teacher)
    play("fused", fused=True, teacher=teacher, chunk=7 * 37 * 4)
    ref, got = stored(runs, "observe"), stored(runs, "fused")
    assert {"text/teacher_agree", "text/kl", "text/alpha"} <= set(ref)
    assert_close_series(ref, got, rel=1e-5)


def test_loss_is_the_same_with_and_without_a_run(runs):
    b = head_batch(1)
    plain = ts.linear_cross_entropy(b["hidden"], b["weight"], b["labels"], bias=b["bias"])
    with ts.init(name="r", **RUN) as run:
        recorded = ts.linear_cross_entropy(b["hidden"], b["weight"], b["labels"],
                                           bias=b["bias"], run=run, step=1)
    assert torch.equal(plain, recorded)


def test_statistics_never_join_the_graph_and_gradients_are_unchanged(runs):
    b = head_batch(2)
    hidden = b["hidden"].clone().requires_grad_()
    with ts.init(name="r", **RUN) as run:
        loss = ts.linear_cross_entropy(hidden, b["weight"], b["labels"], run=run, step=2)
        loss.backward()
        state = run.probe("tokens").streams["text"]
        assert not state.sums.requires_grad and not state.calibration.requires_grad
    reference = b["hidden"].clone().requires_grad_()
    torch.nn.functional.cross_entropy((reference @ b["weight"].T).reshape(-1, 37),
                                      b["labels"].reshape(-1)).backward()
    assert torch.allclose(hidden.grad, reference.grad, rtol=1e-4, atol=1e-7)


def test_statistics_problems_alert_and_the_loss_goes_on(runs, caplog):
    b = head_batch(3)
    with ts.init(name="r", **RUN) as run:
        run.observe(1, logits_of(b), b["labels"])  # the stream's first batch: V = 37
        wide = torch.randn(50, 16)
        with caplog.at_level(logging.WARNING, logger="trainspect"):
            loss = ts.linear_cross_entropy(b["hidden"], wide, b["labels"], run=run, step=2)
        assert torch.isfinite(loss)
        assert any("V=50 differs" in r.getMessage() for r in caplog.records)
    with caplog.at_level(logging.WARNING, logger="trainspect"):
        late = ts.linear_cross_entropy(b["hidden"], b["weight"], b["labels"], run=run, step=3)
    assert torch.isfinite(late)  # a finished run: one warning, the loss still comes
    assert any("has finished" in r.getMessage() for r in caplog.records)
    view = ts.open(runs).runs(project="lce")[0]
    assert any(a["rule"] == "bad_input" for a in view.alerts())


def test_a_teacher_without_a_run_is_an_error_naming_the_arguments():
    b = head_batch(4)
    with pytest.raises(ts.TrainspectError, match="target_logits"):
        ts.linear_cross_entropy(b["hidden"], b["weight"], b["labels"],
                                target_logits=logits_of(b))
