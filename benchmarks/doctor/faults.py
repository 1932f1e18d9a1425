"""The planted faults and the healthy runs of the doctor benchmark.

Each `Case` is one training run: a `Setup` and a `Fault` (trainer.py), the step the
fault starts (`plant`), the alerts that count as detecting it (`expect`: rule names,
matched on the part before ':'), and the words of which one must appear in the
doctor's first action for it to be the right action. Faults are the bugs users hit,
written as the buggy line of a training loop would be; each says so in `what`.

`half` splits the suite: "dev" and "held" are reported apart; most families have a
member in each (labels not shifted / shifted twice, prompt / padding supervised, ...),
so a held-out case tests that a signal generalises, not that a threshold fits one
run. Both were in view while the rules were written, so "fresh" adds faults written
after the rules were frozen (benchmarks/doctor/faults.py, FRESH) and run once: their
results are reported as they came, the honest measure of generalisation.

`kind` picks the lead-time target: "numeric" (within 2 flush windows of the plant),
"data" (within 5), "other" (eval and slow faults: reported, no target).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from benchmarks.doctor.trainer import (
    IGNORE_INDEX,
    Fault,
    Loop,
    Setup,
    batches,
    tokenizer_for,
)
from trainspect.demo.batching import Batch


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    half: str  # "dev" or "held"
    kind: str  # "numeric", "data", "other"; "healthy" for healthy runs
    plant: int  # the first faulty step (0: from the start)
    expect: tuple[str, ...]  # rule names (before ':') that detect it
    words: tuple[str, ...]  # one of them in the doctor's first action: the right action
    what: str
    make: Callable[[], Fault] = Fault
    setup: Setup = field(default_factory=Setup)
    config: dict = field(default_factory=dict)  # extra run config (e.g. warmup_steps)

    @property
    def healthy(self) -> bool:
        return self.kind == "healthy"


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



# ---- the suite --------------------------------------------------------------------------

DRAFT = Setup(draft=3, seed=4)
NAN = ("nonfinite", "hidden.nonfinite", "grads.nonfinite")
NOT_MOVING = ("weights_frozen", "lora.b_zero", "lora_b_zero", "no_gradient", "grads.detached")

FAULTS: tuple[Case, ...] = (
    Case("lr_too_high", "optimisation", "dev", "numeric", 80,
         ("loss_divergence", "loss_spike", "grad_explosion", "activation_growth", *NAN),
         ("learning rate",),
         "the learning rate multiplied by 30 from step 80", LrTooHigh),
    Case("lr_stuck_at_zero", "optimisation", "held", "data", 0,
         ("lr_zero", "lr_frozen_warmup"), ("scheduler", "learning rate"),
         "warmup written as base_lr * min(1, step // warmup): the LR is 0", LrWarmupIntegerDivision,
         config={"warmup_steps": 500}),
    Case("grad_accum_not_scaled", "optimisation", "dev", "data", 0,
         ("loss_total_scaled", "loss_sum_gap", "losses.sum_gap"), ("accumulat",),
         "2 micro-batches per step, the loss not divided by 2", GradAccumNotScaled,
         setup=Setup(accum=2, batch=4, steps=120)),
    Case("gradient_explosion", "optimisation", "held", "numeric", 120,
         ("grad_explosion", "loss_spike"), ("clip", "batch"),
         "reduction='sum' instead of 'mean' on three batches (steps 120-122)",
         LossSummedOnSomeBatches),
    Case("optimizer_without_adapters", "optimisation", "dev", "data", 0, NOT_MOVING,
         ("optimizer",), "the optimizer built from the embedding parameters only",
         OptimizerWithoutAdapters),
    Case("loss_detached", "optimisation", "held", "data", 0, NOT_MOVING,
         ("no_grad", "detach"), "the forward under torch.no_grad(), logits.requires_grad_()",
         NoGradForward),
    Case("layers_frozen", "optimisation", "dev", "data", 60,
         ("grads.frozen_layers", "weights_frozen"), ("requires_grad",),
         "every decoder layer set requires_grad=False at step 60", LayersFrozenMidRun),
    Case("stale_optimizer", "optimisation", "held", "data", 0, NOT_MOVING, ("optimizer",),
         "the optimizer holds a deep copy's parameters", StaleOptimizer),
    Case("labels_not_shifted", "data", "dev", "data", 0, ("label_alignment",), ("shift",),
         "logits[:, :-1] compared with labels[:, :-1]", LabelsNotShifted),
    Case("labels_shifted_twice", "data", "held", "data", 0, ("label_alignment",), ("shift",),
         "the collator shifts the labels and the loop shifts them again", LabelsShiftedTwice),
    Case("prompt_supervised", "data", "dev", "data", 0, ("prompt_supervised",), ("prompt",),
         "labels = input_ids: the prompt is supervised", PromptSupervised),
    Case("padding_supervised", "data", "held", "data", 0,
         ("prompt_supervised", "padding_supervised"), ("pad",),
         "padding labelled with the pad id instead of -100", PaddingSupervised),
    Case("batches_fully_masked", "data", "dev", "data", 80, ("empty_supervision",),
         ("mask",), "every third batch from step 80 has every label -100",
         SomeBatchesFullyMasked),
    Case("pad_is_eos_masked", "data", "held", "data", 0, ("answer_end",), ("eos", "pad"),
         "pad_token = eos_token, then every pad id masked: <eos> never supervised",
         PadIsEosMasked),
    Case("answers_truncated", "data", "dev", "data", 0, ("answer_end", "empty_supervision"),
         ("max_len", "truncat"), "max_length=20 cuts most answers off", AnswersTruncated),
    Case("labels_shuffled", "data", "held", "data", 80, ("label_alignment",),
         ("shuffl", "pair"), "labels shuffled apart from their inputs from step 80",
         LabelsShuffled),
    Case("duplicated_batches", "data", "dev", "data", 80, ("repeated_batches",),
         ("repeat", "loader"), "the same batch every step from step 80", DuplicatedBatches),
    Case("tokenizer_mismatch", "data", "held", "data", 0, ("vocab_mismatch",),
         ("tokenizer",), "the data tokenized with another, larger tokenizer", OtherTokenizer,
         setup=Setup(vocab_pad=256)),
    Case("nan_from_a_layer", "numerics", "dev", "numeric", 100, NAN, ("layers.1",),
         "layers.1 outputs NaN from step 100", NanFromLayer),
    Case("bf16_overflow", "numerics", "held", "numeric", 100,
         (*NAN, "activation_growth"), ("layers.0",),
         "layers.0's MLP output grows 4x a step from step 100 until bf16 overflows",
         Bf16Overflow),
    Case("loss_scale_collapse", "numerics", "dev", "numeric", 100,
         ("loss_scale_collapse", *NAN), ("scale",),
         "a GradScaler whose every step overflows from step 100", LossScaleCollapse),
    Case("zero_weight_added", "composition", "held", "data", 0,
         ("zero_weight_leak", "losses.leak"), ("weight",),
         "an aux loss with weight 0 added to the total unweighted", ZeroWeightAdded),
    Case("component_never_changes", "composition", "dev", "data", 0,
         ("component_constant", "losses.stuck"), ("cache", "constant", "detach"),
         "the z-loss computed once and reused every step", ComponentFromCache),
    Case("term_counted_twice", "composition", "held", "data", 60,
         ("loss_sum_gap", "losses.sum_gap"), ("total", "twice"),
         "the z-loss added twice once its weight is on (step 60)", TermCountedTwice),
    Case("lora_scaling_zero", "lora", "dev", "data", 0, NOT_MOVING, ("alpha", "scaling"),
         "lora_alpha=0: the adapters' B never leaves zero", LoraScalingZero),
    Case("adapter_off_the_loss_path", "lora", "held", "data", 0,
         ("lora.b_zero", "lora_b_zero", "grads.frozen_layers", "weights_frozen"),
         ("target_modules",), "target_modules includes a head the loss never uses",
         AdapterOffTheLossPath),
    Case("eval_plateau", "eval", "dev", "other", 80, ("plateau", "eval_plateau"),
         ("stop", "checkpoint"), "the schedule's total steps set to 80: LR ~0 after",
         ScheduleEndsEarly),
    Case("eval_regression", "eval", "held", "other", 100,
         ("regression", "eval_regressing", "overfitting", "loss_divergence"),
         ("checkpoint", "data"),
         "from step 100 the data's answers are written backwards", ReversedAnswersFromStep),
    Case("overfitting", "eval", "dev", "other", 60,
         ("overfitting", "regression", "eval_regressing"), ("checkpoint", "data"),
         "from step 60 the data is 16 rows", TinyDataFromStep),
    Case("calibration_drift", "eval", "held", "other", 100,
         ("calibration_drift", "eval_calibration_drift", "loss_divergence"),
         ("confiden", "calibrat", "loss changed"),
         "the loss computed at temperature 3 from step 100", TrainedAtTemperature),
    Case("draft_positions_collapse", "drafts", "dev", "other", 60, ("draft_collapse",),
         ("position",), "the last draft position reads zeros instead of features from step 60",
         DraftLastPositionBlind, setup=DRAFT),
    Case("draft_targets_not_advanced", "drafts", "held", "data", 0, ("label_alignment",),
         ("offset", "shift"), "every draft position gets the targets of position 0",
         DraftTargetsNotAdvanced, setup=DRAFT),
)

HEALTHY: tuple[Case, ...] = (
    Case("healthy_small", "healthy", "dev", "healthy", 0, (), (), "seed 0, lr 3e-3"),
    Case("healthy_low_lr", "healthy", "held", "healthy", 0, (), (), "seed 1, lr 1e-3",
         setup=Setup(seed=1, lr=1e-3)),
    Case("healthy_medium", "healthy", "dev", "healthy", 0, (), (),
         "seed 2, hidden 96, 3 layers, vocabulary padded by 64",
         setup=Setup(seed=2, hidden=96, layers=3, vocab_pad=64)),
    Case("healthy_high_lr", "healthy", "held", "healthy", 0, (), (),
         "seed 3, lr 6e-3, no curriculum", setup=Setup(seed=3, lr=6e-3, curriculum=False)),
    Case("healthy_draft", "healthy", "dev", "healthy", 0, (), (),
         "seed 4, a 3-position draft head", setup=DRAFT),
    Case("healthy_accum", "healthy", "held", "healthy", 0, (), (),
         "seed 5, 2 micro-batches of 4 per step", setup=Setup(seed=5, accum=2, batch=4,
                                                            steps=120)),
)

FRESH: tuple[Case, ...] = (
    Case("labels_shifted_backwards", "data", "fresh", "data", 0, ("label_alignment",),
         ("shift",), "logits[:, 1:] compared with labels[:, :-1]", LabelsShiftedBackwards),
    Case("weight_decay_typo", "optimisation", "fresh", "data", 0,
         ("weight_decay_too_strong", "loss_divergence", "weights_frozen"),
         ("weight decay", "weight_decay"),
         "AdamW(weight_decay=50) where 0.05 was meant", WeightDecayTypo,
         config={"weight_decay": 50.0}),
    Case("inf_embedding_row", "numerics", "fresh", "numeric", 100, NAN,
         ("embed", "layers.0"), "the <sep> embedding row set to inf at step 100",
         InfEmbeddingRow),
    Case("lora_dropout_one", "lora", "fresh", "data", 0, NOT_MOVING, ("dropout",),
         "lora_dropout=1.0: the adapters see zeros", LoraDropoutOne),
    Case("half_rows_unshifted", "data", "fresh", "data", 0, ("label_alignment",),
         ("shift",), "half of each batch from a source whose labels were already shifted",
         HalfRowsUnshifted),
    Case("aux_weight_sign_flipped", "composition", "fresh", "numeric", 0,
         ("loss_divergence", "activation_growth", *NAN), ("weight", "sign"),
         "the z-loss subtracted instead of added", AuxWeightSignFlipped),
    Case("eos_never_appended", "data", "fresh", "data", 0, ("answer_end",), ("eos", "end"),
         "the collator never appends <eos> to the answers", EosNeverAppended),
)

ALL = HEALTHY + FAULTS + FRESH
BY_ID = {c.id: c for c in ALL}
