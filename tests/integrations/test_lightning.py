"""The Lightning callback with a real LightningModule (CPU): a module whose forward returns
logits is observed from the hook, shifted, every micro-batch of an accumulation step
pooled; a training_step that returns its logits is observed as given; what the module
logs lands under its own name."""

from __future__ import annotations

import lightning as L
import pytest
import torch

import trainspect as ts  # noqa: E402
from tests.integrations.test_hf import LENGTH, VOCAB, Recorder, TokenData, reference, tiny_llama  # noqa: E402,E501
from trainspect.lightning import TrainspectCallback  # noqa: E402


class LitLM(L.LightningModule):
    """A causal LM called as self(**batch): the callback's forward hook sees it."""

    def __init__(self) -> None:
        super().__init__()
        self.save_hyperparameters({"lr": 5e-3})
        self.model = tiny_llama()

    def forward(self, **batch):
        return self.model(**batch)

    def training_step(self, batch, batch_idx):
        loss = self(**batch).loss
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr)


class ReturnsLogits(LitLM):
    """Calls the inner model directly (no hook fires) and returns aligned logits."""

    def training_step(self, batch, batch_idx):
        out = self.model(**batch)
        return {"loss": out.loss, "logits": out.logits[:, :-1].detach(),
                "labels": batch["labels"][:, 1:]}


def fit(module, **options):
    callback = TrainspectCallback(project="lit", log_every=2, **options)
    trainer = L.Trainer(max_steps=4, accumulate_grad_batches=2, accelerator="cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, log_every_n_steps=1, callbacks=[callback])
    loader = torch.utils.data.DataLoader(TokenData(16), batch_size=2)
    trainer.fit(module, loader)
    return callback


def check_windows(view, batches):
    assert len(batches) == 8  # 4 optimizer steps x 2 micro-batches
    for window, end in ((batches[:4], 2), (batches[4:], 4)):
        for metric, value in reference(window).items():
            got = dict(view.series(f"text/{metric}"))[end]
            assert got == pytest.approx(value, rel=1e-5, abs=1e-7), metric


def test_a_module_called_with_labels_is_observed_from_its_forward(runs):
    module = LitLM()
    recorder = Recorder(module.model)
    callback = fit(module)
    view = ts.open(runs).run(callback.run.id)
    assert view.status == "finished" and view.config["lr"] == 5e-3
    check_windows(view, recorder.batches)
    assert [s for s, _ in view.series("train/lr")] == [1, 2, 3, 4]
    assert len(view.series("train_loss")) >= 4
    assert "grad/norm" in view.keys()  # watch is on


def test_a_training_step_that_returns_logits_is_observed_as_given(runs):
    module = ReturnsLogits()
    recorder = Recorder(module.model)
    callback = fit(module, watch=False)
    view = ts.open(runs).run(callback.run.id)
    check_windows(view, recorder.batches)
    assert callback.capture is None and LENGTH and VOCAB
