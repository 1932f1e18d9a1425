"""The trainers with `fused_loss=True`: the HF Trainer, TRL's SFTTrainer and Lightning train
exactly as without it, never build logits, and the run holds the full statistics
(calibration, confident-wrong, samples) that `run.observe` records on the logits the
model would have produced at that moment, recomputed independently by a tap."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

import trainspect as ts
from tests.integrations.test_hf import LENGTH, VOCAB, TokenData, tiny_llama, training_args
from tests.linear_ce.helpers import assert_close_samples, assert_close_series, stored
from trainspect.hf import TrainspectCallback
from trainspect.integrations.fused_loss import find_causal_lm


class LogitsTap:
    """Before each training forward of the causal LM, its logits from its own modules
    (no grad): what `run.observe` would have been given, with the step."""

    def __init__(self, model, step_of) -> None:
        self.lm = find_causal_lm(model)
        self.step_of = step_of
        self.seen: list[tuple] = []
        self.outputs: list = []
        self.lm.register_forward_pre_hook(self._before, with_kwargs=True)
        self.lm.register_forward_hook(self._after)

    def _before(self, module, args, kwargs):
        if not module.training or kwargs.get("labels") is None:
            return
        with torch.no_grad():
            hidden = module.model(input_ids=kwargs["input_ids"],
                                  attention_mask=kwargs.get("attention_mask")).last_hidden_state
            logits = module.lm_head(hidden)
        self.seen.append((self.step_of(), logits[:, :-1].clone(), kwargs["labels"][:, 1:].clone(),
                          kwargs["input_ids"].clone(), kwargs.get("attention_mask")))

    def _after(self, module, args, output):
        if module.training:
            self.outputs.append(output)

    def replay(self, name: str, project: str, **init) -> None:
        """The reference run: run.observe on the tapped logits at their steps."""
        with ts.init(project=project, name=name, **init) as run:
            for step, logits, labels, ids, mask in self.seen:
                run.observe(step, logits, labels, input_ids=ids, attention_mask=mask)


def check_full_statistics(runs, project: str, fused_name: str, steps: list[int]) -> None:
    ref, got = stored(runs, "reference", project), stored(runs, fused_name, project)
    keys = sorted(k for k in ref if k.startswith("text/"))
    assert {"text/ece", "text/confident_wrong", "text/conf", "text/target_conf",
            "text/ce_ema"} <= set(keys)
    assert [s for s, _ in ref["text/acc"]] == steps
    assert_close_series(ref, got, rel=1e-5, keys=keys)
    assert got["_calibration"] is not None
    assert_close_samples(ref["_samples"], got["_samples"])


def test_hf_trainer_with_accumulation_records_everything_without_logits(runs, tmp_path):
    model = tiny_llama()
    callback = TrainspectCallback(project="hf", name="fused", log_every=2, samples_every=2,
                                  num_samples=2, watch=False, fused_loss=True)
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path),
                                   train_dataset=TokenData(16), callbacks=[callback])
    tap = LogitsTap(model, lambda: trainer.state.global_step + 1)
    trainer.train()
    assert len(tap.outputs) == 8 and all(out.logits is None for out in tap.outputs)
    tap.replay("reference", "hf", log_every=2, samples_every=2, num_samples=2)
    check_full_statistics(runs, "hf", "fused", [2, 4])
    assert model.forward.__func__ is type(model).forward  # removed at train end


def sft(tmp_path, fused: bool, liger: bool = False):
    import datasets
    import trl
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(VOCAB)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="t3"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="t0",
                                               bos_token="t1", eos_token="t2", unk_token="t3")
    data = datasets.Dataset.from_dict({"input_ids": TokenData(8).ids.tolist()})
    callback = TrainspectCallback(project="trl", name="fused" if fused else "trl", log_every=2,
                                  samples_every=2, num_samples=2, watch=False, fused_loss=fused)
    args = trl.SFTConfig(output_dir=str(tmp_path / f"sft{fused}"), max_steps=4,
                         per_device_train_batch_size=2, report_to="none",
                         use_cpu=not torch.cuda.is_available(), logging_steps=1,
                         save_strategy="no", disable_tqdm=True, dataset_num_proc=None,
                         max_length=LENGTH, learning_rate=5e-3, seed=0,
                         use_liger_kernel=liger)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.SFTTrainer(model=tiny_llama(), args=args, train_dataset=data,
                                 processing_class=tok, callbacks=[callback])
        tap = LogitsTap(trainer.model, lambda: trainer.state.global_step + 1)
        trainer.train()
    return trainer, tap


def trl_logged(trainer, key: str) -> list[float]:
    return [h[key] for h in trainer.state.log_history if key in h and "train_runtime" not in h]


def check_sft(runs, tmp_path, liger: bool) -> None:
    plain, _ = sft(tmp_path, fused=False, liger=liger)
    fused, tap = sft(tmp_path, fused=True, liger=liger)
    # training is unchanged: TRL's own loss, entropy, accuracy and gradient norm at every
    # step (the unpatched forward rounds differently in its attention path, so the two
    # trajectories part at the 1e-5 level and drift a little over the steps)
    for key, rel in (("loss", 1e-3), ("entropy", 1e-3), ("mean_token_accuracy", 1e-3),
                     ("grad_norm", 1e-2)):
        want, got = trl_logged(plain, key), trl_logged(fused, key)
        assert len(got) == 4 and got == pytest.approx(want, rel=rel, abs=1e-6), key
    # and TRL's per-step numbers are the ones our pass recorded, window by window
    view = {v.name: v for v in ts.open(runs).runs(project="trl")}["fused"]
    for ours, theirs in (("text/ce", "loss"), ("text/entropy", "entropy"),
                         ("text/acc", "mean_token_accuracy")):
        per_step = trl_logged(fused, theirs)
        windows = [sum(per_step[:2]) / 2, sum(per_step[2:]) / 2]
        assert [v for _, v in view.series(ours)] == pytest.approx(windows, rel=1e-5, abs=1e-7)
    assert len(tap.outputs) == 4 and all(not hasattr(o, "logits") for o in tap.outputs)
    tap.replay("reference", "trl", log_every=2, samples_every=2, num_samples=2,
               tokenizer=fused.processing_class)
    check_full_statistics(runs, "trl", "fused", [2, 4])


def test_trl_sft_trainer_records_everything_from_its_fused_head(runs, tmp_path):
    check_sft(runs, tmp_path, liger=False)


@pytest.mark.gpu
def test_trl_sft_trainer_with_liger_kernels_records_everything(runs, tmp_path):
    """use_liger_kernel=True: Liger's layer kernels (Triton, so CUDA), TRL's fused head."""
    check_sft(runs, tmp_path, liger=True)


def test_lightning_module_records_everything_without_logits(runs):
    import lightning as L

    from trainspect.lightning import TrainspectCallback as LightningCallback

    class LitLM(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = tiny_llama()

        def training_step(self, batch, batch_idx):
            return self.model(**batch).loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=5e-3)

    module = LitLM()
    callback = LightningCallback(project="lit", name="fused", log_every=2, samples_every=2,
                                 num_samples=2, watch=False, fused_loss=True)
    trainer = L.Trainer(max_steps=4, accumulate_grad_batches=2, accelerator="cpu", devices=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    tap = LogitsTap(module, lambda: trainer.global_step + 1)
    trainer.fit(module, torch.utils.data.DataLoader(TokenData(16), batch_size=2))
    assert len(tap.outputs) == 8 and all(out.logits is None for out in tap.outputs)
    tap.replay("reference", "lit", log_every=2, samples_every=2, num_samples=2)
    check_full_statistics(runs, "lit", "fused", [2, 4])


def test_an_unsupported_model_falls_back_to_the_logits_with_one_alert(runs, tmp_path):
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2, n_positions=LENGTH))
    callback = TrainspectCallback(project="hf", log_every=2, watch=False, fused_loss=True)
    transformers.Trainer(model=model, args=training_args(tmp_path, max_steps=2),
                         train_dataset=TokenData(8), callbacks=[callback]).train()
    view = ts.open(runs).run(callback.run.id)
    assert [a["rule"] for a in view.alerts()] == ["user"]
    assert "fused_loss is off" in view.alerts()[0]["message"]
    assert "text/ece" in view.keys()  # observed from the logits instead
    with pytest.raises(ts.TrainspectError, match="fused_loss"):
        TrainspectCallback(fused_loss="yes")
