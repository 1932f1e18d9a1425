"""The planted faults and the healthy runs of the doctor benchmark.

Each `Case` is one training run: a `Setup` and a `Fault` (trainer.py; the planted
bugs are in bugs.py, each written as the buggy line of a training loop would be), the
step the fault starts (`plant`), the alerts that count as detecting it (`expect`: rule
names, matched on the part before ':'), and the words of which one must appear in the
doctor's first finding (its message or action) for it to name the cause and the right
action. `what` says the bug in one line.

`half` splits the suite: "dev" and "held" are reported apart; most families have a
member in each (labels not shifted / shifted twice, prompt / padding supervised, ...),
so a held-out case tests that a signal generalises, not that a threshold fits one
run. Both were in view while the rules were written, so "fresh" adds faults written
after the rules were frozen (FRESH below) and run once: docs/benchmarks.md reports
that first run as it came, the honest measure of generalisation.

`kind` picks the lead-time target: "numeric" (within 2 flush windows of the plant),
"data" (within 5), "other" (eval and slow faults: reported, no target).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.doctor.bugs import (
    AdapterOffTheLossPath,
    AnswersTruncated,
    AuxWeightSignFlipped,
    Bf16Overflow,
    ComponentFromCache,
    DraftLastPositionBlind,
    DraftTargetsNotAdvanced,
    DuplicatedBatches,
    EosNeverAppended,
    GradAccumNotScaled,
    HalfRowsUnshifted,
    InfEmbeddingRow,
    LabelsNotShifted,
    LabelsShiftedBackwards,
    LabelsShiftedTwice,
    LabelsShuffled,
    LayersFrozenMidRun,
    LoraDropoutOne,
    LoraScalingZero,
    LossScaleCollapse,
    LossSummedOnSomeBatches,
    LrTooHigh,
    LrWarmupIntegerDivision,
    NanFromLayer,
    NoGradForward,
    OptimizerWithoutAdapters,
    OtherTokenizer,
    PaddingSupervised,
    PadIsEosMasked,
    PromptSupervised,
    ReversedAnswersFromStep,
    ScheduleEndsEarly,
    SomeBatchesFullyMasked,
    StaleOptimizer,
    TermCountedTwice,
    TinyDataFromStep,
    TrainedAtTemperature,
    WeightDecayTypo,
    ZeroWeightAdded,
)
from benchmarks.doctor.trainer import Fault, Setup


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
