"""The planted bugs of the doctor benchmark: each a `Fault` (trainer.py) that changes the
one line of a training loop a real bug lives in. faults.py says when each starts and
what should find it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import torch
from torch import nn

from benchmarks.doctor.trainer import (
    IGNORE_INDEX,
    Fault,
    Loop,
    batches,
    tokenizer_for,
)
from trainspect.demo.batching import Batch


def _replace_batch(batch: Batch, **changes) -> Batch:
    return replace(batch, **changes)


# ---- optimisation -------------------------------------------------------------------


class LrTooHigh(Fault):
    def lr(self, loop: Loop, lr: float) -> float:
        return lr * 30 if loop.step >= 80 else lr


class LrWarmupIntegerDivision(Fault):
    def lr(self, loop: Loop, lr: float) -> float:
        return loop.setup.lr * min(1, loop.step // 500)  # warmup written with //: always 0


class GradAccumNotScaled(Fault):
    def for_backward(self, loop: Loop, total: torch.Tensor) -> torch.Tensor:
        return total  # forgot `/ accum`: the gradient is the sum over micro-batches


class LossSummedOnSomeBatches(Fault):
    def loss(self, loop, ce, z, logits, z_weight):
        components, weights, total = super().loss(loop, ce, z, logits, z_weight)
        if 120 <= loop.step < 123:  # reduction="sum" on these batches: ~300x the gradient
            n = (loop.cache["labels"] != IGNORE_INDEX).sum()
            total = total - components["ce"] + components["ce"] * n
            components["ce"] = components["ce"] * n
        return components, weights, total

    def batch(self, loop: Loop, batch: Batch) -> Batch:
        loop.cache["labels"] = batch.labels[:, 1:]
        return batch


def _lora_params(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if "lora_" in n]


class OptimizerWithoutAdapters(Fault):
    def build(self, loop: Loop) -> None:  # built from the base model's trainable params only
        lora = {id(p) for p in _lora_params(loop.model)}
        loop.optimizer = torch.optim.AdamW([p for p in loop.params if id(p) not in lora],
                                           lr=loop.setup.lr)


class NoGradForward(Fault):
    def forward(self, loop: Loop, batch: Batch):
        with torch.no_grad():  # an eval snippet pasted into the loop
            out = loop.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        out.logits.requires_grad_()  # "fixes" the backward error; nothing reaches the model
        return out


class LayersFrozenMidRun(Fault):
    def lr(self, loop: Loop, lr: float) -> float:
        if loop.step == 60:  # a freeze meant for the reference model, applied to this one
            for name, p in loop.model.named_parameters():
                if ".layers." in name:
                    p.requires_grad_(False)
        return lr


class StaleOptimizer(Fault):
    def build(self, loop: Loop) -> None:  # the optimizer holds a copy's parameters
        shadow = copy.deepcopy(loop.model)
        loop.optimizer = torch.optim.AdamW(
            [p for p in shadow.parameters() if p.requires_grad], lr=loop.setup.lr)


# ---- data ------------------------------------------------------------------------------


class LabelsNotShifted(Fault):
    def align(self, loop, logits, labels):
        return logits[:, :-1], labels[:, :-1]


class LabelsShiftedTwice(Fault):
    def batch(self, loop: Loop, batch: Batch) -> Batch:  # the collator shifts, so does the loop
        labels = torch.full_like(batch.labels, IGNORE_INDEX)
        labels[:, :-1] = batch.labels[:, 1:]
        return _replace_batch(batch, labels=labels)


class PromptSupervised(Fault):
    def batch(self, loop: Loop, batch: Batch) -> Batch:  # labels = input_ids, prompt included
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, IGNORE_INDEX)
        return _replace_batch(batch, labels=labels)


class PaddingSupervised(Fault):
    def batch(self, loop: Loop, batch: Batch) -> Batch:  # padding left as the pad id
        labels = batch.labels.masked_fill(batch.attention_mask == 0, loop.tokenizer.pad_token_id)
        return _replace_batch(batch, labels=labels)


class SomeBatchesFullyMasked(Fault):
    def batch(self, loop: Loop, batch: Batch) -> Batch:
        if loop.step >= 80 and loop.step % 3 == 0:  # a filter that masks whole batches
            return _replace_batch(batch, labels=torch.full_like(batch.labels, IGNORE_INDEX))
        return batch


class PadIsEosMasked(Fault):
    def batch(self, loop: Loop, batch: Batch) -> Batch:
        eos = loop.tokenizer.eos_token_id  # tokenizer.pad_token = tokenizer.eos_token ...
        ids = batch.input_ids.masked_fill(batch.attention_mask == 0, eos)
        labels = batch.labels.masked_fill(ids == eos, IGNORE_INDEX)  # ... then mask every pad
        return _replace_batch(batch, input_ids=ids, labels=labels)


class AnswersTruncated(Fault):
    def batch(self, loop: Loop, batch: Batch) -> Batch:  # max_length=20: answers cut off
        cut = 20
        return _replace_batch(batch, input_ids=batch.input_ids[:, :cut],
                              attention_mask=batch.attention_mask[:, :cut],
                              labels=batch.labels[:, :cut])


class LabelsShuffled(Fault):
    def batch(self, loop: Loop, batch: Batch) -> Batch:
        if loop.step >= 80:  # labels shuffled apart from their inputs
            return _replace_batch(batch, labels=batch.labels.roll(1, dims=0))
        return batch


class DuplicatedBatches(Fault):
    def batch(self, loop: Loop, batch: Batch) -> Batch:
        if loop.step >= 80:  # next(iter(loader)) in the loop: the same batch every step
            return loop.cache.setdefault("frozen", batch)
        return batch


class OtherTokenizer(Fault):
    def build(self, loop: Loop) -> None:  # the data was tokenized with another tokenizer
        other = tokenizer_for(1, vocab=len(loop.tokenizer) + 256)
        loop.data = batches(loop.rows, other, loop.setup.batch, loop.setup.max_len + 8,
                            loop.setup.seed)


# ---- numerics ----------------------------------------------------------------------------


def _layer(loop: Loop, index: int) -> nn.Module:
    return loop.model.base_model.model.model.layers[index]


class NanFromLayer(Fault):
    def build(self, loop: Loop) -> None:
        def poison(module, inputs, output):
            if loop.step < 100:
                return None
            if isinstance(output, tuple):
                return (output[0] * math.nan, *output[1:])
            return output * math.nan

        _layer(loop, 1).register_forward_hook(poison)


class Bf16Overflow(Fault):
    def build(self, loop: Loop) -> None:
        def grow(module, inputs, output):  # activations growing x4 a step, kept in bf16
            if loop.step < 100:
                return None
            return (output * 4.0 ** (loop.step - 99)).to(torch.bfloat16).to(output.dtype)

        _layer(loop, 0).mlp.register_forward_hook(grow)


class LossScaleCollapse(Fault):
    def build(self, loop: Loop) -> None:
        loop.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
        target = _lora_params(loop.model)[0]

        def overflow(grad):  # an op that overflows in fp16 on every step from 100
            return grad + math.inf if loop.step >= 100 else grad

        target.register_hook(overflow)


# ---- composition and curriculum ---------------------------------------------------------


class ZeroWeightAdded(Fault):
    def loss(self, loop, ce, z, logits, z_weight):
        components, weights, total = super().loss(loop, ce, z, logits, z_weight)
        components["aux"], weights["aux"] = 0.05 * z, 0.0
        return components, weights, total + components["aux"]  # added though its weight is 0


class ComponentFromCache(Fault):
    def loss(self, loop, ce, z, logits, z_weight):
        cached = loop.cache.setdefault("z", z.detach())  # computed once, reused every step
        return super().loss(loop, ce, cached, logits, z_weight)


class TermCountedTwice(Fault):
    def loss(self, loop, ce, z, logits, z_weight):
        components, weights, total = super().loss(loop, ce, z, logits, z_weight)
        return components, weights, total + z_weight * z  # z-loss added in two places


# ---- LoRA ----------------------------------------------------------------------------------


class LoraScalingZero(Fault):
    def build(self, loop: Loop) -> None:  # lora_alpha=0: B A is multiplied by 0
        for module in loop.model.modules():
            scaling = getattr(module, "scaling", None)
            if isinstance(scaling, dict):
                for adapter in scaling:
                    scaling[adapter] = 0.0


class AdapterOffTheLossPath(Fault):
    def build(self, loop: Loop) -> None:  # target_modules also names a head the loss never uses
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaForCausalLM

        from trainspect.demo.model import LORA_TARGETS, llama_config

        tok = loop.tokenizer
        torch.manual_seed(loop.setup.seed)
        base = LlamaForCausalLM(llama_config(loop.setup.model, loop.vocab, tok.pad_token_id,
                                             tok.bos_token_id, tok.eos_token_id))
        base.value_head = nn.Linear(loop.setup.hidden, 1)
        config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                            target_modules=[*LORA_TARGETS, "value_head"],
                            modules_to_save=["embed_tokens", "lm_head"],
                            ensure_weight_tying=True, task_type="CAUSAL_LM")
        loop.model = get_peft_model(base, config)
        loop.params = [p for p in loop.model.parameters() if p.requires_grad]
        loop.optimizer = torch.optim.AdamW(loop.params, lr=loop.setup.lr)


# ---- eval ----------------------------------------------------------------------------------


class ScheduleEndsEarly(Fault):
    def lr(self, loop: Loop, lr: float) -> float:
        return lr * 1e-4 if loop.step >= 80 else lr  # total steps set to 80: decayed to ~0


class ReversedAnswersFromStep(Fault):
    def build(self, loop: Loop) -> None:  # a second dataset mixed in: answers written backwards
        rows = [replace(r, response=r.response[::-1]) for r in loop.rows]
        loop.cache["reversed"] = batches(rows, loop.tokenizer, loop.setup.batch,
                                         loop.setup.max_len * 2, loop.setup.seed + 1)

    def batch(self, loop: Loop, batch: Batch) -> Batch:
        return next(loop.cache["reversed"]) if loop.step >= 100 else batch


class TinyDataFromStep(Fault):
    def build(self, loop: Loop) -> None:
        loop.cache["tiny"] = batches(loop.rows[:16], loop.tokenizer, loop.setup.batch,
                                     loop.setup.max_len, loop.setup.seed)

    def batch(self, loop: Loop, batch: Batch) -> Batch:
        return next(loop.cache["tiny"]) if loop.step >= 60 else batch


class TrainedAtTemperature(Fault):
    def align(self, loop, logits, labels):
        logits, labels = super().align(loop, logits, labels)
        return (logits / 3.0 if loop.step >= 100 else logits), labels  # T=3 left on


# ---- drafts ----------------------------------------------------------------------------------


class DraftLastPositionBlind(Fault):
    def build(self, loop: Loop) -> None:
        head = loop.draft
        original = head.forward
        last = len(head.blocks) - 1

        def forward(hidden, lm_head):  # from step 60 the last position reads zeros
            if loop.step < 60:
                return original(hidden, lm_head)
            outs = [lm_head(h + torch.nn.functional.silu(block(h)))
                    for p, block in enumerate(head.blocks)
                    for h in [hidden if p < last else torch.zeros_like(hidden)]]
            return torch.stack(outs, dim=2)

        head.forward = forward


class DraftTargetsNotAdvanced(Fault):
    def draft_targets(self, loop: Loop, batch: Batch) -> torch.Tensor:
        b, t = batch.input_ids.shape
        out = torch.full((b, t, loop.setup.draft), IGNORE_INDEX, dtype=torch.long)
        for p in range(loop.setup.draft):
            out[:, : t - 1, p] = batch.labels[:, 1:]  # forgot the + p
        return out


# ---- fresh faults: written after the rules were frozen, run once, reported as they came ----


class LabelsShiftedBackwards(Fault):
    def align(self, loop, logits, labels):
        return logits[:, 1:], labels[:, :-1]  # the shift applied the wrong way round


class WeightDecayTypo(Fault):
    def build(self, loop: Loop) -> None:  # weight_decay=50 where 0.05 was meant
        loop.optimizer = torch.optim.AdamW(loop.params, lr=loop.setup.lr, weight_decay=50.0)


class InfEmbeddingRow(Fault):
    def lr(self, loop: Loop, lr: float) -> float:
        if loop.step == 100:  # a token's embedding row overwritten with inf (a bad resize)
            emb = loop.model.get_input_embeddings()
            with torch.no_grad():
                emb.weight[loop.tokenizer.convert_tokens_to_ids("<sep>")] = math.inf
        return lr


class LoraDropoutOne(Fault):
    def build(self, loop: Loop) -> None:  # lora_dropout=1.0: the adapters' input is zeroed
        for module in loop.model.modules():
            dropout = getattr(module, "lora_dropout", None)
            if isinstance(dropout, nn.ModuleDict):
                for key in dropout:
                    dropout[key] = nn.Dropout(p=1.0)


class HalfRowsUnshifted(Fault):
    def batch(self, loop: Loop, batch: Batch) -> Batch:  # a second source, labels pre-shifted
        labels = batch.labels.clone()
        half = labels.shape[0] // 2
        labels[half:, :-1] = batch.labels[half:, 1:]
        labels[half:, -1] = IGNORE_INDEX
        return _replace_batch(batch, labels=labels)


class AuxWeightSignFlipped(Fault):
    def loss(self, loop, ce, z, logits, z_weight):
        components, weights, total = super().loss(loop, ce, z, logits, z_weight)
        components["z_loss"], weights["z_loss"] = z, -0.01  # "- aux" where "+ aux" was meant
        return components, weights, ce - 0.01 * z


class EosNeverAppended(Fault):
    def batch(self, loop: Loop, batch: Batch) -> Batch:  # the collator forgot eos
        eos = loop.tokenizer.eos_token_id
        ids = batch.input_ids.masked_fill(batch.input_ids == eos, loop.tokenizer.pad_token_id)
        mask = batch.attention_mask.masked_fill(batch.input_ids == eos, 0)
        labels = batch.labels.masked_fill(batch.input_ids == eos, IGNORE_INDEX)
        return _replace_batch(batch, input_ids=ids, attention_mask=mask, labels=labels)
