"""Batches that teach nothing: an empty loss mask, no supervised tokens."""

from __future__ import annotations

from trainspect.alerts.rule import CheckResult, Context, Finding, Rule
from trainspect.alerts.rules.common import stream_of
from trainspect.alerts.stats import num


class EmptySupervision(Rule):
    """Batches with an empty loss mask, or no supervised tokens at all.

    Per stream, from the token probe's `<stream>/supervised_tokens` and
    `<stream>/empty_mask_batches` (per flush window). Critical when
    supervised_tokens == 0 (the window trained on nothing); warning when
    empty_mask_batches > 0 (some batches had every label -100). Fires at once;
    clears after 3 windows with supervised tokens and no empty batch. A window whose
    supervised rows were left out for NaN or inf logits (`<stream>/nonfinite_rows` > 0)
    is not an empty mask: the labels are fine and the non-finite rules say what broke.
    """

    id = "empty_supervision"
    keys = ("*/empty_mask_batches", "*/supervised_tokens", "*/nonfinite_rows")
    history = 8
    action = ("Check the data formatting: the chat template must match the model, "
              "prompt masking must leave the response labelled (not every label -100), "
              "and truncation (max_length) must not cut the responses off. Print one "
              "batch's labels to confirm.")

    def check(self, ctx: Context) -> CheckResult:
        streams = {s for k in ctx.new if (s := stream_of(k, "supervised_tokens")
                                          or stream_of(k, "empty_mask_batches"))}
        out: dict[str, Finding | None] = {}
        for stream in sorted(streams):
            tokens = ctx.new.get(f"{stream}/supervised_tokens")
            empty = ctx.new.get(f"{stream}/empty_mask_batches")
            if ctx.new.get(f"{stream}/nonfinite_rows"):  # NaN logits, not missing labels
                out[stream] = None
            elif tokens is not None and tokens == 0:
                extra = f" ({_batches(empty)} had an empty loss mask)" if empty else ""
                out[stream] = Finding(
                    f"{stream}: no supervised tokens at all in the window ending at step "
                    f"{ctx.step}{extra}: every label is masked", subject=stream,
                    level="critical")
            elif empty is not None and empty > 0:
                have = f" ({num(tokens)} supervised tokens in the rest)" if tokens else ""
                out[stream] = Finding(
                    f"{stream}: {_batches(empty)} in the window ending at step {ctx.step} "
                    f"had an empty loss mask{have}", subject=stream)
            else:
                out[stream] = None
        return out


def _batches(n: float) -> str:
    return f"{num(n)} batch" if n == 1 else f"{num(n)} batches"
