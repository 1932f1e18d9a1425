"""Nothing is learning: zero or detached gradients, a frozen model, LoRA B still zero."""

from __future__ import annotations

import re

from trainspect.alerts.rule import HOLD, CheckResult, Context, Finding, Rule
from trainspect.alerts.stats import num

_LORA_DELTA = re.compile(r"^lora/([^/]+)/([^/]+)$")  # lora/<layer>/<block>: ||dW||_F


class NoGradient(Rule):
    """No gradient reaches the parameters: detached loss, zero gradients, a frozen model.

    Fires (critical) after 2 consecutive checks where `grad/detached` == 1 (the
    loss has no graph), `grad/zero_frac` == 1 (every gradient is exactly zero), or
    `grad/norm` == 0. One check is not enough: a skipped or accumulating step can
    show zeros once. Clears after 3 checks with gradients. Quiet while the gradient
    probe's own `grads.detached` alert is out.
    """

    id = "no_gradient"
    level = "critical"
    keys = ("grad/norm", "grad/zero_frac", "grad/detached")
    history = 8
    fire_after = 2
    covered_by = {"*": ("grads.detached",)}
    action = ("Check that the loss is attached to the graph (no .item(), .detach() or "
              "torch.no_grad() around the forward), that the parameters to train have "
              "requires_grad=True (LoRA adapters enabled, base model not fully frozen), "
              "and that the optimizer holds those parameters.")

    def check(self, ctx: Context) -> CheckResult:
        why = []
        if ctx.new.get("grad/detached") == 1:
            why.append("grad/detached = 1: the loss is not connected to the parameters")
        if ctx.new.get("grad/zero_frac") == 1:
            why.append("grad/zero_frac = 1: every parameter gradient is exactly zero")
        if ctx.new.get("grad/norm") == 0:
            why.append("grad/norm = 0")
        if not why:
            return None
        return Finding(f"no gradient at step {ctx.step}: {'; '.join(why)}")


class LoraBZero(Rule):
    """LoRA adapters that still change nothing after `after_steps` steps.

    From step 100 on: `lora/b_zero_layers` > 0 or `lora/b_zero_frac` > 0 (adapters
    whose B matrix is still all zero, so B @ A = 0) fires a warning; every
    `lora/<layer>/<block>` update norm ||dW||_F being exactly 0 fires critical (no
    adapter moved at all). Clears after 3 checks without it. Quiet while the LoRA
    probe's own `lora.b_zero` alert is out.
    """

    id = "lora_b_zero"
    keys = ("lora/*",)
    history = 4
    after_steps = 100
    covered_by = {"*": ("lora.b_zero",)}
    action = ("The adapters are not training: check that the LoRA parameters are in the "
              "optimizer and require grad, that the learning rate is not 0, that the "
              "adapter is active (not disabled or merged), and that the loss reaches "
              "the adapted layers.")

    def check(self, ctx: Context) -> CheckResult:
        if ctx.step < self.after_steps:
            return HOLD
        deltas = {k: ctx.last(k) for k in ctx.keys("lora/*") if _LORA_DELTA.match(k)}
        if deltas and all(v == 0 for v in deltas.values()):
            return Finding(f"every LoRA update norm is 0 at step {ctx.step} "
                           f"({len(deltas)} layer blocks): no adapter has moved",
                           level="critical")
        for key in ("lora/b_zero_layers", "lora/b_zero_frac"):
            zero_b = ctx.new.get(key)
            if zero_b is not None and zero_b > 0:
                return Finding(f"{key} = {num(zero_b)} at step {ctx.step}: those adapters' "
                               "B matrices are still all zero, so they change nothing")
        return None
