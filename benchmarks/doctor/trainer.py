"""The training loop the doctor benchmark plants its faults in: a plain PyTorch LoRA
fine-tune of the demo's tiny Llama on the demo's instruction data, written the way a
trainspect user writes one (`watch`, `observe`, `losses`, `log`, `evaluate`).

Every place a real bug lives is a method of `Fault` that the loop calls: building the
model and optimizer, the batch, the learning rate, how logits and labels are aligned,
the loss and its parts, the backward pass, the optimizer step. The healthy run is a
`Fault` that changes nothing. A run is `train(run, setup, fault)`; `Setup` holds what
varies between healthy runs (seed, model size, learning rate, curriculum, gradient
accumulation, a draft head).

Rows are kept to at most `Setup.max_len` tokens (prompt + answer), so a healthy run
never truncates an answer; the fixed eval is the demo's, cut the same way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainspect.demo.batching import IGNORE_INDEX, Batch, collate, encode
from trainspect.demo.data import fixed_eval_examples, train_examples
from trainspect.demo.model import ModelConfig, build_model
from trainspect.demo.tokenizer import build_tokenizer


@dataclass(frozen=True)
class Setup:
    """What one run trains: varied across the healthy runs."""

    seed: int = 0
    hidden: int = 64
    layers: int = 2
    lr: float = 3e-3
    steps: int = 200
    batch: int = 8
    max_len: int = 48  # tokens per row at most; longer rows are left out of the data
    warmup: int = 20
    curriculum: bool = True  # a z-loss component whose weight ramps from 0 at 30% of the run
    accum: int = 1  # micro-batches per optimizer step (the loss divided by it)
    draft: int = 0  # positions of a Medusa-style draft head trained alongside (0: none)
    vocab_pad: int = 0  # embedding rows beyond the tokenizer (vocabularies padded to 64)
    eval_every: int = 20
    log_every: int = 10
    train_size: int = 3000  # rows generated before the length filter

    @property
    def model(self) -> ModelConfig:
        return ModelConfig(hidden_size=self.hidden, num_layers=self.layers, num_heads=4,
                           intermediate_size=2 * self.hidden, lora_r=8, lora_alpha=16)


@dataclass
class Loop:
    """Everything the loop and a fault may touch."""

    setup: Setup
    run: Any
    tokenizer: Any
    model: nn.Module
    rows: list
    eval_rows: list
    vocab: int
    params: list[torch.Tensor] = field(default_factory=list)
    optimizer: Any = None
    scaler: Any = None
    draft: nn.Module | None = None
    data: Iterator[Batch] | None = None
    step: int = 0
    cache: dict[str, Any] = field(default_factory=dict)  # a fault's own state


class Fault:
    """No fault: every hook leaves the loop as it is. Faults override the hooks."""

    def build(self, loop: Loop) -> None:
        """After model, optimizer and data are built (hooks, replacements)."""

    def batch(self, loop: Loop, batch: Batch) -> Batch:
        return batch

    def lr(self, loop: Loop, lr: float) -> float:
        return lr

    def align(self, loop: Loop, logits: torch.Tensor, labels: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Causal alignment: position t of the logits predicts the token at t + 1."""
        return logits[:, :-1], labels[:, 1:]

    def forward(self, loop: Loop, batch: Batch) -> Any:
        return loop.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          output_hidden_states=loop.draft is not None)

    def loss(self, loop: Loop, ce: torch.Tensor, z: torch.Tensor, logits: torch.Tensor,
             z_weight: float) -> tuple[dict, dict, torch.Tensor]:
        """(components, weights, total) of the loss."""
        components, weights = {"ce": ce}, {"ce": 1.0}
        total = ce
        if loop.setup.curriculum:
            components["z_loss"], weights["z_loss"] = z, z_weight
            total = total + z_weight * z
        return components, weights, total

    def for_backward(self, loop: Loop, total: torch.Tensor) -> torch.Tensor:
        """The tensor backward is called on: the total over the micro-batches."""
        return total / loop.setup.accum

    def backward(self, loop: Loop, value: torch.Tensor) -> None:
        if loop.scaler is not None:
            loop.scaler.scale(value).backward()
        else:
            value.backward()

    def after_backward(self, loop: Loop) -> None:
        """Between the last backward and the optimizer step."""

    def log(self, loop: Loop, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics


# ---- data ---------------------------------------------------------------------------


def short_rows(rows: list, tokenizer: Any, max_len: int) -> list:
    """The rows whose prompt and answer fit in `max_len` tokens."""
    return [r for r in rows if len(sum(_parts(r, tokenizer), [])) <= max_len]


def _parts(row: Any, tokenizer: Any) -> tuple[list[int], list[int]]:
    enc = encode(row, tokenizer)
    return enc.prompt_ids, enc.response_ids


def batches(rows: list, tokenizer: Any, batch: int, max_len: int, seed: int
            ) -> Iterator[Batch]:
    """Endless shuffled batches, reshuffled every epoch (the demo's collate)."""
    encoded = [(r.id, encode(r, tokenizer)) for r in rows]
    rng = random.Random(seed)
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch + 1, batch):
            yield collate([encoded[i] for i in order[start:start + batch]],
                          tokenizer.pad_token_id, max_len)


def tokenizer_for(seed: int, vocab: int = 768) -> Any:
    """The demo's BPE trained on `seed`'s rows (the same text for every healthy seed)."""
    rows = train_examples(3000, seed)
    return build_tokenizer((f"{r.prompt}\n{r.response}" for r in rows), vocab)


# ---- a draft head -----------------------------------------------------------------------


class DraftHead(nn.Module):
    """Position p predicts the token p + 1 places ahead (position 0: the next token, as
    in EAGLE) from the base model's last hidden state, through its own residual block
    (zero-initialised: it starts as the LM head) and the shared LM head."""

    def __init__(self, hidden: int, positions: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(positions))
        for block in self.blocks:
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)

    def forward(self, hidden: torch.Tensor, head: nn.Module) -> torch.Tensor:
        outs = [head(hidden + F.silu(block(hidden))) for block in self.blocks]
        return torch.stack(outs, dim=2)  # (B, T, P, V)


def draft_targets(input_ids: torch.Tensor, labels: torch.Tensor, positions: int,
                  offset: int = 1) -> torch.Tensor:
    """(B, T, P): position p at t predicts input token t + offset + p, where the labels
    supervise it; -100 past the end."""
    b, t = input_ids.shape
    out = torch.full((b, t, positions), IGNORE_INDEX, dtype=torch.long)
    for p in range(positions):
        k = offset + p
        if k < t:
            out[:, : t - k, p] = labels[:, k:]
    return out


# ---- the loop ---------------------------------------------------------------------------


def lr_at(step: int, setup: Setup) -> float:
    """Linear warmup, then cosine to a tenth."""
    if step < setup.warmup:
        return setup.lr * (step + 1) / setup.warmup
    progress = min(1.0, (step - setup.warmup) / max(1, setup.steps - setup.warmup - 1))
    return setup.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def z_weight_at(step: int, setup: Setup, peak: float = 1e-3) -> float:
    start, full = 0.3 * setup.steps, 0.6 * setup.steps
    return 0.0 if step < start else peak * min(1.0, (step - start) / max(full - start, 1.0))


def prepare(run: Any, setup: Setup, tokenizer: Any = None) -> Loop:
    """Model, data and fixed eval for `setup` (faults may replace any of them in build)."""
    tokenizer = tokenizer or tokenizer_for(0)
    rows = short_rows(train_examples(setup.train_size, setup.seed), tokenizer, setup.max_len)
    eval_rows = short_rows(fixed_eval_examples(), tokenizer, setup.max_len)
    vocab = len(tokenizer) + setup.vocab_pad
    model = build_model(setup.model, vocab, pad_id=tokenizer.pad_token_id,
                        bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
                        seed=setup.seed)
    return Loop(setup=setup, run=run, tokenizer=tokenizer, model=model, rows=rows,
                eval_rows=eval_rows, vocab=vocab)


def train(run: Any, setup: Setup, fault: Fault | None = None, tokenizer: Any = None) -> Loop:
    """One run of `setup` with `fault` planted (None: healthy), recorded in `run`."""
    import trainspect as ts

    fault = fault or Fault()
    torch.manual_seed(setup.seed)
    loop = prepare(run, setup, tokenizer)
    if setup.draft:
        loop.draft = DraftHead(setup.hidden, setup.draft)
    loop.params = [p for p in loop.model.parameters() if p.requires_grad]
    if loop.draft is not None:
        loop.params += list(loop.draft.parameters())
    loop.optimizer = torch.optim.AdamW(loop.params, lr=setup.lr, betas=(0.9, 0.95),
                                       weight_decay=0.0)
    loop.data = batches(loop.rows, loop.tokenizer, setup.batch, setup.max_len, setup.seed)
    fault.build(loop)
    loop.model.train()
    run.watch(loop.model)
    fixed_eval = ts.FixedEval(loop.eval_rows, tokenizer=loop.tokenizer)
    for step in range(setup.steps):
        loop.step = step
        lr = fault.lr(loop, lr_at(step, setup))
        for group in loop.optimizer.param_groups:
            group["lr"] = lr
        logged = _step(loop, fault, step)
        if loop.scaler is not None:
            loop.scaler.unscale_(loop.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(loop.params, 1.0)
        if loop.scaler is not None:
            loop.scaler.step(loop.optimizer)
            loop.scaler.update()
            logged["loss_scale"] = float(loop.scaler.get_scale())
        else:
            loop.optimizer.step()
        loop.optimizer.zero_grad(set_to_none=True)
        logged.update(lr=lr, grad_norm=norm.detach())
        run.log(fault.log(loop, logged), step=step)
        if (step + 1) % setup.eval_every == 0 or step == setup.steps - 1:
            model = loop.model
            run.evaluate(model, fixed_eval, step=step, checkpoint=f"checkpoint-{step + 1}",
                         em="teacher_forced")
    return loop


def _step(loop: Loop, fault: Fault, step: int) -> dict[str, Any]:
    """Forward and backward of every micro-batch of one optimizer step."""
    setup, run = loop.setup, loop.run
    logged: dict[str, Any] = {}
    for _ in range(setup.accum):
        batch = fault.batch(loop, next(loop.data))
        out = fault.forward(loop, batch)
        logits, labels = fault.align(loop, out.logits, batch.labels)
        flat = logits.reshape(-1, logits.size(-1)).float()
        ce = F.cross_entropy(flat, labels.reshape(-1), ignore_index=IGNORE_INDEX)
        supervised = (labels != IGNORE_INDEX).float()
        z = (torch.logsumexp(logits.float(), -1).square() * supervised).sum() / \
            supervised.sum().clamp_min(1)
        components, weights, total = fault.loss(loop, ce, z, logits, z_weight_at(step, setup))
        run.observe(step, logits=logits, labels=labels, input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask)
        if loop.draft is not None:
            components["draft"], weights["draft"] = _draft(loop, fault, batch, out, step), 1.0
            total = total + components["draft"]
        value = fault.for_backward(loop, total)
        run.losses(step, components=components, weights=weights, total=value,
                   grad_accum=setup.accum)
        fault.backward(loop, value)
        logged["loss"] = components["ce"].detach()
    fault.after_backward(loop)
    return logged


def _draft(loop: Loop, fault: Fault, batch: Batch, out: Any, step: int) -> torch.Tensor:
    """The draft head's loss on the base model's last hidden state (the base is not
    trained through it)."""
    hidden = out.hidden_states[-1].detach()
    head = loop.model.get_output_embeddings()
    logits = loop.draft(hidden, head)  # (B, T, P, V)
    targets = fault_draft_targets(loop, fault, batch)
    run_logits = logits[:, :-1]
    run_targets = targets[:, :-1]
    loop.run.observe(step, run_logits, run_targets, stream="draft", group="pos",
                     input_ids=batch.input_ids)
    return F.cross_entropy(run_logits.reshape(-1, run_logits.size(-1)).float(),
                           run_targets.reshape(-1), ignore_index=IGNORE_INDEX)


def fault_draft_targets(loop: Loop, fault: Fault, batch: Batch) -> torch.Tensor:
    make = getattr(fault, "draft_targets", None)
    if make is not None:
        return make(loop, batch)
    return draft_targets(batch.input_ids, batch.labels, loop.setup.draft)


def with_steps(setup: Setup, steps: int) -> Setup:
    return replace(setup, steps=steps)
