"""The learning-rate schedule: an LR of zero, an LR that does not move during warmup."""

from __future__ import annotations

from trainspect.alerts.rule import HOLD, CheckResult, Context, Finding, Rule
from trainspect.alerts.rules.common import LR_KEYS
from trainspect.alerts.stats import num

# Config names trainers use for the number of warmup steps.
WARMUP_KEYS = ("warmup_steps", "num_warmup_steps", "lr_warmup_steps", "warmup")


def warmup_steps(config: dict) -> int | None:
    """The configured number of warmup steps (> 0), from the run's config, or None."""
    for name in WARMUP_KEYS:
        value = config.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
            return int(value)
    return None


class LrZero(Rule):
    """The learning rate is exactly 0 after step 0.

    Reads `lr`, `train/lr`, `optim/lr`. Fires (critical) after 2 consecutive points
    at exactly 0 at steps > 0: one zero is what a schedule that decays to 0 shows at
    its last step. Clears after 3 non-zero points.
    """

    id = "lr_zero"
    level = "critical"
    keys = LR_KEYS
    history = 4
    fire_after = 2
    action = ("Nothing is being learned: check the scheduler (warmup from 0 that never "
              "advances because scheduler.step() is not called, a decay whose total "
              "steps are set too low so it reached 0 early) and the LR in the optimizer's "
              "param groups.")

    def check(self, ctx: Context) -> CheckResult:
        zero = [k for k in LR_KEYS if ctx.new.get(k) == 0]
        if ctx.step <= 0 or not any(k in ctx.new for k in LR_KEYS):
            return HOLD
        if not zero:
            return None
        return Finding(f"{zero[0]} is exactly 0 at step {ctx.step}: the optimizer does not "
                       "move the weights")


class LrFrozenWarmup(Rule):
    """The learning rate does not change during a configured warmup.

    Needs `warmup_steps` (or num_warmup_steps, lr_warmup_steps, warmup) >= 1 in the
    run's config. Fires (warning) when at least 5 LR points at steps 1..warmup_steps
    all have the same value: a warmup ramps, so a constant LR means the scheduler is
    not being stepped (or the warmup is not applied). Clears when the LR moves
    (2 checks with a change).
    """

    id = "lr_frozen_warmup"
    keys = LR_KEYS
    history = 16
    min_points = 5
    clear_after = 2
    action = ("Call scheduler.step() after each optimizer.step() (or hand the scheduler "
              "to your trainer), and check that the warmup is configured on the scheduler "
              "actually in use.")

    def check(self, ctx: Context) -> CheckResult:
        warmup = warmup_steps(ctx.config)
        key = next((k for k in LR_KEYS if k in ctx.new), None)
        if warmup is None or key is None:
            return HOLD
        steps, values = ctx.tail(key)
        if ctx.active():
            changed = values.size >= 2 and values[-1] != values[-2]
            return None if changed else Finding(f"{key} still at {num(values[-1])}")
        if ctx.step > warmup:
            return HOLD  # warmup is over; judged only inside it
        inside = values[(steps >= 1) & (steps <= warmup)]
        if inside.size < self.min_points or inside.min() != inside.max():
            return None
        return Finding(f"{key} has stayed at {num(inside[0])} for {inside.size} points "
                       f"(steps {int(steps[steps >= 1][0])}-{ctx.step}) although "
                       f"warmup_steps={warmup} is configured: the warmup is not ramping")


# Names loops use when they log a GradScaler's scale (scaler.get_scale()).
LOSS_SCALE_KEYS = ("loss_scale", "train/loss_scale", "amp/loss_scale", "grad_scale",
                   "scaler/scale")


class LossScaleCollapse(Rule):
    """The fp16 loss scale keeps halving: nearly every step overflows and is skipped.

    Reads a logged GradScaler scale (`loss_scale`, `train/loss_scale`, `amp/loss_scale`,
    `grad_scale`, `scaler/scale`). A GradScaler halves its scale at each step whose
    gradients overflow (and skips that step) and doubles it after 2,000 clean steps:
    a healthy run settles within a few halvings of its initial 2^16. Fires (critical)
    when the scale has fallen 256x (8 halvings) below its maximum over its last 20
    points, or below 1. Clears when it is back within 16x of that maximum.
    """

    id = "loss_scale_collapse"
    level = "critical"
    keys = LOSS_SCALE_KEYS
    history = 24
    window = 20
    collapse = 256.0  # fall from the recent maximum
    recover = 16.0
    action = ("Mixed-precision overflow on every step: the scaler skips them, so nothing "
              "trains. Train in bf16 instead of fp16 if the hardware has it; otherwise find "
              "the op that overflows (hidden/*/absmax, the first non-finite module), keep "
              "it in fp32 (autocast exclusions, an fp32 softmax or norm), and lower the "
              "learning rate.")

    def check(self, ctx: Context) -> CheckResult:
        key = next((k for k in LOSS_SCALE_KEYS if k in ctx.new), None)
        if key is None:
            return HOLD
        values = [v for v in ctx.recent(key, self.window) if v == v]
        scale = ctx.new[key]
        top = max(values) if values else scale
        if not (scale > 0) or not (top > 0):
            return None
        limit = self.recover if ctx.active() else self.collapse
        if top / scale < limit and scale >= 1.0:
            return None
        return Finding(f"{key} fell to {num(scale)} at step {ctx.step}, {num(top / scale)}x "
                       f"below its maximum {num(top)} over the last {len(values)} points: "
                       "the optimizer step is being skipped for overflow")


# Config names for decoupled weight decay (AdamW, HF TrainingArguments, Lightning).
WEIGHT_DECAY_KEYS = ("weight_decay", "wd", "optim_weight_decay")


class WeightDecayTooStrong(Rule):
    """Weight decay times learning rate shrinks the weights by 1% or more at every step.

    Decoupled weight decay (AdamW) multiplies every weight by (1 - lr x weight_decay)
    at each step. Usual settings give 1e-6 to 1e-4 per step; at >= 0.01 the weights
    lose half their size every 70 steps, faster than training can rebuild them, so the
    model stays near zero and learns almost nothing (a weight_decay of 50 typed for
    0.05 does that). Needs `weight_decay` (or `wd`) in the run's config and a logged
    learning rate. Critical, fires at the first such step; clears when lr x
    weight_decay falls below 0.005 for 3 points (a decayed schedule).
    """

    id = "weight_decay_too_strong"
    level = "critical"
    keys = LR_KEYS
    history = 4
    fire_shrink = 0.01  # per step
    clear_shrink = 0.005
    action = ("Check the weight decay: AdamW's weight_decay is multiplied by the learning "
              "rate at every step, so values around 0.01-0.1 are the usual range; lower it "
              "(a misplaced decimal point, or an L2 coefficient meant for SGD, gives this).")

    def check(self, ctx: Context) -> CheckResult:
        decay = next((ctx.config.get(k) for k in WEIGHT_DECAY_KEYS
                      if isinstance(ctx.config.get(k), (int, float))
                      and not isinstance(ctx.config.get(k), bool)), None)
        key = next((k for k in LR_KEYS if k in ctx.new), None)
        if decay is None or key is None or not decay > 0:
            return HOLD
        shrink = ctx.new[key] * decay
        limit = self.clear_shrink if ctx.active() else self.fire_shrink
        if not shrink >= limit:
            return None
        return Finding(f"weight_decay {num(decay)} x {key} {num(ctx.new[key])} at step "
                       f"{ctx.step} shrinks every weight by {num(100 * shrink)}% a step: "
                       f"half its size in {_half_life(shrink):.0f} steps")


def _half_life(shrink: float) -> float:
    import math

    return math.log(0.5) / math.log(1.0 - shrink) if 0 < shrink < 1 else 0.0
