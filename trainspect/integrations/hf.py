"""Hugging Face Trainer and TRL's SFTTrainer: all of trainspect from one callback.

    from trainspect.hf import TrainspectCallback
    trainer = Trainer(model=model, args=args, train_dataset=ds,
                      callbacks=[TrainspectCallback(project="qwen-lora", tokenizer=tok)])

What it does, with no Trainer subclass:

- `on_train_begin` starts the run (`ts.init` with the callback's keyword arguments; the
  training arguments and model config become the run's config), calls `watch` on the
  model (LoRA deltas, gradients, hidden states, throughput), and hooks the model's
  forward: each training forward's logits and labels go to `run.observe`, shifted for
  causal LMs, at the optimizer step they belong to (`state.global_step + 1`), so every
  micro-batch of a gradient-accumulation step is pooled (capture.py).
- `on_log` records the Trainer's scalars at `state.global_step`: `train/loss`,
  `train/lr`, `train/grad_norm`, `train/epoch` and the rest under `train/`; the
  Trainer's own eval metrics (`eval_loss`, ...) under `val/`. They are averaged over
  ranks by the Trainer already.
- With `fixed_eval=` (a FixedEval or a JSONL path) the fixed eval runs whenever the
  Trainer evaluates, or every `fixed_eval_every` steps, named after the checkpoint the
  Trainer saves at that step (`checkpoint-<global_step>`); `on_save` records every
  checkpoint name in the run's metadata.
- `on_train_end` finishes the run; `callback.run` stays readable.

Every rank calls the callback; rank 0 writes (trainspect.distributed).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from trainspect.errors import TrainspectError

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("trainspect.hf needs transformers: pip install 'trainspect[hf]'") from err

from trainspect.integrations.callbacks import (
    fused_loss_option,
    hold_settings,
    start_watching,
    stop_watching,
)
from trainspect.integrations.capture import LogitsCapture

log = logging.getLogger("trainspect.integrations.hf")

# The Trainer's log keys, as trainspect names them (others: "train/<key>", "val/<key>").
LOG_NAMES = {"loss": "train/loss", "learning_rate": "train/lr", "grad_norm": "train/grad_norm",
             "epoch": "train/epoch",
             "train_loss": "train/loss_mean"}  # the run's mean, logged once at the end


def scalar_name(key: str) -> str:
    """`loss` -> `train/loss`, `eval_loss` -> `val/loss`, `train_runtime` -> `train/runtime`.

    `train_loss`, the mean over the whole run logged at its end, is `train/loss_mean`:
    it must not land on `train/loss` at the last step.
    """
    if key in LOG_NAMES:
        return LOG_NAMES[key]
    for prefix, family in (("eval_", "val/"), ("train_", "train/")):
        if key.startswith(prefix):
            return family + key[len(prefix):]
    return "train/" + key


class TrainspectCallback(TrainerCallback):
    """A `transformers.TrainerCallback` that records the run (see the module docstring).

    Args: `ts.init`'s arguments (project, name, config, dir, tokenizer, log_every, ...),
    and:
        fixed_eval: a FixedEval, a JSONL path, or None.
        fixed_eval_every: run it every this many steps; None: when the Trainer evaluates.
        eval_batch_size: examples per forward of the fixed eval.
        watch: attach `run.watch` to the model (or a dict of its keyword arguments).
        stream: the stream name of the captured logits.
        shift_labels: None guesses from the model (causal LMs shift); True or False forces.
        fused_loss: give the model's causal LM (Llama, Mistral, Qwen2/3, Gemma families)
            the fused loss of `trainspect.hf.use_fused_loss`: no logits in training, every
            token statistic from the loss's pass (a dict passes `max_chunk_bytes`).
    """

    def __init__(self, project: str = "default", name: str | None = None,
                 config: dict[str, Any] | None = None, dir: str | os.PathLike | None = None,
                 *, fixed_eval: Any = None, fixed_eval_every: int | None = None,
                 eval_batch_size: int = 8, watch: bool | dict[str, Any] = True,
                 stream: str = "text", shift_labels: bool | None = None,
                 fused_loss: bool | dict[str, Any] = False, **init_kwargs: Any) -> None:
        hold_settings(self, project, name, config, dir, fixed_eval=fixed_eval,
                      fixed_eval_every=fixed_eval_every, eval_batch_size=eval_batch_size,
                      watch=watch, stream=stream, shift_labels=shift_labels,
                      init_kwargs=init_kwargs)
        self.fused_loss = fused_loss_option(fused_loss)
        self.capture: LogitsCapture | None = None
        self.checkpoints: dict[str, str] = {}
        self._state: Any = None
        self._eval_failed = False

    # ---- start and end -----------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       **kwargs: Any) -> None:
        import trainspect as ts

        if self.run is not None and not self.run._finished:
            return  # a second train() call on the same trainer goes on in the same run
        tokenizer = self.init_kwargs.get("tokenizer")
        if tokenizer is None:
            given = kwargs.get("processing_class") or kwargs.get("tokenizer")
            tokenizer = getattr(given, "tokenizer", given)  # a processor holds one
        init_kwargs = {**self.init_kwargs, "tokenizer": tokenizer}
        self.run = ts.init(self.project, self.name, self.config or trainer_config(args, model),
                           self.dir, **init_kwargs)
        self._state = state
        self.checkpoints = {}
        if model is None:
            return
        start_watching(self, model)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        stop_watching(self)

    def _step(self) -> int:
        """The optimizer step the current forward contributes to."""
        return self._state.global_step + 1

    # ---- scalars and checkpoints --------------------------------------------------------

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
               **kwargs: Any) -> None:
        if self.run is None or not logs:
            return
        values = {scalar_name(k): float(v) for k, v in logs.items()
                  if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            self.run.log(values, step=state.global_step)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.run is None:
            return
        self.checkpoints[str(state.global_step)] = f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        set_meta = getattr(self.run, "set_meta", None) or self.run._writer.set_meta
        set_meta(checkpoints=dict(self.checkpoints))

    # ---- the fixed eval -----------------------------------------------------------------

    def on_evaluate(self, args: Any, state: Any, control: Any, model: Any = None,
                    **kwargs: Any) -> None:
        if self.fixed_eval_every is None:
            self._evaluate(model, state, control)

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None,
                    **kwargs: Any) -> None:
        every = self.fixed_eval_every
        if every is not None and state.global_step % every == 0:
            self._evaluate(model, state, control)

    def _evaluate(self, model: Any, state: Any, control: Any) -> None:
        if self.fixed_eval is None or self.run is None or model is None or self.run._finished:
            return
        step = state.global_step
        # the Trainer evaluates before it saves: a save due at this step names these weights
        checkpoint = f"{PREFIX_CHECKPOINT_DIR}-{step}" if control.should_save else None
        evaluate = self.run.evaluate
        try:
            evaluate(model, self.fixed_eval, step=step, checkpoint=checkpoint,
                     batch_size=self.eval_batch_size)
        except TrainspectError as err:  # bad arguments: say it once, keep training
            if not self._eval_failed:
                self._eval_failed = True
                self.run.alert(f"the fixed eval could not run: {err}", level="warning",
                               action="Fix the fixed_eval arguments of TrainspectCallback.")


def trainer_config(args: Any, model: Any) -> dict[str, Any]:
    """The run's config: the training arguments and the model's class and config."""
    config: dict[str, Any] = {}
    to_dict = getattr(args, "to_sanitized_dict", None)
    if callable(to_dict):
        config["training_args"] = to_dict()
    if model is not None:
        described: dict[str, Any] = {"class": type(model).__name__}
        model_config = getattr(model, "config", None)
        diff = getattr(model_config, "to_diff_dict", None)
        if callable(diff):
            described.update(diff())
        config["model"] = described
    return config
