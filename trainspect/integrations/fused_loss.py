"""Swap a transformers causal LM's loss for `ts.linear_cross_entropy`, the way Liger
patches models: the training forward never builds the [B, T, V] logits, and with a run
every token statistic `run.observe` records comes from the loss's own pass.

    handle = trainspect.hf.use_fused_loss(model, run)   # ... handle.remove()

What changes, on the model instance only (its class and other instances are untouched):

- A training forward with `labels` (or HF's pre-shifted `shift_labels`) runs the
  backbone, then the fused loss on `hidden[:, :-1]` against `labels[:, 1:]` (the shift
  the model's own loss makes), with the Gemma 2/3 final logit soft-cap, and returns
  `loss` with `logits=None`. `num_items_in_batch` (the Trainer's token count under
  gradient accumulation) gives the sum over it, as the model's own loss does.
- TRL's fused LM head (`model(..., fused_lm_head=True)`, SFTTrainer 1.x) is answered
  here too: per-token `log_probs` (with autograd), `entropy`, `is_top1` and
  `label_mask`, so SFTTrainer trains as before and the run records everything. TRL
  installs its head when the trainer is built: patch after that (the callbacks do).
- Anything else (evaluation, generation, no labels) runs the original forward.

Supported: the Llama, Mistral, Qwen2, Qwen3 and Gemma (1, 2, 3 text) families, whose
logits are `lm_head(hidden)` (+ soft-cap) and nothing else; PEFT wrappers are looked
through. Another model is refused with one error naming the supported families.
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from typing import Any

from trainspect.errors import TrainspectError

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")


def find_causal_lm(model: Any) -> Any:
    """The first `*ForCausalLM` of a supported family in `model` (itself, or inside a PEFT
    or Lightning wrapper)."""
    seen = []
    for module in model.modules():
        if not type(module).__name__.endswith("ForCausalLM"):
            continue
        kind = getattr(getattr(module, "config", None), "model_type", None)
        if kind in FAMILIES:
            return module
        seen.append(f"{type(module).__name__} ({kind})")
    raise TrainspectError(
        f"use_fused_loss: no causal LM of a supported family ({', '.join(FAMILIES)}) in "
        f"{type(model).__name__}" + (f"; found {', '.join(seen)}" if seen else "")
        + ". Call ts.linear_cross_entropy on the model's hidden states and LM head instead.")


def use_fused_loss(model: Any, run: Any = None, *, step_of: Callable[[], int] | None = None,
                   stream: str = "text", max_chunk_bytes: int | None = None) -> FusedLoss:
    """Give `model`'s causal LM the fused loss (see the module docstring); with `run`, its
    training forwards record token statistics and samples at `step_of()` (default: the
    run's last step). Returns a handle whose `remove()` restores the original forward."""
    return FusedLoss(find_causal_lm(model), run, step_of=step_of, stream=stream,
                     max_chunk_bytes=max_chunk_bytes).attach()


class FusedLoss:
    """The patch on one causal LM: `attach()`, `remove()`, and `calls` (fused forwards)."""

    def __init__(self, lm: Any, run: Any = None, *, step_of: Callable[[], int] | None = None,
                 stream: str = "text", max_chunk_bytes: int | None = None) -> None:
        self.lm, self.run, self.step_of, self.stream = lm, run, step_of, stream
        self.max_chunk_bytes = max_chunk_bytes
        text_config = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") \
            else lm.config
        self.softcap = getattr(text_config, "final_logit_softcapping", None)
        self.signature = inspect.signature(type(lm).forward)
        self.calls = 0
        self._had_instance_forward = False
        self._instance_forward: Any = None

    def attach(self) -> FusedLoss:
        if getattr(self.lm.forward, "_trainspect_fused", False):
            raise TrainspectError("use_fused_loss: this model already has the fused loss; "
                                  "call remove() on the first handle before patching again")
        self._had_instance_forward = "forward" in self.lm.__dict__
        self._instance_forward = self.lm.__dict__.get("forward")
        original = self.lm.forward  # TRL's fused head when SFTTrainer installed one

        @functools.wraps(type(self.lm).forward)
        def forward(lm: Any, *args: Any, **kwargs: Any) -> Any:
            return self._forward(original, lm, args, kwargs)

        forward._trainspect_fused = True
        self.lm.forward = types.MethodType(forward, self.lm)
        return self

    def remove(self) -> None:
        if self._had_instance_forward:
            self.lm.forward = self._instance_forward
        else:
            self.lm.__dict__.pop("forward", None)

    # ---- the forward ---------------------------------------------------------------------

    def _forward(self, original: Any, lm: Any, args: tuple, kwargs: dict) -> Any:
        trl = kwargs.pop("fused_lm_head", False)
        labels, shifted = kwargs.get("labels"), kwargs.get("shift_labels")
        if not trl and (not lm.training or (labels is None and shifted is None)):
            return original(*args, **kwargs)
        arguments = self._arguments(lm, args, kwargs)
        labels = arguments.pop("labels", None)
        shifted = arguments.pop("shift_labels", None)
        num_items = arguments.pop("num_items_in_batch", None)
        arguments.pop("logits_to_keep", None)
        if trl:
            arguments["use_cache"] = False
        backbone = getattr(lm, lm.base_model_prefix)
        outputs = backbone(**arguments)
        hidden = outputs[0]
        if shifted is None:
            hidden, targets = hidden[:, :-1], labels[:, 1:]
        else:
            targets = shifted
        head = lm.get_output_embeddings()
        targets = targets.to(head.weight.device)
        loss, rows = self._loss(lm, hidden.to(head.weight.device), head, targets, arguments,
                                reduction="none" if trl else "sum" if num_items is not None
                                else "mean", keep_rows=trl)
        self.calls += 1
        if trl:
            return self._trl_output(loss, rows, targets, num_items)
        if num_items is not None:
            loss = loss / (num_items.to(loss.device) if hasattr(num_items, "to") else num_items)
        return _causal_lm_output(loss, outputs)

    def _arguments(self, lm: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
        """The call's arguments by name (positional ones too), `**kwargs` flattened."""
        bound = self.signature.bind(lm, *args, **kwargs)
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(self.signature.parameters)))  # self
        for name, parameter in self.signature.parameters.items():
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(arguments.pop(name, {}))
        return arguments

    def _loss(self, lm: Any, hidden: Any, head: Any, targets: Any, arguments: dict,
              reduction: str, keep_rows: bool) -> tuple[Any, Any]:
        from trainspect.integrations.capture import in_backward
        from trainspect.probes.linear_ce import linear_cross_entropy_rows

        record = self.run is not None and lm.training and not in_backward()
        input_ids = arguments.get("input_ids")
        return linear_cross_entropy_rows(
            hidden, head.weight, targets, keep_rows=keep_rows, bias=head.bias,
            reduction=reduction, logit_softcap=self.softcap,
            run=self.run if record else None,
            step=self.step_of() if record and self.step_of is not None else None,
            stream=self.stream, input_ids=input_ids if hasattr(input_ids, "shape") else None,
            attention_mask=arguments.get("attention_mask") if hasattr(input_ids, "shape")
            else None, max_chunk_bytes=self.max_chunk_bytes)

    def _trl_output(self, ce: Any, rows: Any, targets: Any, num_items: Any) -> Any:
        """TRL's FusedCausalLMOutput: what SFTTrainer reads from its fused LM head."""
        import torch

        mask = targets != -100
        log_probs = -ce
        with torch.no_grad():
            entropy = rows.entropy.view(mask.shape)
            is_top1 = ((rows.argmax == targets.reshape(-1)) & rows.valid).view(mask.shape)
        count = mask.sum().clamp(min=1) if num_items is None else num_items
        loss = -log_probs.sum() / count
        try:
            from trl.trainer.utils import FusedCausalLMOutput
        except ImportError:  # an older TRL: the same fields on a plain namespace
            FusedCausalLMOutput = types.SimpleNamespace  # noqa: N806
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=entropy,
                                   is_top1=is_top1, label_mask=mask)


def _causal_lm_output(loss: Any, outputs: Any) -> Any:
    """`CausalLMOutputWithPast` with the loss, no logits, and the backbone's cache and
    hidden states (the cache field is `past_key_values` or `cache` by version)."""
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = CausalLMOutputWithPast.__dataclass_fields__
    extra = {name: getattr(outputs, name, None)
             for name in ("past_key_values", "cache", "hidden_states", "attentions")
             if name in fields}
    return CausalLMOutputWithPast(loss=loss, logits=None, **extra)
