"""Each built-in rule: the planted fault fires it (and little else), a healthy run stays quiet,
and the edge cases its docstring promises hold."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainspect.alerts import AlertEngine
from trainspect.alerts.rules import BUILTIN, default_rules
from trainspect.alerts.rules.draft import DraftCollapse
from trainspect.alerts.stats import num
from trainspect.records import Alert

from .series import CONFIG, FAULT_CONFIGS, FAULTS, LR_MAX, healthy


def run_engine(fault=None, config=CONFIG, seed=0, rules=None, steps=300) -> list[Alert]:
    engine = AlertEngine(rules, config=config, console=False)
    out = []
    for step, metrics in healthy(steps=steps, seed=seed, fault=fault):
        out += engine.feed(step, metrics)
    return out


def fired(alerts: list[Alert]) -> list[Alert]:
    return [a for a in alerts if a.state == "fired"]


def rule_ids(alerts: list[Alert]) -> set[str]:
    return {a.rule.split(":")[0] for a in fired(alerts)}


# A fault may legitimately trip a related rule too; nothing else may fire.
ALSO = {
    "regression": {"plateau"},
    "overfitting": {"regression"},
    "calibration_drift": {"overfitting"},  # eval CE flat while train CE falls
    "loss_divergence": {"loss_spike"},  # the jump itself is a spike
}
# (step of the first alert, words its message must contain)
EXPECTED = {
    "nonfinite": (150, ["loss is nan at step 150"]),
    "loss_spike": (200, ["loss", "at step 200", "robust sd"]),
    "grad_explosion": (180, ["grad/norm 40 at step 180"]),
    "plateau": (249, ["eval/em has not improved for 3 evals", "best 0.712 at step 149"]),
    "regression": (299, ["eval/em fell to", "2 evals in a row"]),
    "overfitting": (199, ["eval/ce - text/ce grew", "text/ce kept falling"]),
    "calibration_drift": (199, ["eval/ece is 0.07 at step 199",
                                "0.015 (27%) above its best 0.055"]),
    "confidently_wrong": (None, ["text/conf_gap", "widening", "text/acc is not rising"]),
    "empty_supervision": (109, ["text: no supervised tokens", "10 batches"]),
    "zero_weight_leak": (9, ["'feature' has weight 0", "its raw value 12"]),
    "loss_sum_gap": (9, ["6% of the total"]),
    "no_gradient": (1, ["grad/norm = 0"]),
    "weights_frozen": (19, ["no watched weight has moved by step 19",
                            "the optimizer updates other tensors"]),
    "label_alignment": (109, ["text: 98% of the supervised labels", "were not shifted"]),
    "prompt_supervised": (109, ["100% of the supervised rows", "prompt is supervised"]),
    "padding_supervised": (109, ["20% of the supervised labels", "are padding"]),
    "answer_end": (119, ["100% of the supervised rows", "end token is masked"]),
    "vocab_mismatch": (109, ["12 labels and 40 input ids", "another tokenizer"]),
    "repeated_batches": (109, ["90% of the batches"]),
    "loss_divergence": (None, ["loss has risen to", "from its best"]),
    "activation_growth": (159, ["layers.1", "x the median"]),
    "loss_scale_collapse": (157, ["loss_scale fell to", "being skipped"]),
    "component_constant": (29, ["'kd' has been 1.234", "does not depend on the batch"]),
    "loss_total_scaled": (19, ["is 2x the sum of the scaled components"]),
    "straggler": (179, ["rank 1 is the straggler", "0.16 s of work per step against 0.1 s"]),
    "weight_decay_too_strong": (9, ["weight_decay 100 x lr 1.000e-04 at step 9",
                                    "shrinks every weight by 1% a step"]),
    "lr_zero": (101, ["lr is exactly 0 at step 101"]),
    "lr_frozen_warmup": (5, [f"lr has stayed at {num(LR_MAX)}", "warmup_steps=20"]),
    "throughput_drop": (202, ["speed/tokens_per_s", "below its rolling median"]),
    "draft_collapse": (119, ["draft position 3", "geometric decay"]),  # median of 3 windows
}


def test_every_builtin_rule_has_a_planted_fault_and_documents_its_thresholds():
    assert {cls.id for cls in BUILTIN} == set(FAULTS) == set(EXPECTED)
    for cls in BUILTIN:
        doc = cls.__doc__ or ""
        assert len(doc) > 150 and any(ch.isdigit() for ch in doc), cls.__name__
        assert cls().action or cls.id in ("plateau", "regression", "overfitting",
                                          "weights_frozen", "answer_end"), \
            cls.__name__  # those three write their action per finding


@pytest.mark.parametrize("rule_id", sorted(FAULTS))
def test_planted_fault_fires_its_rule_and_nothing_unrelated(rule_id):
    alerts = run_engine(FAULTS[rule_id], config=FAULT_CONFIGS.get(rule_id, CONFIG))
    assert rule_ids(alerts) <= {rule_id} | ALSO.get(rule_id, set())
    mine = [a for a in fired(alerts) if a.rule.split(":")[0] == rule_id]
    assert mine, f"{rule_id} did not fire"
    step, words = EXPECTED[rule_id]
    first = mine[0]
    if step is not None:
        assert first.step == step
    for word in words:
        assert word in first.message, (word, first.message)
    assert first.action  # every alert says what to do


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_healthy_run_raises_nothing(seed):
    assert run_engine(seed=seed) == []


def test_nonfinite_names_the_first_module_not_a_later_one():
    alerts = run_engine(FAULTS["nonfinite"])  # layers.2 at step 159, layers.1 only at 169
    hidden = next(a for a in alerts if a.rule == "nonfinite:hidden")
    assert hidden.level == "critical"  # the loss is non-finite too
    assert hidden.message.startswith("non-finite activations first appeared in module "
                                     "layers.2 at step 159 (hidden/layers.2/nonfinite = 7)")

    def same_window(s, m):  # two modules in one window: the first in logged (forward) order
        if s >= 159 and "hidden/layers.2/nonfinite" in m:
            m["hidden/layers.2/nonfinite"] = m["hidden/layers.1/nonfinite"] = 5.0

    hidden = fired(run_engine(same_window))[0]
    assert (hidden.rule, hidden.level) == ("nonfinite:hidden", "warning")  # loss still finite
    assert "module layers.1 at step 159" in hidden.message
    assert "; also in layers.2" in hidden.message


def test_spike_needs_both_tests_robust_z_and_ratio():
    # a flat loss (MAD 0) with a 1e-6 wiggle: infinite z-score but ratio ~1 -> quiet
    flat = [{"loss": 2.0} for _ in range(60)] + [{"loss": 2.000001}]
    engine = AlertEngine(console=False)
    assert [a for s, m in enumerate(flat) for a in engine.feed(s, m)] == []
    # a noisy loss with a point 1.3x the mean: z may be large, ratio < 1.5 -> quiet
    rng = np.random.default_rng(0)
    engine = AlertEngine(console=False)
    points = list(2.0 + 0.01 * rng.standard_normal(60)) + [2.6]
    assert [a for s, v in enumerate(points) for a in engine.feed(s, {"loss": v})] == []


def test_spike_message_numbers_match_an_independent_computation():
    rows = list(healthy(fault=FAULTS["loss_spike"]))
    window = np.array([m["loss"] for s, m in rows if 150 <= s < 200])
    x = rows[200][1]["loss"]
    median = np.median(window)
    z = (x - median) / (1.4826 * np.median(np.abs(window - median)))
    alert = fired(run_engine(FAULTS["loss_spike"]))[0]
    assert alert.message == (f"loss {num(x)} at step 200 is {num(z)} robust sd above the median "
                             f"{num(median)} of the previous 50 points "
                             f"({num(x / window.mean())}x their mean)")


def test_throughput_reference_is_the_median_of_the_previous_50_points():
    rows = list(healthy(fault=FAULTS["throughput_drop"]))
    alert = fired(run_engine(FAULTS["throughput_drop"]))[0]
    # fired at 202 (3rd slow point); the reference was frozen at the first slow point, 200
    ref = np.median([m["speed/tokens_per_s"] for s, m in rows if 150 <= s < 200])
    x = rows[202][1]["speed/tokens_per_s"]
    assert f"{num(x)} at step 202 is {1 - x / ref:.0%} below its rolling median {num(ref)}" \
        in alert.message


def test_throughput_one_slow_step_is_quiet_and_recovery_clears():
    def fault(s, m):
        if s == 150 or 200 <= s < 230:
            m["speed/tokens_per_s"] *= 0.3

    alerts = run_engine(fault)
    assert [(a.step, a.state) for a in alerts] == [(202, "fired"), (232, "cleared")]


def test_no_gradient_ignores_a_single_zero():
    def fault(s, m):
        if s == 100:
            m["grad/norm"] = 0.0

    assert run_engine(fault) == []


def test_lr_zero_ignores_a_schedule_that_reaches_zero_at_its_last_step():
    def fault(s, m):
        if s == 299:
            m["lr"] = 0.0

    assert run_engine(fault) == []


def test_lr_frozen_warmup_needs_a_configured_warmup():
    assert run_engine(FAULTS["lr_frozen_warmup"], config={}) == []
    assert rule_ids(run_engine(FAULTS["lr_frozen_warmup"],
                               config={"num_warmup_steps": 20})) == {"lr_frozen_warmup"}


def test_calibration_drift_on_a_stream_and_the_burn_in():
    def drift(s, m, ce_flat=True):
        if "text/ece" in m and s >= 150:
            m["text/ece"] = 0.04 + 0.001 * (s - 150)  # 0.04 -> 0.19
            if ce_flat:
                m["text/ce"] = 0.8 + 0.001 * (s - 150)

    alerts = fired(run_engine(drift))
    assert [a.rule for a in alerts] == ["calibration_drift:text/ece"]
    # the same ECE rise while the training CE keeps falling: the model sharpens, no alert
    assert fired(run_engine(lambda s, m: drift(s, m, ce_flat=False))) == []

    def from_zero(s, m):  # an untrained model is trivially calibrated: ECE ~0 early on
        if "text/ece" in m:
            m["text/ece"] = 0.001 if s < 100 else 0.04

    assert run_engine(from_zero) == []


def test_confidently_wrong_stays_quiet_while_accuracy_rises():
    def fast_learner(s, m):
        if "text/conf_gap" in m and s >= 100:
            m["text/conf_gap"] = -0.1 - 0.002 * (s - 100)  # widening as in the fault, but
            # text/acc keeps climbing as in the healthy run

    assert run_engine(fast_learner) == []


def test_draft_collapse_waits_for_position_zero_to_learn():
    def early(s, m):
        if "draft/pos0/acc" in m:
            m["draft/pos0/acc"] = 0.2
            m["draft/pos1/acc"] = 0.15
            m["draft/pos3/acc"] = 0.0

    assert run_engine(early, rules=[DraftCollapse()]) == []


def test_draft_collapse_on_conditional_accuracy_alone():
    def cond(s, m):
        if "draft/pos2/cond_acc" in m and s >= 200:
            m["draft/pos2/cond_acc"] = 0.3  # 0.8 before: the position stopped working

    alerts = fired(run_engine(cond))
    assert [a.rule for a in alerts] == ["draft_collapse"]
    assert "draft position 2 conditional accuracy 0.3 has fallen below half its best" in \
        alerts[0].message


def test_a_weak_draft_head_is_not_a_collapsing_one():
    """Low but steady accuracies (a small head early in training) raise nothing."""
    def weak(s, m):
        if "draft/pos0/acc" in m:
            for i, (a, c) in enumerate([(0.5, 0.5), (0.15, 0.12), (0.1, 0.3), (0.05, 0.2)]):
                m[f"draft/pos{i}/acc"] = a
                if i:
                    m[f"draft/pos{i}/cond_acc"] = c

    assert fired(run_engine(weak)) == []


def test_zero_weight_leak_from_the_explicit_leak_and_from_scaled():
    def leak(s, m):
        if "loss/total" in m and s >= 100:
            m["loss/feature/leak"] = 3.0

    alerts = fired(run_engine(leak))
    assert [a.rule for a in alerts] == ["zero_weight_leak:feature"]
    assert "the loss probe measured 3 of it in the total" in alerts[0].message

    def scaled(s, m):
        if "loss/total" in m and s >= 100:
            m["loss/feature/scaled"] = 12.0
            m["loss/total"] += 12.0

    assert [a.rule for a in fired(run_engine(scaled))] == ["zero_weight_leak:feature"]


def test_sum_gap_from_loss_sum_gap_alone_reads_it_as_relative_to_the_total():
    totals = {}

    def only_gap(s, m):
        if "loss/total" in m:
            for name in ("ce", "kd", "feature"):
                del m[f"loss/{name}/scaled"]
            m["loss/feature/raw"] = 0.0
            m["loss/sum_gap"] = 0.03  # the loss probe's |total - sum(scaled)| / |total|
            totals[s] = m["loss/total"]

    alerts = fired(run_engine(only_gap))
    assert [a.rule for a in alerts] == ["loss_sum_gap"]
    assert f"by {num(0.03 * totals[9])} (3% of the total) at step 9" in alerts[0].message


def test_empty_supervision_warns_on_some_empty_batches_and_escalates_when_all_are():
    def some_then_all(s, m):
        if "text/empty_mask_batches" in m and s >= 100:
            m["text/empty_mask_batches"] = 2.0
        if "text/supervised_tokens" in m and s >= 200:
            m["text/supervised_tokens"] = 0.0

    alerts = fired(run_engine(some_then_all))
    assert [(a.step, a.rule, a.level) for a in alerts] == [
        (109, "empty_supervision:text", "warning"), (209, "empty_supervision:text", "critical")]
    assert "2 batches in the window ending at step 109 had an empty loss mask" in \
        alerts[0].message


def test_empty_supervision_is_silent_when_the_rows_were_left_out_for_nan_logits():
    def nan_logits(s, m):  # every supervised row dropped as non-finite: labels are fine
        if "text/supervised_tokens" in m and s >= 100:
            m["text/supervised_tokens"] = 0.0
            m["text/nonfinite_rows"] = 512.0

    assert [a for a in fired(run_engine(nan_logits)) if a.rule.startswith("empty_")] == []


def test_eval_plateau_names_the_checkpoint_the_run_recorded():
    engine = AlertEngine(console=False)
    engine.observe({}, [Alert(step=149, rule="checkpoint", level="info",
                              message="checkpoint-150")])
    out = []
    for step, metrics in healthy(fault=FAULTS["plateau"]):
        out += engine.feed(step, metrics)
    plateau = next(a for a in out if a.rule == "plateau:eval/em")
    assert "best 0.712 at step 149 (checkpoint-150)" in plateau.message
    assert "keeping the checkpoint from step 149 (checkpoint-150)" in plateau.action


def test_eval_regression_hysteresis_clears_only_near_the_best():
    em = [0.5, 0.6, 0.7, 0.66, 0.66, 0.685, 0.695]  # best .70; -.04 twice fires; .685 holds
    engine = AlertEngine(default_rules(), console=False)
    out = []
    for i, v in enumerate(em):
        out += engine.feed(i * 50, {"eval/em": v})
    regress = [(a.step, a.state) for a in out if a.rule == "regression:eval/em"]
    assert regress == [(200, "fired"), (300, "cleared")]


def test_overfitting_falls_back_to_the_main_loss_without_text_ce():
    def fault(s, m):
        for key in [k for k in m if k.startswith("text/")]:
            del m[key]
        FAULTS["overfitting"](s, m)

    alerts = fired(run_engine(fault))
    assert any(a.rule == "overfitting" and "eval/ce - loss grew" in a.message for a in alerts)


def test_nan_values_in_windows_do_not_break_other_rules():
    def holes(s, m):
        if s % 7 == 0:
            m["speed/tokens_per_s"] = math.nan
        if s % 11 == 0:
            m["grad/norm"] = math.nan

    ids = rule_ids(run_engine(holes))
    assert ids == {"nonfinite"}  # the NaN gradient norms themselves, nothing spurious


def test_eval_plateau_needs_ce_flat_too_and_ignores_an_em_that_never_left_zero():
    """Issue: EM stuck at 0 while eval CE falls was called a plateau."""
    engine = AlertEngine(default_rules(), console=False)
    out = []
    for i, ce in enumerate([2.4, 2.1, 1.9, 1.7, 1.55, 1.45]):
        out += engine.feed(i * 10, {"eval/em": 0.0, "eval/ce": ce})
    assert [a.rule for a in out] == []
    for i, ce in enumerate([1.45, 1.45, 1.45, 1.45], start=6):  # now CE stops too
        out += engine.feed(i * 10, {"eval/em": 0.0, "eval/ce": ce})
    assert [(a.rule, a.step, a.level) for a in out] == [("plateau:eval/ce", 80, "info")]
    # EM that moved is judged, but not while CE still falls
    engine = AlertEngine(default_rules(), console=False)
    out = []
    for i, (em, ce) in enumerate([(0.1, 2.0), (0.3, 1.8), (0.3, 1.6), (0.3, 1.4), (0.3, 1.2)]):
        out += engine.feed(i * 10, {"eval/em": em, "eval/ce": ce})
    assert out == []


def test_confidently_wrong_stays_quiet_while_a_distilled_student_follows_its_teacher():
    def distil(s, m):
        FAULTS["confidently_wrong"](s, m)
        if "text/conf_gap" in m:
            m["text/teacher_agree"] = 0.3 + 0.002 * s  # the student keeps matching its teacher

    assert "confidently_wrong" in rule_ids(run_engine(FAULTS["confidently_wrong"]))
    assert fired(run_engine(distil)) == []


def test_a_fourfold_gradient_swing_is_not_an_explosion():
    def swing(s, m):
        if s == 180:
            m["grad/norm"] *= 4.0  # what a healthy small-batch run shows, with clipping on

    assert fired(run_engine(swing)) == []
