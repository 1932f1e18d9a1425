"""Logits and labels taken from a model's own forward, for trainers that never show them.

A forward pre-hook (with kwargs) reads `labels` (or HF's pre-shifted `shift_labels`),
`input_ids` and `attention_mask` from the call; a forward hook reads the logits from
the output (`.logits`, a dict's "logits", or the tensor itself) and hands both to
`run.observe` at once, under `torch.no_grad()` with autocast off. Nothing is kept
after the hook returns: the logits live exactly as long as the trainer keeps them.

Only training forwards count (train mode, grad enabled, not a gradient-checkpointing
recomputation inside the backward): evaluation and generation are left alone. With
gradient accumulation every micro-batch is observed at the step it contributes to,
so a flush window pools all of them.

Alignment: a causal LM computes its loss from `logits[:, :-1]` against `labels[:, 1:]`,
and is observed the same way. Encoder-decoder models (labels are the decoder's own
targets), masked LMs, token and sequence classifiers are observed as given. `shift`
overrides the guess.

Fused LM heads: TRL's SFTTrainer (1.x) never builds the logits; its forward returns
per-token `log_probs`, `entropy`, `is_top1` and `label_mask` instead. Those are pooled
by `FusedTokenProbe` into the metrics they determine (`<stream>/acc`, `/ce`,
`/entropy`, `/target_conf`, `/supervised_tokens`); confidence, calibration and
prediction samples need the logits and are not recorded then.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from trainspect.probes.base import Probe
from trainspect.records import Scalar

log = logging.getLogger("trainspect.integrations")

# Heads whose logits line up with their labels position by position (no causal shift).
ALIGNED_HEADS = ("MaskedLM", "TokenClassification", "SequenceClassification",
                 "QuestionAnswering", "ForCTC", "MultipleChoice")


def logits_of(output: Any) -> Any:
    """The logits in a forward's output: `.logits`, a dict's "logits", a tensor, else None."""
    import torch

    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if logits is None and isinstance(output, torch.Tensor):
        logits = output
    return logits if isinstance(logits, torch.Tensor) and logits.is_floating_point() else None


def is_causal(model: Any) -> bool:
    """Whether `model` predicts the next token (its labels need the causal shift)."""
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "is_encoder_decoder", False):
        return False
    names = [type(model).__name__]
    base = getattr(model, "get_base_model", None)  # PEFT wrappers
    if callable(base):
        try:
            names.append(type(base()).__name__)
        except Exception as err:  # a PEFT model without a base: judge by its own name
            log.debug("trainspect: no base model to name", exc_info=err)
    return not any(head in name for head in ALIGNED_HEADS for name in names)


def in_backward() -> bool:
    """True while autograd runs (gradient checkpointing recomputes forwards there)."""
    import torch

    task_id = getattr(torch._C, "_current_graph_task_id", None)
    return task_id is not None and task_id() != -1


class LogitsCapture:
    """Hooks on `model` that observe every training forward into `run` at `step_of()`."""

    def __init__(self, run: Any, model: Any, step_of: Callable[[], int], *,
                 stream: str = "text", shift: bool | None = None) -> None:
        self.run = run
        self.model = model
        self.step_of = step_of
        self.stream = stream
        self.shift = is_causal(model) if shift is None else shift
        self.observed = 0  # forwards handed to run.observe
        self._pending: tuple | None = None
        self._handles: list[Any] = []
        self._off = False

    def _fused(self) -> FusedTokenProbe:
        probe = self.run.probe(FusedTokenProbe.name)
        if probe is None:
            probe = self.run.add_probe(FusedTokenProbe(self.stream))
        return probe

    def attach(self) -> LogitsCapture:
        self._handles = [
            self.model.register_forward_pre_hook(self._before, with_kwargs=True),
            self.model.register_forward_hook(self._after),
        ]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._pending = None

    def _before(self, module: Any, args: tuple, kwargs: dict) -> None:
        import torch

        self._pending = None
        if self._off or not (module.training and torch.is_grad_enabled()) or in_backward():
            return
        labels, shifted = kwargs.get("labels"), kwargs.get("shift_labels")
        if not isinstance(labels, torch.Tensor) and not isinstance(shifted, torch.Tensor):
            return
        self._pending = (labels, shifted, kwargs.get("input_ids"), kwargs.get("attention_mask"))

    def _after(self, module: Any, args: tuple, output: Any) -> None:
        pending, self._pending = self._pending, None
        if pending is None or self._off:
            return
        try:
            self._observe(output, *pending)
        except Exception as err:
            self._off = True
            self.run.probe_failed("capture", "the forward hook", err)

    def _observe(self, output: Any, labels: Any, shifted: Any, input_ids: Any,
                 attention_mask: Any) -> None:
        import torch

        logits = logits_of(output)
        if logits is None:
            if fused_outputs(output):
                self._fused().update(output)
                self.observed += 1
            return
        if isinstance(shifted, torch.Tensor):  # HF's pre-shifted targets: aligned already
            labels = shifted
        elif self.shift and logits.dim() >= 3 and labels.dim() >= 2:
            logits, labels = logits[:, :-1], labels[:, 1:]  # (B, T-1, V), (B, T-1)
        with torch.no_grad(), torch.autocast(logits.device.type, enabled=False):
            self.run.observe(self.step_of(), logits=logits, labels=labels, stream=self.stream,
                             input_ids=input_ids if isinstance(input_ids, torch.Tensor) else None,
                             attention_mask=attention_mask
                             if isinstance(attention_mask, torch.Tensor) else None)
        self.observed += 1


def fused_outputs(output: Any) -> bool:
    """True for a fused LM head's output (per-token log-probabilities, no logits)."""
    import torch

    return (isinstance(getattr(output, "log_probs", None), torch.Tensor)
            and isinstance(getattr(output, "label_mask", None), torch.Tensor))


class FusedTokenProbe(Probe):
    """Token metrics from a fused LM head's per-token outputs: sums, pooled at the flush."""

    name = "fused_tokens"
    cadence = "every training forward"
    cost = "five sums over (B, T) per forward"
    SUMS = ("tokens", "correct", "nll", "entropy", "label_prob", "with_top1", "with_entropy")

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.sums: Any = None

    def update(self, output: Any) -> None:
        import torch

        with torch.no_grad():
            mask = output.label_mask.detach().to(torch.float64)  # (B, T-1)
            log_probs = output.log_probs.detach().to(torch.float64)  # 0 where ignored
            zero = mask.new_zeros(())
            is_top1, entropy = getattr(output, "is_top1", None), getattr(output, "entropy", None)
            values = torch.stack([
                mask.sum(),
                zero if is_top1 is None else (is_top1.detach().to(torch.float64) * mask).sum(),
                -(log_probs * mask).sum(),
                zero if entropy is None else (entropy.detach().to(torch.float64) * mask).sum(),
                (log_probs.exp() * mask).sum(),
                mask.sum() * float(is_top1 is not None),
                mask.sum() * float(entropy is not None),
            ])
            if self.sums is None:
                self.sums = torch.zeros(len(self.SUMS), dtype=torch.float64, device=mask.device)
            self.sums += values

    def layout(self) -> bool:
        """Whether the state exists yet: ranks compare it before a flush (distributed.py)."""
        return self.sums is not None

    def state(self) -> Sequence[Any]:
        return () if self.sums is None else (self.sums,)

    def reset(self) -> None:
        if self.sums is not None:
            self.sums.zero_()

    def compute(self, state: list[np.ndarray], step: int, wall_time: float) -> list[Any]:
        tokens, correct, nll, entropy, label_prob, with_top1, with_entropy = state[0]
        if tokens <= 0:
            return []
        out = {"supervised_tokens": tokens, "ce": nll / tokens, "target_conf": label_prob / tokens}
        if with_top1 > 0:
            out["acc"] = correct / with_top1
        if with_entropy > 0:
            out["entropy"] = entropy / with_entropy
        return [Scalar(f"{self.stream}/{k}", step, float(v), wall_time) for k, v in out.items()]
