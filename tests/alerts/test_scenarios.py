"""Planted-fault runs on the CPU: `doctor` names the planted cause first; healthy runs get
nothing above info. Each run is ts.init + run.log of docs/architecture.md's metric names,
300 steps."""

from __future__ import annotations

import pytest

import trainspect as ts
from trainspect.alerts.doctor import diagnose

from .series import CONFIG, FAULTS, healthy

# fault -> (the rule doctor must rank first, words its verdict must contain)
SCENARIOS = {
    "nonfinite": ("nonfinite:loss", "Broken: loss is nan at step 150"),
    "loss_spike": ("loss_spike", "at step 200 is"),
    "grad_explosion": ("grad_explosion", "grad/norm 40 at step 180"),
    "plateau": ("plateau:eval/em", "Converged: eval/em has not improved for 3 evals"),
    "regression": ("regression:eval/em", "Needs attention: eval/em fell to"),
    "overfitting": ("overfitting", "the model is memorising the training data"),
    "calibration_drift": ("calibration_drift:eval/ece", "Needs attention: eval/ece is 0.07"),
    "confidently_wrong": ("confidently_wrong:text", "text/conf_gap"),
    "empty_supervision": ("empty_supervision:text", "Broken: text: no supervised tokens"),
    "zero_weight_leak": ("zero_weight_leak:feature", "'feature' has weight 0"),
    "loss_sum_gap": ("loss_sum_gap", "differs from the sum of the scaled components"),
    "no_gradient": ("no_gradient", "Broken: no gradient"),
    "weights_frozen": ("weights_frozen", "no watched weight has moved by step 19"),
    "lr_zero": ("lr_zero", "Broken: lr is exactly 0"),
    "lr_frozen_warmup": ("lr_frozen_warmup", "warmup_steps=20"),
    "throughput_drop": ("throughput_drop", "below its rolling median"),
    "draft_collapse": ("draft_collapse", "draft position 3"),
}
# A spike is over 20 calm points later: at the end of the run doctor names it as resolved.
CLEARS = {"loss_spike", "grad_explosion"}


def make_run(fault: str | None, live: bool, keep=lambda key: True, seed: int = 0):
    with ts.init(project="scenarios", name=fault or "healthy", config=CONFIG,
                 alerts=live) as run:
        for step, metrics in healthy(seed=seed, fault=FAULTS.get(fault)):
            run.log({k: v for k, v in metrics.items() if keep(k)}, step=step)
    return ts.open().run(run.id)


@pytest.mark.parametrize("fault", sorted(SCENARIOS))
def test_doctor_names_the_planted_cause(runs, fault):
    first_rule, words = SCENARIOS[fault]
    live = sorted(SCENARIOS).index(fault) % 2 == 0  # half stored live, half replayed
    view = make_run(fault, live)
    d = diagnose(view)
    assert d["alerts"]["source"] == ("store" if live else "replay")
    if fault in CLEARS:
        assert [a["rule"] for a in d["alerts"]["resolved"]] == [first_rule]
        assert d["alerts"]["active"] == [] and "Recovered from: " in d["verdict"]
        assert words in d["verdict"]
        return
    assert d["actions"][0]["rule"] == first_rule, d["actions"]
    assert words in d["verdict"], d["verdict"]
    assert d["actions"][0]["text"]  # says what to do


def test_spikes_are_named_while_they_are_fresh(runs):
    view = make_run("loss_spike", live=True)
    rows = [(a["step"], a["rule"], a["state"]) for a in view.alerts()]
    assert rows == [(200, "loss_spike", "fired"), (220, "loss_spike", "cleared")]


def test_healthy_lora_finetune_raises_nothing_above_info(runs):
    view = make_run(None, live=True, keep=lambda k: not k.startswith(("draft/", "audio/")))
    assert [a for a in view.alerts() if a["level"] != "info"] == []
    d = diagnose(view, "always")
    assert [a for a in d["alerts"]["active"] if a["level"] != "info"] == []
    assert d["verdict"].startswith("Finished at step 299. Healthy:")
    assert d["best"]["step"] == 299 and d["weakest"]["patterns"][0]["name"] == "reasoning"
    assert d["actions"][-1]["rule"] == "keep_training"


def test_healthy_draft_and_audio_heads_raise_nothing_above_info(runs):
    view = make_run(None, live=True, seed=1,
                    keep=lambda k: not k.startswith(("lora/", "loss/")))
    assert [a for a in view.alerts() if a["level"] != "info"] == []
    d = diagnose(view)
    assert d["alerts"]["active"] == []
    assert d["verdict"].startswith("Finished at step 299. Healthy:")
    assert d["weakest"]["bottleneck"]["index"] in (1, 2, 3)
    assert d["weakest"]["codebooks"][0]["index"] == 3


def test_real_token_probe_empty_mask_reaches_the_rule_through_the_writer(runs):
    import torch

    gen = torch.Generator().manual_seed(0)
    with ts.init(project="scenarios", log_every=5) as run:
        for step in range(30):
            logits = torch.randn(2, 6, 11, generator=gen)  # (B, T, V)
            labels = torch.randint(0, 11, (2, 6), generator=gen)
            if step >= 15:
                labels[:] = -100  # the data pipeline now masks every token
            run.observe(step, logits=logits, labels=labels)
            run.log({"loss": 2.0}, step=step)
    view = ts.open().run(run.id)
    fired = [a for a in view.alerts() if a["state"] == "fired"]
    # the window (10, 15] has one empty batch: a warning; the next is all empty: critical
    assert [(a["step"], a["rule"], a["level"]) for a in fired] == [
        (15, "empty_supervision:text", "warning"), (20, "empty_supervision:text", "critical")]
    assert "1 batch in the window ending at step 15 had an empty loss mask" in fired[0]["message"]
    assert "no supervised tokens at all" in fired[1]["message"]
    assert diagnose(view)["actions"][0]["rule"] == "empty_supervision:text"
