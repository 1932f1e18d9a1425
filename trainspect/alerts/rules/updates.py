"""Weights that never move: what the optimizer should have changed, it did not.

The LoRA / weight-delta probe measures how far each trained weight has moved since
the watch began (`lora/<layer>/<block>`, `delta/<layer>/<block>`, `lora/b_zero_frac`);
the gradient probe says whether gradients reached those layers (`grad/<layer>/norm`,
`grad/norm`, `grad/detached`). Together they tell the cause apart: no gradient at
all (a detached loss), gradients without updates (an optimizer holding other
tensors), or adapters that get no gradient (scaling 0, off the loss path).
"""

from __future__ import annotations

import re

from trainspect.alerts.rule import HOLD, CheckResult, Context, Finding, Rule
from trainspect.alerts.stats import num, pct

_CELL = re.compile(r"^(lora|delta)/([^/]+)/([^/]+)$")  # lora/<layer>/<block>: ||dW||_F
_GRAD = re.compile(r"^grad/(.+)/norm$")


class WeightsFrozen(Rule):
    """Trained weights that have not moved at all since the start.

    Judged from the second flush window on (every trainable weight moves at the
    first optimizer step with a non-zero learning rate and gradient, so after a
    whole window an exactly-zero update is no accident), at each window's
    `lora/total` / `delta/total`. Fires (critical) when no watched weight moved (every
    `lora/<layer>/<block>` and `delta/<layer>/<block>` is exactly 0), or when some LoRA
    adapters' B is still exactly zero (`lora/b_zero_frac` > 0). The cause it names:
    - no gradient was ever recorded, or `grad/detached` = 1: nothing reached the
      parameters (a forward under torch.no_grad(), a detached loss);
    - gradients reached the layers that did not move (`grad/<layer>/norm` > 0): the
      optimizer does not hold those tensors (built before get_peft_model, from a copy
      of the model, or from a parameter list without the adapters);
    - the unmoved adapters' layers got exactly zero gradient while others did: LoRA
      scaling 0 (lora_alpha=0), lora_dropout=1.0 or adapters disabled when all of them
      are affected, else adapters on modules off the loss path (target_modules).
    Quiet while the learning rate is 0 (`lr_zero` says so) or the gradient is exactly
    0 everywhere (`no_gradient`). Clears after 3 windows in which everything moved.
    """

    id = "weights_frozen"
    level = "critical"
    keys = ("lora/*", "delta/*", "grad/*")
    triggers = ("lora/total", "delta/total")
    history = 4
    covered_by = {"*": ("lr_zero", "no_gradient")}
    after_windows = 2
    action = ""

    def __init__(self) -> None:
        self._windows = 0  # flush windows seen

    def check(self, ctx: Context) -> CheckResult:
        self._windows += 1
        if self._windows < self.after_windows:
            return HOLD
        cells: dict[str, dict[str, float]] = {"lora": {}, "delta": {}}
        for key in ctx.keys("lora/*") + ctx.keys("delta/*"):
            m = _CELL.match(key)
            value = ctx.last(key)
            if m and m.group(2) != "total" and value is not None:
                layer = cells[m.group(1)]
                layer[m.group(2)] = layer.get(m.group(2), 0.0) + value
        moved = {layer for family in cells.values() for layer, v in family.items() if v > 0}
        watched = {layer for family in cells.values() for layer in family}
        b_zero = ctx.last("lora/b_zero_frac") or 0.0
        if not watched or (moved == watched and b_zero == 0):
            return None
        grads = {m.group(1): ctx.last(k) for k in ctx.keys("grad/*")
                 if (m := _GRAD.match(k)) and ctx.last(k) is not None}
        seen = ctx.has("grad/norm") or ctx.has("grad/detached")
        if not moved:
            return self._nothing_moved(ctx, watched, grads, seen)
        if b_zero > 0:
            return self._adapters(ctx, b_zero, cells["lora"], grads)
        return None  # a layer with a zero delta but no zero B: rounding, too weak to say

    def _nothing_moved(self, ctx: Context, watched: set[str], grads: dict[str, float],
                       seen: bool) -> Finding | None:
        where = f"no watched weight has moved by step {ctx.step} ({len(watched)} layers)"
        if not seen or ctx.last("grad/detached") == 1:
            return Finding(
                f"{where} and no gradient reached them: the loss is not connected to the "
                "parameters", action=(
                    "Compute the loss from a forward pass with gradients on: no "
                    "torch.no_grad() or inference_mode() around the training forward, no "
                    ".detach() or .item() between the model output and the loss (a "
                    "loss.requires_grad_() that silences the backward error hides exactly "
                    "this)."))
        total = ctx.last("grad/norm")
        if total is None or total == 0:
            return None  # no_gradient's
        return Finding(
            f"{where} although gradients reach them (grad/norm {num(total)}): the optimizer "
            "updates other tensors", action=(
                "Build the optimizer from the model being trained, after get_peft_model and "
                "after moving it to its device: AdamW(p for p in model.parameters() if "
                "p.requires_grad). An optimizer made from a copy (deepcopy, a reloaded "
                "model) or from a stale parameter list never changes this model."))

    def _adapters(self, ctx: Context, b_zero: float, lora: dict[str, float],
                  grads: dict[str, float]) -> Finding:
        still = sorted(layer for layer, v in lora.items() if v == 0)
        layers = still or sorted(lora)
        dead = [layer for layer in layers if grads.get(layer) == 0]
        share = f"{pct(b_zero)} of the LoRA adapters"
        names = ", ".join(layers[:4]) + (", ..." if len(layers) > 4 else "")
        if dead and len(dead) == len(layers) and b_zero >= 1 and any(
                v > 0 for k, v in grads.items() if k not in lora):
            return Finding(
                f"{share} still have B = 0 at step {ctx.step} and their layers get exactly "
                f"zero gradient while other parameters train: the adapters' path is "
                "multiplied by 0", action=(
                    "Check the LoRA config: lora_alpha must be > 0 (the update is scaled by "
                    "lora_alpha / r), lora_dropout must be < 1 (1.0 zeroes the adapters' "
                    "input), and the adapter must be enabled and active (set_adapter, not "
                    "inside disable_adapter())."))
        if dead:
            return Finding(
                f"{share} still have B = 0 at step {ctx.step}; their layers ({names}) get "
                "exactly zero gradient: those adapted modules are not on the loss path",
                action=("Check target_modules: the adapters on these modules never "
                        "influence the loss (a head or branch the forward does not use, or "
                        "an output that is detached); target the modules the loss goes "
                        "through."))
        return Finding(
            f"{share} still have B = 0 at step {ctx.step} although gradients reach their "
            f"layers ({names}): the optimizer does not update them", action=(
                "Build the optimizer after get_peft_model from every trainable parameter "
                "(AdamW(p for p in model.parameters() if p.requires_grad)); a parameter "
                "list collected earlier, or one that only names some modules, leaves the "
                "adapters out."))
