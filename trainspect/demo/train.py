"""The demo's training loop: a plain PyTorch LoRA fine-tune, as a user would write it.

`train(run, steps=...)` builds the data, tokenizer and model (`prepare`), then runs
AdamW with linear warmup and cosine decay, logging through `run.log` every step.
The run is a parameter, so tests hand in a fake recorder and the CLI a real
`trainspect` run. Values are logged as 0-d tensors where they are tensors (loss,
accuracy, grad norm): the run decides when to read them, not the loop.

The step is written in the order a trainspect user's loop would be, with marked
hook points where `run.watch`, `run.observe`, `run.losses` and `run.evaluate`
belong. `forward` returns the causal-shifted, aligned `logits` and `labels`
(`StepView`), which is exactly what `run.observe` takes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast

from trainspect.demo.batching import IGNORE_INDEX, Batch, batches
from trainspect.demo.data import DEFAULT_TRAIN_SIZE, Example, fixed_eval_examples, train_examples
from trainspect.demo.model import ModelConfig, build_model
from trainspect.demo.tokenizer import DEFAULT_VOCAB_SIZE, build_tokenizer
from trainspect.errors import TrainspectError


class Recorder(Protocol):
    """What the loop needs from a run: `trainspect.Run` satisfies it, and so does a fake."""

    def log(self, metrics: dict[str, Any], step: int) -> None: ...


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and data settings of the demo (the model's shape is `model`)."""

    batch_size: int = 16
    """Sequences per step."""
    max_len: int = 128
    """Tokens per sequence at most; longer rows are cut at the right."""
    lr: float = 6e-3
    """Peak learning rate: high, because the model is tiny and the run is short (measured
    over 800 steps: fixed-eval exact match 0.25 at 6e-3, 0.09 at 3e-3, 0.23 at 1e-2)."""
    warmup_steps: int = 20
    """Linear warmup from 0 to `lr`; shortened to a tenth of the run when it is shorter."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at `lr * min_lr_ratio`."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay (none: LoRA and embeddings, short run)."""
    grad_clip: float = 1.0
    """Max global gradient norm; the norm before clipping is what gets logged."""
    train_size: int = DEFAULT_TRAIN_SIZE
    """Training rows generated for the run."""
    vocab_size: int = DEFAULT_VOCAB_SIZE
    """BPE vocabulary size, special tokens included."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The tiny Llama and its LoRA adapter."""

    def __post_init__(self) -> None:
        for name in ("batch_size", "max_len", "train_size", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise TrainspectError(f"expected `{name}` to be a positive int, got {value!r}")
        if not self.lr > 0:
            raise TrainspectError(f"expected `lr` to be > 0, got {self.lr!r}")


@dataclass
class DemoSetup:
    """Everything a run trains on: built once by `prepare`, reusable across runs."""

    tokenizer: PreTrainedTokenizerFast
    model: torch.nn.Module
    train_rows: list[Example]
    fixed_eval_rows: list[Example]


@dataclass(frozen=True)
class StepView:
    """One forward pass, causal-shifted: position t of `logits` predicts `labels[:, t]`."""

    logits: torch.Tensor
    """(B, T-1, V) model outputs for positions 0..T-2."""
    labels: torch.Tensor
    """(B, T-1) the next token, -100 where unsupervised (prompt, padding)."""
    input_ids: torch.Tensor
    """(B, T-1) the input token at each logit position."""
    attention_mask: torch.Tensor
    """(B, T-1) 1 on real input tokens."""
    loss: torch.Tensor
    """0-d mean cross-entropy over supervised tokens (carries the graph)."""
    acc: torch.Tensor
    """0-d share of supervised tokens whose argmax is the label (detached)."""


@dataclass(frozen=True)
class ProgressEvent:
    """What the CLI prints every few steps (floats: reading them syncs, so only here)."""

    step: int
    steps: int
    loss: float
    acc: float
    lr: float
    elapsed_s: float
    tokens_per_s: float


@dataclass
class DemoResult:
    """What a training run did, as plain numbers, plus the trained model."""

    steps: int
    wall_s: float
    """Seconds from the first step's start to the last step's end."""
    tokens_per_s: float
    """Real (non-pad) tokens through forward and backward per second, whole run."""
    losses: list[float]
    """Loss per step."""
    accs: list[float]
    """Token accuracy on supervised tokens per step."""
    setup: DemoSetup = field(repr=False)

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def start_loss(self) -> float:
        """Loss at step 0 (the untrained model)."""
        return self.losses[0]

    @property
    def start_acc(self) -> float:
        return self.accs[0]

    @property
    def end_loss(self) -> float:
        """Mean loss over the last 10 steps (one batch is noisy)."""
        return sum(self.losses[-10:]) / len(self.losses[-10:])

    @property
    def end_acc(self) -> float:
        """Mean token accuracy over the last 10 steps."""
        return sum(self.accs[-10:]) / len(self.accs[-10:])


def prepare(config: TrainConfig, seed: int = 0) -> DemoSetup:
    """Generate the data, train the tokenizer on it and build the LoRA model, all from `seed`."""
    rows = train_examples(config.train_size, seed)
    tokenizer = build_tokenizer((f"{r.prompt}\n{r.response}" for r in rows), config.vocab_size)
    model = build_model(
        config.model,
        len(tokenizer),
        pad_id=tokenizer.pad_token_id,
        bos_id=tokenizer.bos_token_id,
        eos_id=tokenizer.eos_token_id,
        seed=seed,
    )
    return DemoSetup(tokenizer, model, rows, fixed_eval_examples())


def lr_at(step: int, steps: int, config: TrainConfig) -> float:
    """Learning rate for `step` of `steps`: linear warmup, then cosine to the floor."""
    warmup = min(config.warmup_steps, max(1, steps // 10))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup - 1)  # 0 -> 1 over the decay
    floor = config.lr * config.min_lr_ratio
    return floor + (config.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def forward(model: torch.nn.Module, batch: Batch) -> StepView:
    """Run the model and align it for next-token loss: logits[:, :-1] with labels[:, 1:]."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    logits = out.logits[:, :-1]  # (B, T-1, V)
    labels = batch.labels[:, 1:]  # (B, T-1)
    loss = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)).float(),  # (B*(T-1), V)
        labels.reshape(-1),  # (B*(T-1),)
        ignore_index=IGNORE_INDEX,
    )
    with torch.no_grad():
        supervised = labels != IGNORE_INDEX  # (B, T-1)
        correct = (logits.argmax(dim=-1) == labels) & supervised
        acc = correct.sum() / supervised.sum().clamp_min(1)
    return StepView(
        logits=logits,
        labels=labels,
        input_ids=batch.input_ids[:, :-1],
        attention_mask=batch.attention_mask[:, :-1],
        loss=loss,
        acc=acc,
    )


def z_loss_weight(step: int, steps: int, peak: float = 1e-3) -> float:
    """The curriculum of the second loss component: off for the first 30% of the run,
    ramped linearly to `peak` by 60%, then held."""
    start, full = 0.3 * steps, 0.6 * steps
    if step < start:
        return 0.0
    return peak * min(1.0, (step - start) / max(full - start, 1.0))


def z_loss(view: StepView) -> torch.Tensor:
    """Mean squared log-partition over supervised tokens (PaLM's z-loss), 0-d."""
    supervised = (view.labels != IGNORE_INDEX).float()  # (B, T-1)
    lse = torch.logsumexp(view.logits.float(), dim=-1)  # (B, T-1)
    return (lse.square() * supervised).sum() / supervised.sum().clamp_min(1)


def train(
    run: Recorder,
    *,
    steps: int,
    seed: int = 0,
    config: TrainConfig | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    progress_every: int = 10,
    setup: DemoSetup | None = None,
    eval_every: int | None = None,
    eval_progress: Callable[[int, int], None] | None = None,
    eval_done: Callable[[int, Any, float], None] | None = None,
    plant_faults: bool = False,
) -> DemoResult:
    """Fine-tune the demo model for `steps` steps, logging every step to `run`.

    `progress` (if given) is called every `progress_every` steps and after the last.
    `setup` reuses prepared data and model (else `prepare(config, seed)` builds them).
    When `run` is a trainspect Run, every probe is on: `watch` on the model, `observe`
    on the aligned logits every step (samples every `samples_every`), `losses` with two
    components (cross-entropy, and a z-loss on a curriculum), and the fixed eval every
    `eval_every` steps and at the end (`eval_progress(done, total)` during it,
    `eval_done(step, result, seconds)` after it). `plant_faults` adds, for the health
    signals to show: a component that leaks into the total through a zero weight, a
    layer whose LoRA scaling is 0 (frozen: its adapters get no gradient), and a NaN
    burst out of one decoder layer (those steps are skipped, as a careful loop would).
    """
    if not isinstance(steps, int) or steps <= 0:
        raise TrainspectError(f"expected `steps` to be a positive int, got {steps!r}")
    config = config or TrainConfig()
    setup = setup or prepare(config, seed)
    model = setup.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=config.lr, betas=(0.9, 0.95), weight_decay=config.weight_decay
    )
    data = batches(setup.train_rows, setup.tokenizer,
                   batch_size=config.batch_size, max_len=config.max_len, seed=seed)

    probes = hasattr(run, "observe")  # a trainspect Run (tests hand in a plain recorder)
    faults = _plant_faults(model, steps) if plant_faults else None
    fixed_eval = None
    if probes:
        run.watch(model)
        if eval_every:
            import trainspect as ts

            fixed_eval = ts.FixedEval(setup.fixed_eval_rows, tokenizer=setup.tokenizer)
    # (steps, 2): loss and accuracy per step, written in place and read once at the end.
    # One allocation up front: keeping a small tensor per step alive fragments the CPU
    # heap (glibc), and resident memory then grew ~3.5 MB a step in measurement.
    history = torch.zeros(steps, 2)
    tokens_seen = 0
    start = time.perf_counter()
    for step in range(steps):
        step_start = time.perf_counter()
        batch = next(data)
        lr = lr_at(step, steps, config)
        for group in optimizer.param_groups:
            group["lr"] = lr

        if faults is not None:
            faults.nan_burst = step in faults.nan_steps
        view = forward(model, batch)
        z = z_loss(view)
        weights = {"ce": 1.0, "z_loss": z_loss_weight(step, steps)}
        components = {"ce": view.loss, "z_loss": z}
        total = view.loss + weights["z_loss"] * z
        if faults is not None:  # the bug the seeds hunted: added though its weight is 0
            components["aux"], weights["aux"] = 0.05 * z, 0.0
            total = total + components["aux"]
        if probes:
            run.observe(step, logits=view.logits, labels=view.labels,
                        input_ids=batch.input_ids, attention_mask=batch.attention_mask)
            run.losses(step, components=components, weights=weights, total=total)
        if faults is None or bool(torch.isfinite(total)):  # planted NaN steps are skipped
            total.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)  # 0-d, pre-clip
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        step_s = time.perf_counter() - step_start
        tokens_seen += batch.num_tokens
        run.log(
            {
                "loss": view.loss.detach(),
                "lr": lr,
                "token_acc": view.acc,
                "grad_norm": grad_norm.detach(),
                "tokens_per_s": batch.num_tokens / step_s,
                "supervised_tokens_per_s": batch.num_supervised / step_s,
            },
            step=step,
        )
        history[step, 0] = view.loss.detach()
        history[step, 1] = view.acc
        last = step == steps - 1
        if fixed_eval is not None and ((step + 1) % eval_every == 0 or last):
            eval_start = time.perf_counter()
            result = run.evaluate(model, fixed_eval, step=step, checkpoint=f"step-{step}",
                                  em="teacher_forced", progress=eval_progress)
            if eval_done is not None:
                eval_done(step, result, time.perf_counter() - eval_start)

        if progress is not None and (last or (step + 1) % progress_every == 0):
            elapsed = time.perf_counter() - start
            progress(ProgressEvent(
                step=step, steps=steps, loss=float(view.loss.detach()), acc=float(view.acc),
                lr=lr, elapsed_s=elapsed, tokens_per_s=tokens_seen / elapsed,
            ))

    wall_s = time.perf_counter() - start
    model.eval()
    return DemoResult(
        steps=steps,
        wall_s=wall_s,
        tokens_per_s=tokens_seen / wall_s,
        losses=history[:, 0].tolist(),
        accs=history[:, 1].tolist(),
        setup=setup,
    )


@dataclass
class _Faults:
    """The faults `--plant-faults` adds; `nan_burst` is switched on for `nan_steps`."""

    nan_steps: range
    nan_burst: bool = False


def _plant_faults(model: torch.nn.Module, steps: int) -> _Faults:
    """Freeze one layer's adapters (LoRA scaling 0) and arm a NaN burst in another."""
    faults = _Faults(nan_steps=range(steps * 7 // 10, steps * 7 // 10 + 3))
    layers = [(n, m) for n, m in model.named_modules() if n.split(".")[-2:-1] == ["layers"]]
    if len(layers) < 2:
        raise TrainspectError("the demo model needs two decoder layers to plant faults in")
    for module in layers[0][1].modules():  # layer 0: its LoRA path contributes nothing
        scaling = getattr(module, "scaling", None)
        if isinstance(scaling, dict):
            for adapter in scaling:
                scaling[adapter] = 0.0

    def poison(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        if not faults.nan_burst:
            return None
        if isinstance(output, tuple):
            return (output[0] * float("nan"), *output[1:])
        return output * float("nan")

    layers[1][1].register_forward_hook(poison)  # layer 1 is where the NaNs start
    return faults
