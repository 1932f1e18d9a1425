"""Nothing is learning: zero or detached gradients, a frozen model (weights that never
move are `updates.py`'s)."""

from __future__ import annotations

from trainspect.alerts.rule import CheckResult, Context, Finding, Rule


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
