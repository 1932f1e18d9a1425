"""Lightning: all of trainspect from one callback.

    from trainspect.lightning import TrainspectCallback
    trainer = L.Trainer(callbacks=[TrainspectCallback(project="qwen-lora", tokenizer=tok)])

What it does:

- `setup` (every rank, once the process group exists) starts the run (`ts.init` with the
  callback's keyword arguments; the module's hyperparameters become the run's config),
  calls `watch` on the LightningModule and hooks its forward (capture.py): a module
  called as `self(input_ids=..., labels=...)` that returns `.logits` is observed, shifted
  for causal LMs, at the optimizer step the batch contributes to.
- A `training_step` may instead return `{"loss": loss, "logits": logits, "labels": labels}`
  (optionally `input_ids`, `attention_mask`): those are observed as given, aligned by you,
  exactly like `run.observe`. Used only when the forward hook saw nothing in that batch.
- What the module logs with `self.log` (`trainer.callback_metrics`) is recorded under its
  own name at `trainer.global_step` when it changes, with the learning rate as `train/lr`.
- With `fixed_eval=` the fixed eval runs after each validation, or every
  `fixed_eval_every` steps, on `eval_model` (an attribute name of the module holding
  a causal LM, e.g. "model"; default: the module itself), named like Lightning's
  checkpoint files (`epoch=E-step=S`).
- `on_fit_end` finishes the run; `callback.run` stays readable.

Needs `pip install 'trainspect[lightning]'` (the `lightning` package).
"""

from __future__ import annotations

import os
from typing import Any

from trainspect.errors import TrainspectError

try:
    from lightning.pytorch import Callback
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("trainspect.lightning needs Lightning: pip install "
                      "'trainspect[lightning]'") from err

from trainspect.integrations.callbacks import (
    fused_loss_option,
    hold_settings,
    start_watching,
    stop_watching,
)
from trainspect.integrations.capture import LogitsCapture


class TrainspectCallback(Callback):
    """A `lightning.pytorch.Callback` that records the run (see the module docstring).

    Args: `ts.init`'s arguments (project, name, config, dir, tokenizer, log_every, ...),
    and:
        fixed_eval: a FixedEval, a JSONL path, or None.
        fixed_eval_every: run it every this many steps; None: after each validation.
        eval_model: the module's attribute holding the causal LM to evaluate.
        eval_batch_size: examples per forward of the fixed eval.
        watch: attach `run.watch` to the module (or a dict of its keyword arguments).
        stream: the stream name of the observed logits.
        shift_labels: None guesses from the model (causal LMs shift); True or False forces.
        fused_loss: give the model's causal LM (Llama, Mistral, Qwen2/3, Gemma families)
            the fused loss of `trainspect.hf.use_fused_loss`: no logits in training, every
            token statistic from the loss's pass (a dict passes `max_chunk_bytes`).
    """

    def __init__(self, project: str = "default", name: str | None = None,
                 config: dict[str, Any] | None = None, dir: str | os.PathLike | None = None,
                 *, fixed_eval: Any = None, fixed_eval_every: int | None = None,
                 eval_model: str | None = None, eval_batch_size: int = 8,
                 watch: bool | dict[str, Any] = True, stream: str = "text",
                 shift_labels: bool | None = None, fused_loss: bool | dict[str, Any] = False,
                 **init_kwargs: Any) -> None:
        hold_settings(self, project, name, config, dir, fixed_eval=fixed_eval,
                      fixed_eval_every=fixed_eval_every, eval_batch_size=eval_batch_size,
                      watch=watch, stream=stream, shift_labels=shift_labels,
                      init_kwargs=init_kwargs)
        self.fused_loss = fused_loss_option(fused_loss)
        self.eval_model = eval_model
        self.capture: LogitsCapture | None = None
        self._trainer: Any = None
        self._batch_step = 0
        self._seen_before = 0
        self._logged: dict[str, Any] = {}
        self._eval_failed = False

    # ---- start and end -----------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        import trainspect as ts

        if stage != "fit" or (self.run is not None and not self.run._finished):
            return
        config = self.config
        if config is None:
            hparams = getattr(pl_module, "hparams", None)
            config = {"module": type(pl_module).__name__, **(dict(hparams) if hparams else {})}
        self.run = ts.init(self.project, self.name, config, self.dir, **self.init_kwargs)
        self._trainer = trainer
        self._logged = {}
        start_watching(self, pl_module)

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        stop_watching(self)

    def _step(self) -> int:
        """The optimizer step the current batch contributes to."""
        return self._trainer.global_step + 1

    # ---- per batch ---------------------------------------------------------------------

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any,
                             batch_idx: int) -> None:
        self._batch_step = trainer.global_step + 1
        self._seen_before = self.capture.observed if self.capture is not None else 0

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.run is None:
            return
        hooked = self.capture is not None and self.capture.observed > self._seen_before
        if not hooked and isinstance(outputs, dict) and "logits" in outputs:
            self._observe_outputs(outputs)
        stepped = trainer.global_step == self._batch_step  # an optimizer step just ended
        self._log_metrics(trainer, stepped)
        every = self.fixed_eval_every
        if stepped and every is not None and trainer.global_step % every == 0:
            self._evaluate(trainer, pl_module)

    def _observe_outputs(self, outputs: dict) -> None:
        import torch

        with torch.no_grad():
            self.run.observe(self._batch_step, logits=outputs["logits"],
                             labels=outputs.get("labels"), stream=self.stream,
                             input_ids=outputs.get("input_ids"),
                             attention_mask=outputs.get("attention_mask"))

    def _log_metrics(self, trainer: Any, stepped: bool) -> None:
        """What the module logged, once per new value, and the learning rate per step."""
        values: dict[str, Any] = {}
        for key, value in trainer.callback_metrics.items():
            if self._logged.get(key) is not value:
                self._logged[key] = value
                values[key] = value
        optimizers = getattr(trainer, "optimizers", None) or []
        if stepped and optimizers and optimizers[0].param_groups:
            values["train/lr"] = float(optimizers[0].param_groups[0]["lr"])
        if values:
            self.run.log(values, step=trainer.global_step)

    # ---- the fixed eval -----------------------------------------------------------------

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if self.fixed_eval_every is None and not trainer.sanity_checking:
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: Any, pl_module: Any) -> None:
        if self.fixed_eval is None or self.run is None or self.run._finished:
            return
        model = getattr(pl_module, self.eval_model) if self.eval_model else pl_module
        step = trainer.global_step
        evaluate = self.run.evaluate
        try:
            evaluate(model, self.fixed_eval, step=step,
                     checkpoint=f"epoch={trainer.current_epoch}-step={step}",
                     batch_size=self.eval_batch_size)
        except TrainspectError as err:
            if not self._eval_failed:
                self._eval_failed = True
                self.run.alert(f"the fixed eval could not run: {err}", level="warning",
                               action="Fix the fixed_eval arguments of TrainspectCallback.")
