"""Training blowing up: non-finite values, loss spikes and divergence, gradient explosions,
activations growing towards overflow."""

from __future__ import annotations

import math
from abc import abstractmethod

import numpy as np

from trainspect.alerts.rule import HOLD, CheckResult, Context, Finding, Rule
from trainspect.alerts.rules.common import LOSS_KEYS, main_loss, median
from trainspect.alerts.stats import num, pct, robust_z


class NonFinite(Rule):
    """Loss or gradient norm is NaN or inf; names the first module that went non-finite.

    Subjects: `loss` (any of `loss`, `loss/total`, `train/loss`) and `grad/norm` fire
    at the first non-finite value: critical, except a non-finite loss between finite
    ones with a finite gradient norm, which is a warning until the main (per-step)
    loss is non-finite twice in a row (a batch whose mean loss is 0/0 because no token
    is supervised gives exactly that, and the model is fine). `hidden` fires when a
    `hidden/<module>/nonfinite` counter is > 0 (critical if the loss or gradient is
    non-finite too, else warning) and names the first module: the one whose counter
    became > 0 at the earliest step (ties in the order modules were first logged), or
    the module an alert from the hidden-state probe names; before any counter says so,
    the module whose `hidden/<module>/absmax` grew most (at least 10x its earlier
    median) is named as where the activations blew up. Each clears after 3
    checks with finite values (zero counters). The gradient and hidden subjects
    stay quiet while the gradient / hidden-state probes' own alerts (grads.nonfinite,
    hidden.nonfinite) are out; the loss alert quotes the hidden-state probe.
    """

    id = "nonfinite"
    level = "critical"
    keys = (*LOSS_KEYS, "grad/norm", "hidden/*/nonfinite", "hidden/*/absmax")
    triggers = (*LOSS_KEYS, "grad/norm", "hidden/*/nonfinite")
    history = 8
    covered_by = {"grad/norm": ("grads.nonfinite",), "hidden": ("hidden.nonfinite",)}
    action = ("Stop and restart from the last good checkpoint with the learning rate cut "
              "10x and gradient clipping on (max_norm=1.0); check the batch at this step. "
              "If a module is named, inspect it first: fp16 overflow there (switch to "
              "bf16), a division or log of 0, or a norm layer on empty input.")

    def __init__(self) -> None:
        self._first_bad: dict[str, int] = {}  # module -> first step its counter was > 0
        self._loss_streak = 0  # consecutive steps with a non-finite main loss
        self._loss_step: int | None = None  # the step last counted (checked once or twice)

    def check(self, ctx: Context) -> CheckResult:
        out: dict[str, Finding | None] = {}
        loss_keys = [k for k in LOSS_KEYS if k in ctx.new]
        if loss_keys:
            bad = [k for k in loss_keys if not math.isfinite(ctx.new[k])]
            main = main_loss(ctx)
            if main in ctx.new and ctx.step != self._loss_step:  # the per-step loss only:
                self._loss_step = ctx.step  # window means (loss/total) mix steps
                self._loss_streak = 0 if math.isfinite(ctx.new[main]) else \
                    self._loss_streak + 1
            out["loss"] = self._loss_finding(ctx, bad[0]) if bad else None
        if "grad/norm" in ctx.new:
            ok = math.isfinite(ctx.new["grad/norm"])
            out["grad/norm"] = None if ok else self._finding(ctx, "grad/norm", "grad/norm")
        hidden = [k for k in ctx.new if k.startswith("hidden/") and k.endswith("/nonfinite")]
        if hidden:
            if all(ctx.new[k] == 0 for k in hidden):
                self._first_bad.clear()  # all clean again: a later episode starts afresh
            for key in hidden:
                value = ctx.new[key]
                if not math.isfinite(value) or value > 0:
                    self._first_bad.setdefault(key[len("hidden/"):-len("/nonfinite")], ctx.step)
            counts = {k: ctx.new[k] for k in hidden}
            out["hidden"] = (self._hidden_finding(ctx, counts)
                             if any(not (v <= 0) for v in counts.values()) else None)
        return out or HOLD

    def _loss_finding(self, ctx: Context, key: str) -> Finding:
        grad = ctx.last("grad/norm")
        grad_bad = grad is not None and not math.isfinite(grad)
        if self._loss_streak >= 2 or grad_bad or self._first_bad:
            return self._finding(ctx, key, "loss")
        finding = self._finding(ctx, key, "loss")
        return Finding(finding.message + "; the loss before it is finite and so is the "
                       "gradient norm: one batch gave a non-finite loss (no supervised "
                       "token in it, a mean over 0 tokens, or an extreme value)",
                       subject="loss", level="warning")

    def where(self, ctx: Context) -> str:
        """'; first non-finite module: X' from the counters, plus what the probe said."""
        parts = []
        if self._first_bad:
            first = min(self._first_bad, key=lambda m: self._first_bad[m])  # stable: first logged
            parts.append(f"first non-finite module: {first}")
        else:
            grown = self._grown(ctx)
            if grown:
                parts.append(f"activations grew most in {grown[0]} ({num(grown[1])}x their "
                             "earlier median) before it")
        probe = ctx.alerts(rule="hidden.")
        if probe:
            parts.append(f"hidden-state probe: {probe[0].message}")
        return "".join(f"; {p}" for p in parts)

    @staticmethod
    def _grown(ctx: Context) -> tuple[str, float] | None:
        """The module whose latest finite absmax is the most above its earlier median, when
        at least 10x."""
        best = None
        for key in ctx.keys("hidden/*/absmax"):
            values = [v for v in ctx.values(key) if math.isfinite(v)]
            if len(values) < 4:
                continue
            base = median(values[:-1])
            if base > 0 and values[-1] / base >= 10 and (best is None or
                                                         values[-1] / base > best[1]):
                best = (key[len("hidden/"):-len("/absmax")], values[-1] / base)
        return best

    def _finding(self, ctx: Context, key: str, subject: str) -> Finding:
        steps, values = ctx.tail(key)
        good = np.flatnonzero(np.isfinite(values))
        before = (f" (last finite value {num(values[good[-1]])} at step {steps[good[-1]]})"
                  if good.size else " (no finite value yet)")
        return Finding(f"{key} is {num(ctx.new[key])} at step {ctx.step}{before}"
                       f"{self.where(ctx)}", subject=subject)

    def _hidden_finding(self, ctx: Context, counts: dict[str, float]) -> Finding:
        bad = sorted(self._first_bad, key=lambda m: self._first_bad[m])
        first = bad[0]
        count = counts.get(f"hidden/{first}/nonfinite", math.nan)
        others = f"; also in {', '.join(bad[1:4])}" if len(bad) > 1 else ""
        loss_bad = any(not math.isfinite(ctx.new[k]) for k in (*LOSS_KEYS, "grad/norm")
                       if k in ctx.new)
        probe = ctx.alerts(rule="hidden.")
        said = f" (hidden-state probe: {probe[0].message})" if probe else ""
        return Finding(
            f"non-finite activations first appeared in module {first} at step "
            f"{self._first_bad[first]} (hidden/{first}/nonfinite = {num(count)}){others}{said}",
            subject="hidden", level="critical" if loss_bad else "warning")


class _SpikeRule(Rule):
    """A value far above its recent window: robust z-score AND ratio to the window mean."""

    window = 50  # points before the current one that form the reference
    min_points = 20  # no verdict with fewer finite points in the window
    z_fire = 6.0  # robust z-score (median/MAD) at or above which a point is a spike
    ratio_fire = 1.5  # ... and the point must be at least this multiple of the window mean
    history = 64
    clear_after = 20  # spike alerts clear after this many spike-free points

    @abstractmethod
    def key(self, ctx: Context) -> str | None:
        """The metric this rule watches (None: not logged yet)."""

    def check(self, ctx: Context) -> CheckResult:
        key = self.key(ctx)
        if key is None or key not in ctx.new:
            return HOLD
        x = ctx.new[key]
        if not math.isfinite(x):
            return HOLD  # NonFinite's business
        previous = ctx.recent(key, self.window + 1)[:-1]
        total = sum(previous)
        if not math.isfinite(total):  # rare: drop the NaN/inf points
            previous = [v for v in previous if math.isfinite(v)]
            total = sum(previous)
        if len(previous) < self.min_points:
            return None
        mean = total / len(previous)
        ratio = x / mean if mean > 0 else math.inf  # the ratio test needs a positive level
        if ratio < self.ratio_fire:  # the cheap test first: most steps stop here
            return None
        window = np.array(previous)
        z = robust_z(x, window)
        if z >= self.z_fire:
            return Finding(
                f"{key} {num(x)} at step {ctx.step} is {num(z)} robust sd above the median "
                f"{num(float(np.median(window)))} of the previous {window.size} points "
                f"({num(ratio)}x their mean)")
        return None


class LossSpike(_SpikeRule):
    """The training loss jumps far above its recent level.

    Reads the run's main loss (the first of `loss`, `loss/total`, `train/loss` it
    logs). A point is a spike when its robust z-score against the previous 50 points
    (median and MAD x 1.4826, at least 20 finite points) is >= 6 and it is >= 1.5x
    the mean of those points. Warning. One alert covers a burst of spikes: it clears
    after 20 spike-free points.
    """

    id = "loss_spike"
    keys = LOSS_KEYS
    action = ("Look at the batch at this step (bad or mislabelled data, an extreme "
              "length); if spikes repeat, lower the learning rate or lengthen warmup and "
              "clip gradients (max_norm=1.0); restart from a checkpoint before the first "
              "spike if the loss does not come back down.")

    def key(self, ctx: Context) -> str | None:
        return main_loss(ctx)


class GradExplosion(_SpikeRule):
    """The gradient norm explodes.

    Reads `grad/norm`. A point explodes when its robust z-score against the previous
    50 points (at least 20) is >= 6 and it is >= 5x their mean. Gradient norms are
    spikier than losses: pre-clip norms of healthy small-batch training swing up to
    2x their recent mean (the healthy runs of benchmarks/doctor peak at 1.94x) and up
    to 4x in a healthy run an examiner reported as a false alarm; with clipping on,
    such swings are harmless, so only a jump clear of them counts. Warning. Clears
    after 20 calm points.
    """

    id = "grad_explosion"
    keys = ("grad/norm",)
    ratio_fire = 5.0
    action = ("Clip gradients (torch.nn.utils.clip_grad_norm_, max_norm=1.0), lower the "
              "learning rate, and check the batch at this step; in fp16, check the loss "
              "scaler. If the loss spikes at the same steps, restart from the checkpoint "
              "before.")

    def key(self, ctx: Context) -> str | None:
        return "grad/norm"


class LossDivergence(Rule):
    """The training loss climbs well above the best level it had reached, and stays there.

    Reads the run's main loss (the first of `loss`, `loss/total`, `train/loss`). Its
    level is the median of the last 10 points (one batch is noisy); the best level is
    the lowest such median after the first 20 points. Fires when the level has been
    above the best by more than 25% of it AND by more than 4 standard deviations of a
    10-point median (1.25 x MAD x 1.4826 / sqrt(10) over the previous 50 points) for 5
    checks in a row. Healthy training keeps its loss near its best: a level 25% above
    it means the optimisation went backwards (a learning rate too high, a data or loss
    change at that step); a spike that comes back is `loss_spike`'s. Warning. Clears
    after 10 checks back within those bounds.
    """

    id = "loss_divergence"
    keys = LOSS_KEYS
    history = 64
    fire_after = 5
    clear_after = 10
    window = 10  # points in the level's median
    burn_in = 20  # points before a best level is kept
    rise = 0.25  # of the best level
    noise_sd = 4.0  # standard deviations of the level's median
    action = ("The loss went backwards: if the learning rate was raised or the warmup ended "
              "here, lower the peak learning rate (2-10x) and clip gradients; if the data or "
              "the loss changed at this step, look at those batches. Restart from the "
              "checkpoint before the rise if it does not come back down.")

    def __init__(self) -> None:
        self._best: tuple[float, int] | None = None
        self._count = 0

    def check(self, ctx: Context) -> CheckResult:
        key = main_loss(ctx)
        if key is None or key not in ctx.new or not math.isfinite(ctx.new[key]):
            return HOLD
        self._count += 1
        level = median(ctx.recent(key, self.window))
        if self._count < self.burn_in or not math.isfinite(level):
            return None
        best = self._best
        if best is None or level < best[0]:
            self._best = best = (level, ctx.step)
        if level <= best[0] + self.rise * abs(best[0]) and not ctx.active():
            return None  # the cheap test first: healthy steps stop here
        earlier = [v for v in ctx.recent(key, 60)[:-self.window] if math.isfinite(v)]
        if len(earlier) < self.window:
            return None
        centre = median(earlier)
        spread = median([abs(v - centre) for v in earlier]) * 1.4826
        noise = 1.25 * spread / math.sqrt(self.window)
        margin = max(self.rise * abs(best[0]), self.noise_sd * noise)
        if level <= best[0] + margin:
            return None
        return Finding(
            f"{key} has risen to {num(level)} (median of the last {self.window} points at "
            f"step {ctx.step}) from its best {num(best[0])} at step {best[1]}: "
            f"{pct(level / best[0] - 1) if best[0] > 0 else 'far'} above it")


class ActivationGrowth(Rule):
    """A module's activations grow by orders of magnitude: overflow is coming.

    Per module, `hidden/<module>/absmax` (the largest |activation| in the window)
    against the median of its previous 5 finite points (at least 3). Fires when it is
    10x that median or more. Trained activations drift by small factors between
    windows; 10x in one window is exponential growth (a learning rate too high, an
    unnormalised residual, a scale that compounds), which overflows bf16 or fp16 next
    and then turns non-finite (that is `nonfinite`'s). Names the module; the first
    module to grow is where to look. Warning; clears after 3 windows without it.
    """

    id = "activation_growth"
    keys = ("hidden/*/absmax",)
    history = 8
    window = 5
    min_points = 3
    growth = 10.0
    action = ("Activations are blowing up in this module: lower the learning rate, clip "
              "gradients (max_norm=1.0), and check the module's scale and normalisation "
              "(a missing norm, a residual or attention logits that compound); in fp16 or "
              "bf16 it will overflow to inf next.")

    def check(self, ctx: Context) -> CheckResult:
        out: dict[str, Finding | None] = {}
        for key in ctx.new:
            if not (key.startswith("hidden/") and key.endswith("/absmax")):
                continue
            module = key[len("hidden/"):-len("/absmax")]
            x = ctx.new[key]
            previous = [v for v in ctx.recent(key, self.window + 1)[:-1] if math.isfinite(v)]
            if not math.isfinite(x) or len(previous) < self.min_points:
                out[module] = None
                continue
            base = median(previous)
            out[module] = Finding(
                f"the largest activation of {module} is {num(x)} in the window ending at step "
                f"{ctx.step}, {num(x / base)}x the median {num(base)} of its previous "
                f"{len(previous)} windows", subject=module) if base > 0 and \
                x >= self.growth * base else None
        return out or HOLD
