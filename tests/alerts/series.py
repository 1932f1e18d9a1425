"""Synthetic metric streams for the alert tests: one healthy run, and planted faults.

`healthy()` yields (step, metrics) the way a LoRA fine-tune with a draft head and an
audio head would log them under docs/architecture.md's names: per-step loss, LR (linear
warmup then cosine), gradient norm and throughput; per-flush (every 10 steps)
token, loss-composition, LoRA, gradient, hidden-state, draft and codebook metrics;
a fixed eval every 50 steps, all with seeded noise. Every number is chosen to be
healthy by each rule's documented thresholds. `FAULTS` maps a rule id to a
function that plants that rule's fault into the same stream.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator

STEPS = 300
FLUSH = 10
EVAL = 50
WARMUP = 20
LR_MAX = 2e-4
PATTERNS = {"factual": 0.85, "reasoning": 0.55, "coding": 0.7}
CONFIG = {"warmup_steps": WARMUP, "lr": LR_MAX}

Metrics = dict[str, float]
Fault = Callable[[int, Metrics], None]


def healthy(steps: int = STEPS, seed: int = 0, fault: Fault | None = None,
            ) -> Iterator[tuple[int, Metrics]]:
    rng = random.Random(seed)
    for s in range(steps):
        g = rng.gauss
        loss = (0.6 + 2.4 * math.exp(-s / 80)) * (1 + 0.03 * g(0, 1))
        if s < WARMUP:
            lr = LR_MAX * (s + 1) / WARMUP
        else:
            lr = LR_MAX * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - WARMUP) / steps)))
        m: Metrics = {
            "loss": loss, "lr": lr,
            "grad/norm": 1.0 + 0.5 * math.exp(-s / 50) + 0.08 * g(0, 1),
            "speed/tokens_per_s": 5000 * (1 - 0.5 * math.exp(-s / 5)) + 100 * g(0, 1),
        }
        if s % FLUSH == FLUSH - 1:
            m.update(_flush(s, g))
        if s % EVAL == EVAL - 1:
            m.update(_eval(s, g))
        if fault is not None:
            fault(s, m)
        yield s, m


def _flush(s: int, g: Callable[[float, float], float]) -> Metrics:
    learned = 1 - math.exp(-s / 100)
    ce = 0.55 + 2.4 * math.exp(-s / 80) + 0.02 * g(0, 1)
    acc = 0.2 + 0.6 * learned
    gap = -0.05 - 0.07 * math.exp(-s / 100)  # widest at the start, closing as it learns
    m: Metrics = {
        "text/ce": ce, "text/acc": acc,
        "text/conf": acc - gap / 2, "text/target_conf": acc + gap / 2,
        "text/conf_gap": gap + 0.003 * g(0, 1), "text/ece": 0.04 + 0.004 * g(0, 1),
        "text/supervised_tokens": 4096.0, "text/empty_mask_batches": 0.0,
        # loss composition: total = ce + 0.5 kd; 'feature' is switched off (weight 0)
        "loss/ce/raw": ce, "loss/ce/weight": 1.0, "loss/ce/scaled": ce,
        "loss/kd/raw": 0.8 * ce, "loss/kd/weight": 0.5, "loss/kd/scaled": 0.4 * ce,
        "loss/feature/raw": 12.0 * (1 + 1e-4 * (s % 7)), "loss/feature/weight": 0.0,
        "loss/feature/scaled": 0.0,
        "loss/total": 1.4 * ce, "loss/sum_gap": 0.0,  # |total - sum(scaled)| / |total|
        "grad/zero_frac": 0.02, "lora/b_zero_frac": 0.0,
        "hidden/layers.0/nonfinite": 0.0, "hidden/layers.1/nonfinite": 0.0,
        "hidden/layers.2/nonfinite": 0.0,
        # the label probe: labels are the next input token, nothing else is labelled
        "text/label_offset": 1.0, "text/label_offset_share": 1.0,
        "text/prompt_marker_rows": 0.0, "text/pad_labels": 0.0,
        "text/rows_without_end": 0.04, "text/rows_cut": 0.04,
        "text/labels_beyond_vocab": 0.0, "text/inputs_beyond_vocab": 0.0,
        "text/repeated_batches": 0.0,
    }
    for layer in range(3):
        m[f"hidden/layers.{layer}/absmax"] = (2.0 + layer) * (1 + s / 300) + 0.1 * g(0, 1)
    for layer in range(4):
        m[f"lora/{layer}/qkv"] = 0.01 * (layer + 1) * (s + 1) / 100
        m[f"lora/{layer}/mlp"] = 0.02 * (4 - layer) * (s + 1) / 100
        m[f"grad/layers.{layer}/norm"] = 0.1 * (layer + 1) + 0.01 * g(0, 1)
    m["lora/total"] = math.sqrt(sum(v * v for k, v in m.items() if k.startswith("lora/")
                                    and k.count("/") == 2))
    acc0 = 0.35 + 0.4 * learned
    for i in range(4):
        m[f"draft/pos{i}/acc"] = acc0 * 0.8**i + 0.005 * g(0, 1)
        if i:
            m[f"draft/pos{i}/cond_acc"] = 0.8 + 0.01 * g(0, 1)
    for i in range(4):  # position i targets the token i + 2 places ahead
        m[f"draft/pos{i}/label_offset"] = 2.0 + i
        m[f"draft/pos{i}/label_offset_share"] = 0.97
    m["draft/accept_len"] = sum(math.prod(acc0 * 0.8**j for j in range(k + 1)) for k in range(4))
    for c in range(4):
        m[f"audio/cb{c}/acc"] = (0.5 - 0.08 * c) + 0.3 * learned
    return m


def _eval(s: int, g: Callable[[float, float], float]) -> Metrics:
    learned = 1 - math.exp(-s / 150)
    m: Metrics = {"eval/em": 0.4 + 0.4 * learned, "eval/ce": 0.8 + 2.0 * math.exp(-s / 300),
                  "eval/ece": 0.06 - 0.00005 * s + 0.001 * g(0, 1), "eval/tokens": 4000.0}
    for name, base in PATTERNS.items():
        m[f"eval/{name}/em"] = base * (0.6 + 0.4 * learned)
        m[f"eval/{name}/short/em"] = base * (0.65 + 0.4 * learned)
        m[f"eval/{name}/long/em"] = base * (0.55 + 0.4 * learned)
    return m


# ---- planted faults: one per built-in rule ----------------------------------------------


def _nonfinite(s: int, m: Metrics) -> None:
    if s >= 150:
        m["loss"] = math.nan
        m["grad/norm"] = math.inf
    if s >= 159 and "hidden/layers.2/nonfinite" in m:
        m["hidden/layers.2/nonfinite"] = 7.0  # the first module to go bad
    if s >= 169 and "hidden/layers.1/nonfinite" in m:
        m["hidden/layers.1/nonfinite"] = 3.0


def _loss_spike(s: int, m: Metrics) -> None:
    if s == 200:
        m["loss"] *= 5


def _grad_explosion(s: int, m: Metrics) -> None:
    if s == 180:
        m["grad/norm"] = 40.0


def _eval_plateau(s: int, m: Metrics) -> None:
    if s >= 49:  # training has converged: the train CE stops falling too
        m["loss"] = 1.3 + 0.01 * math.sin(s)
        if "text/ce" in m:
            m["text/ce"] = 1.25 + 0.01 * math.sin(s)
    if "eval/em" in m and s >= 99:  # EM and CE alike stop moving
        m["eval/em"] = {99: 0.71, 149: 0.712, 199: 0.709, 249: 0.711, 299: 0.71}[s]
        m["eval/ce"] = {99: 1.62, 149: 1.61, 199: 1.615, 249: 1.612, 299: 1.613}[s]


def _eval_regression(s: int, m: Metrics) -> None:
    if "eval/em" in m and s >= 199:
        m["eval/em"] -= {199: 0.06, 249: 0.12, 299: 0.18}[s]


def _overfitting(s: int, m: Metrics) -> None:
    if "eval/ce" in m and s >= 149:
        m["eval/ce"] = {149: 1.95, 199: 2.05, 249: 2.2, 299: 2.4}[s]


def _calibration(s: int, m: Metrics) -> None:
    if "eval/ce" in m and s >= 49:  # eval CE stops improving ...
        m["eval/ce"] = 2.0 + 0.0001 * s
    if "eval/ece" in m and s >= 149:  # ... and ECE rises
        m["eval/ece"] = {149: 0.055, 199: 0.07, 249: 0.085, 299: 0.1}[s]


def _confidently_wrong(s: int, m: Metrics) -> None:
    if "text/conf_gap" in m and s >= 100:
        m["text/conf_gap"] = -0.1 - 0.002 * (s - 100)  # -0.1 -> -0.5, widening
        m["text/acc"] = 0.45


def _empty_mask(s: int, m: Metrics) -> None:
    if "text/supervised_tokens" in m and s >= 100:
        m["text/supervised_tokens"] = 0.0
        m["text/empty_mask_batches"] = 10.0


def _zero_weight_leak(s: int, m: Metrics) -> None:
    if "loss/total" in m:
        m["loss/total"] += m["loss/feature/raw"]  # added although its weight is 0
        m["loss/sum_gap"] = m["loss/feature/raw"] / m["loss/total"]  # |gap| / |total|


def _sum_gap(s: int, m: Metrics) -> None:
    if "loss/total" in m:
        m["loss/feature/raw"] = 0.0
        m["loss/total"] *= 1.06  # something unlogged adds 6% of the parts
        m["loss/sum_gap"] = 0.06 / 1.06


def _frozen(s: int, m: Metrics) -> None:
    m["grad/norm"] = 0.0
    m["loss"] = 3.0 * (1 + 0.01 * math.sin(s))
    if "grad/zero_frac" in m:
        m["grad/zero_frac"] = 1.0


def _weights_frozen(s: int, m: Metrics) -> None:
    if "lora/total" in m:  # the optimizer holds another copy: no adapter moves
        m["lora/b_zero_frac"] = 1.0
        for layer in range(4):
            m[f"lora/{layer}/qkv"] = m[f"lora/{layer}/mlp"] = 0.0
        m["lora/total"] = 0.0


def _from(step: int, **values: float) -> Fault:
    """Set the flush-window `values` (metric suffixes of `text/`) from `step` on."""
    def fault(s: int, m: Metrics) -> None:
        if s >= step and "text/label_offset" in m:
            m.update({f"text/{k}": v for k, v in values.items()})
    return fault


def _loss_divergence(s: int, m: Metrics) -> None:
    if s >= 150:  # the learning rate jumps: the loss doubles and stays there
        m["loss"] *= 2.0


def _activation_growth(s: int, m: Metrics) -> None:
    if s >= 150 and "hidden/layers.1/absmax" in m:
        m["hidden/layers.1/absmax"] *= 50.0 * 4 ** ((s - 150) // 10)


def _loss_scale(s: int, m: Metrics) -> None:
    m["loss_scale"] = 65536.0 if s < 150 else 65536.0 / 2 ** (s - 149)  # halves every step


def _component_constant(s: int, m: Metrics) -> None:
    if "loss/kd/raw" in m:  # computed once and reused
        m["loss/total"] += 0.5 * (1.234 - m["loss/kd/raw"])
        m["loss/kd/raw"], m["loss/kd/scaled"] = 1.234, 0.617


def _straggler(s: int, m: Metrics) -> None:
    if "text/ce" in m:  # two ranks; rank 1's data loading slows down from step 150
        m["speed/rank0/step_s"], m["speed/rank0/late_s"] = 0.10, 0.0
        m["speed/rank1/step_s"] = 0.10 if s < 150 else 0.16
        m["speed/rank1/late_s"] = 0.0 if s < 150 else 0.6


def _total_scaled(s: int, m: Metrics) -> None:
    if "loss/total" in m:  # 2 micro-batches, the loss not divided by 2
        m["loss/total"] *= 2.0
        m["loss/sum_gap"] = 0.5


def _lr_zero(s: int, m: Metrics) -> None:
    if s >= 100:
        m["lr"] = 0.0


def _lr_frozen(s: int, m: Metrics) -> None:
    m["lr"] = LR_MAX  # the scheduler is never stepped


def _throughput(s: int, m: Metrics) -> None:
    if s >= 200:
        m["speed/tokens_per_s"] *= 0.45


def _draft_collapse(s: int, m: Metrics) -> None:
    if "draft/pos3/acc" in m and s >= 100:
        m["draft/pos3/acc"] = 0.03
        m["draft/pos3/cond_acc"] = 0.1


FAULTS: dict[str, Fault] = {
    "nonfinite": _nonfinite, "loss_spike": _loss_spike, "grad_explosion": _grad_explosion,
    "plateau": _eval_plateau, "regression": _eval_regression,
    "overfitting": _overfitting, "calibration_drift": _calibration,
    "confidently_wrong": _confidently_wrong, "empty_supervision": _empty_mask,
    "zero_weight_leak": _zero_weight_leak, "loss_sum_gap": _sum_gap, "no_gradient": _frozen,
    "weights_frozen": _weights_frozen, "lr_zero": _lr_zero, "lr_frozen_warmup": _lr_frozen,
    "throughput_drop": _throughput, "draft_collapse": _draft_collapse,
    "label_alignment": _from(100, label_offset=0.0, label_offset_share=0.98),
    "prompt_supervised": _from(100, prompt_marker_rows=1.0),
    "padding_supervised": _from(100, pad_labels=0.2),
    "answer_end": _from(100, rows_without_end=1.0, rows_cut=0.05),
    "vocab_mismatch": _from(100, labels_beyond_vocab=12.0, inputs_beyond_vocab=40.0),
    "repeated_batches": _from(100, repeated_batches=0.9),
    "loss_divergence": _loss_divergence, "activation_growth": _activation_growth,
    "loss_scale_collapse": _loss_scale, "component_constant": _component_constant,
    "loss_total_scaled": _total_scaled,
    "weight_decay_too_strong": lambda s, m: None,  # the fault is in the config
    "straggler": _straggler,
}
# Faults that live in the run's config rather than in its metrics.
FAULT_CONFIGS = {"weight_decay_too_strong": {**CONFIG, "weight_decay": 100.0}}
