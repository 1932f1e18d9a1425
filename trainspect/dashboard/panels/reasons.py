"""Why a panel is empty, told from what the run did record, so the page can say it.

An empty panel is rarely "no data yet": token statistics without a confidence mean
the model never returned logits (a fused LM head, e.g. TRL's SFTTrainer, gives
per-token log-probabilities instead), so there is nothing to sample or calibrate;
no token statistics at all mean `run.observe` was never called (or rejected every
batch, which an alert says); no `grad/*` or `hidden/*` mean `run.watch` was not on.
Each function returns the sentence for one panel, naming the call that fills it.
"""

from __future__ import annotations

from trainspect.dashboard.panels.names import streams, token_key
from trainspect.store.reader import RunView

WITH_LOGITS = ("conf", "ece")  # only the logits pass writes these


def fused_streams(keys: list[str]) -> list[str]:
    """Streams with token statistics that could only come from log-probabilities."""
    metrics: dict[str, set[str]] = {}
    for key in keys:
        parsed = token_key(key)
        if parsed is not None and parsed.group == "":
            metrics.setdefault(parsed.stream, set()).add(parsed.metric)
    return [s for s in streams(keys) if not metrics.get(s, set()) & set(WITH_LOGITS)]


def _alert(view: RunView, rule: str, contains: str) -> dict | None:
    """The first fired alert of `rule` whose message contains `contains`."""
    for alert in view.alerts():
        if alert["rule"] == rule and contains in alert["message"] and alert["state"] != "cleared":
            return alert
    return None


def _first_flush(view: RunView) -> str:
    every = view.meta.get("log_every")
    return f"the first flush (every {every} steps)" if every else "the first flush"


def not_observed(view: RunView, what: str) -> str:
    """`what` needs run.observe: say whether it was rejected, failed, pending or not called."""
    rejected = _alert(view, "bad_input", "observe(")
    if rejected is not None:
        return (f"No {what}: run.observe rejected its input at step {rejected['step']}: "
                f"{rejected['message']} ({rejected['action']})")
    failed = _alert(view, "probe_failed", "the tokens probe")
    if failed is not None:
        return f"No {what}: {failed['message']} (step {failed['step']})."
    how = ("call run.observe(step, logits=..., labels=...) in the loop; the Hugging Face and "
           "Lightning callbacks call it from the model's forward when the batch has labels")
    if view.status == "running":
        return f"No {what} yet: they arrive with {_first_flush(view)} once run.observe is " \
               f"called ({how})."
    return f"No {what}: run.observe was never called in this run ({how})."


def no_logits(what: str, stream: str) -> str:
    return (f"No {what}: the model's training forward returned no logits for stream "
            f"{stream!r} (a fused LM head, as in TRL's SFTTrainer, computes the loss from "
            "per-token log-probabilities), and this needs the logits. Accuracy, CE and "
            "entropy are still recorded from the log-probabilities (Token metrics).")


def predictions(view: RunView) -> str:
    failed = _alert(view, "probe_failed", "the samples probe")
    if failed is not None:
        return f"No prediction samples: {failed['message']} (step {failed['step']})."
    keys = view.keys()
    if not streams(keys):
        return not_observed(view, "prediction samples")
    fused = fused_streams(keys)
    if fused:
        return no_logits("prediction samples", fused[0])
    return ("No prediction samples although run.observe is called: samples are off "
            "(ts.init(samples_every=0) or num_samples=0).")


def calibration(view: RunView) -> str:
    keys = view.keys()
    if not streams(keys):
        return not_observed(view, "calibration data")
    fused = fused_streams(keys)
    if fused:
        return no_logits("calibration data", fused[0])
    return "No calibration data yet: it is written with each flush of run.observe's statistics."


def tokens(view: RunView) -> str:
    return not_observed(view, "token statistics")


def fixed_eval(view: RunView, what: str = "fixed eval") -> str:
    failed = next((a for a in view.alerts() if "fixed eval could not run" in a["message"]
                   or (a["rule"] == "probe_failed" and "eval" in a["message"])), None)
    if failed is not None:
        return f"No {what}: {failed['message']} (step {failed['step']})."
    how = ("run.evaluate(model, ts.FixedEval(...), step=...) runs it; the Hugging Face "
           "callback runs it when the Trainer evaluates, or every fixed_eval_every steps, "
           "once given fixed_eval=")
    if view.status == "running":
        return f"No {what} yet: none has run so far ({how})."
    return f"This run ran no {what} ({how})."


def watched(view: RunView, what: str, prefix: str) -> str:
    """`what` (a `prefix` family of run.watch) is missing: watch off, or nothing to see."""
    keys = view.keys()
    watching = any(k.startswith(("grad/", "hidden/", "lora/", "speed/")) for k in keys)
    if not watching:
        how = ("call run.watch(model) before training; the Hugging Face and Lightning "
               "callbacks do unless watch=False")
        if view.status == "running":
            return f"No {what} yet: it arrives with {_first_flush(view)} once watched ({how})."
        return f"No {what}: run.watch was not called in this run ({how})."
    if prefix == "lora/":
        return ("No LoRA layers: run.watch found no LoRA adapters in this model, and the "
                "weight change of a full fine-tune is off (watch(full_deltas=True) turns it "
                "on); see Gradients instead.")
    return f"No {what}: run.watch is on, but this family was switched off or saw nothing."
