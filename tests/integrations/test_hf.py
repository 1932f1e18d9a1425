"""The HF callback with a real transformers Trainer on a tiny random Llama (CPU): the logits
it observes are the ones the model produced in training, shifted, every micro-batch of a
gradient-accumulation step pooled at its optimizer step; the Trainer's scalars, the
fixed eval and checkpoint names land in the run; TRL's SFTTrainer works the same."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
import transformers

import trainspect as ts  # noqa: E402
from tests.eval.helpers import VOCAB as CHAR_VOCAB  # noqa: E402
from tests.eval.helpers import CharTokenizer  # noqa: E402
from trainspect.hf import TrainspectCallback  # noqa: E402
from trainspect.integrations.hf import scalar_name  # noqa: E402

VOCAB, LENGTH = 40, 12


def tiny_llama(seed: int = 0, vocab: int = VOCAB):
    config = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config)


class TokenData(torch.utils.data.Dataset):
    """Sequences of token ids; the first three positions are a prompt (labels -100)."""

    def __init__(self, n: int, seed: int = 0, vocab: int = VOCAB) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, vocab, (n, LENGTH), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict:
        labels = self.ids[i].clone()
        labels[:3] = -100
        return {"input_ids": self.ids[i], "labels": labels,
                "attention_mask": torch.ones(LENGTH, dtype=torch.long)}


def training_args(tmp_path, **overrides):
    options = dict(output_dir=str(tmp_path / "out"), max_steps=4, per_device_train_batch_size=2,
                   gradient_accumulation_steps=2, logging_steps=1, report_to="none",
                   save_strategy="no", use_cpu=True, learning_rate=5e-3, disable_tqdm=True,
                   seed=0, dataloader_num_workers=0)
    options.update(overrides)
    return transformers.TrainingArguments(**options)


class Recorder:
    """An independent forward hook: what each training forward really saw and produced."""

    def __init__(self, model) -> None:
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._labels = None
        model.register_forward_pre_hook(self._before, with_kwargs=True)
        model.register_forward_hook(self._after)

    def _before(self, module, args, kwargs):
        self._labels = kwargs.get("labels") if module.training else None

    def _after(self, module, args, output):
        if self._labels is not None:
            self.batches.append((output.logits.detach().double().clone(), self._labels.clone()))


def reference(batches) -> dict[str, float]:
    """Accuracy, CE and confidence of shifted logits, in float64."""
    logits = torch.cat([b[:, :-1].reshape(-1, VOCAB) for b, _ in batches])
    labels = torch.cat([y[:, 1:].reshape(-1) for _, y in batches])
    keep = labels != -100
    logits, labels = logits[keep], labels[keep]
    probs = logits.softmax(-1)
    return {"acc": (logits.argmax(-1) == labels).double().mean().item(),
            "ce": torch.nn.functional.cross_entropy(logits, labels).item(),
            "conf": probs.max(-1).values.mean().item(),
            "supervised_tokens": float(keep.sum())}


def test_trainer_with_gradient_accumulation_observes_every_micro_batch(runs, tmp_path):
    model = tiny_llama()
    recorder = Recorder(model)
    callback = TrainspectCallback(project="hf", log_every=2)
    trainer = transformers.Trainer(model=model, args=training_args(tmp_path),
                                   train_dataset=TokenData(16), callbacks=[callback])
    trainer.train()
    view = ts.open(runs).run(callback.run.id)
    assert view.status == "finished"
    # 4 optimizer steps x 2 micro-batches; windows of 2 steps hold 4 micro-batches each
    assert len(recorder.batches) == 8
    for window, end in ((recorder.batches[:4], 2), (recorder.batches[4:], 4)):
        expected = reference(window)
        for metric, value in expected.items():
            got = dict(view.series(f"text/{metric}"))[end]
            assert got == pytest.approx(value, rel=1e-5, abs=1e-7), metric
    # the Trainer's own scalars, at its steps
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert view.series("train/loss") == [(h["step"], pytest.approx(h["loss"]))
                                         for h in history]
    assert [s for s, _ in view.series("train/lr")] == [1, 2, 3, 4]
    assert "train/grad_norm" in view.keys() and "train/runtime" in view.keys()
    # watch is on: gradients and hidden states of the decoder layers
    assert "grad/norm" in view.keys()
    assert any(k.startswith("hidden/layers.1/") for k in view.keys())
    assert callback.capture is None  # hooks removed at train end


def test_the_fixed_eval_runs_every_n_steps_named_after_the_saved_checkpoint(runs, tmp_path):
    path = tmp_path / "fixed.jsonl"
    rows = [{"prompt": "ab", "response": "cd", "pattern": "math"},
            {"prompt": "xy", "response": "z.", "pattern": "reasoning"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    callback = TrainspectCallback(project="hf", tokenizer=CharTokenizer(), fixed_eval=path,
                                  fixed_eval_every=2, log_every=2, watch=False)
    model = tiny_llama(vocab=CHAR_VOCAB)  # every id decodes with the character tokenizer
    args = training_args(tmp_path, save_strategy="steps", save_steps=2,
                         gradient_accumulation_steps=1)
    transformers.Trainer(model=model, args=args, train_dataset=TokenData(8, vocab=CHAR_VOCAB),
                         callbacks=[callback]).train()
    view = ts.open(runs).run(callback.run.id)
    assert [s for s, _ in view.series("eval/em")] == [2, 4]
    assert view.meta["checkpoints"] == {"2": "checkpoint-2", "4": "checkpoint-4"}
    summary = view.meta["eval/summary"]
    assert set(summary["checkpoints"].values()) == {"checkpoint-2", "checkpoint-4"}
    assert (tmp_path / "out" / "checkpoint-4").is_dir()


def test_bad_arguments_are_one_clear_error():
    with pytest.raises(ts.TrainspectError, match="fixed_eval_every"):
        TrainspectCallback(fixed_eval_every=0)
    with pytest.raises(ts.TrainspectError, match="fixed_eval"):
        TrainspectCallback(fixed_eval=3)
    with pytest.raises(ts.TrainspectError, match="missing.jsonl"):
        TrainspectCallback(fixed_eval="missing.jsonl")


def test_trainer_log_keys_get_trainspect_names():
    assert [scalar_name(k) for k in ("loss", "learning_rate", "grad_norm", "eval_loss",
                                     "train_runtime", "total_flos", "train_loss")] == [
        "train/loss", "train/lr", "train/grad_norm", "val/loss", "train/runtime",
        "train/total_flos", "train/loss_mean"]


def test_trl_sft_trainer(runs, tmp_path):
    import datasets
    import trl
    from tokenizers import Tokenizer, models

    vocab = {f"t{i}": i for i in range(VOCAB)}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="t3"))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="t0",
                                               bos_token="t1", eos_token="t2", unk_token="t3")
    ids = TokenData(8).ids.tolist()
    data = datasets.Dataset.from_dict({"input_ids": ids})
    callback = TrainspectCallback(project="trl", log_every=2, watch=False)
    args = trl.SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=2,
                         per_device_train_batch_size=2, report_to="none", use_cpu=True,
                         logging_steps=1, save_strategy="no", disable_tqdm=True,
                         dataset_num_proc=None, max_length=LENGTH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trl.SFTTrainer(model=tiny_llama(), args=args, train_dataset=data,
                                 processing_class=tok, callbacks=[callback])
        trainer.train()
    view = ts.open(runs).run(callback.run.id)
    # TRL's fused LM head builds no logits: its per-token outputs are pooled instead.
    # Every label of a full sequence but the first is supervised (no prompt masking).
    assert view.series("text/supervised_tokens") == [(2, 2 * 2 * (LENGTH - 1))]
    # the window (steps 1-2, equal token counts) against TRL's own per-step numbers
    for ours, theirs in (("text/ce", "train/loss"), ("text/entropy", "train/entropy"),
                         ("text/acc", "train/mean_token_accuracy")):
        per_step = [v for _, v in view.series(theirs)]
        assert len(per_step) == 2, theirs
        assert view.series(ours)[0][1] == pytest.approx(np.mean(per_step), rel=1e-5, abs=1e-7)
    target_conf = view.series("text/target_conf")[0][1]
    assert 0.0 < target_conf < 1.0 and not math.isnan(target_conf)
