"""`use_fused_loss` on tiny random-init models of each supported transformers family:
patched and unpatched give the same loss and gradients, and the patched model records
what `run.observe` records on the unpatched model's logits, without building them."""

from __future__ import annotations

import pytest
import torch
import transformers

import trainspect as ts
from tests.linear_ce.helpers import assert_close_samples, assert_close_series, stored
from trainspect.hf import use_fused_loss
from trainspect.integrations.fused_loss import find_causal_lm

VOCAB, B, T = 48, 3, 10
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {"head_dim": 8}),
    # a cap small enough to bend these logits, so a missed soft-cap would show
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8,
                                                     "final_logit_softcapping": 3.0}),
}


def tiny(family: str, seed: int = 0):
    config_name, model_name, extra = FAMILIES[family]
    config = getattr(transformers, config_name)(**COMMON, **extra)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config)
    with torch.no_grad():  # a head that predicts something: statistics away from uniform
        model.get_output_embeddings().weight.mul_(25.0)
    return model.train()


def batch(step: int) -> dict:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    labels = ids.clone()
    labels[:, :3] = -100
    mask = torch.ones(B, T, dtype=torch.long)
    mask[-1, -2:] = 0
    labels[-1, -2:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def grads(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_patched_model_matches_the_unpatched_one(runs, family):
    steps = (1, 2, 3)
    plain, fused = tiny(family), tiny(family)
    run_kwargs = dict(project="lce", log_every=2, samples_every=2, num_samples=2)
    with ts.init(name="observe", **run_kwargs) as run:
        for step in steps:
            data = batch(step)
            out = plain(**data)
            out.loss.backward()
            run.observe(step, out.logits[:, :-1], data["labels"][:, 1:],
                        input_ids=data["input_ids"], attention_mask=data["attention_mask"])
            if step == steps[-1]:
                plain_loss, plain_grads = out.loss.detach(), grads(plain)
            plain.zero_grad()
    with ts.init(name="fused", **run_kwargs) as run:
        current = {"step": 0}
        handle = use_fused_loss(fused, run, step_of=lambda: current["step"])
        for step in steps:
            current["step"] = step
            out = fused(**batch(step))
            assert out.logits is None
            out.loss.backward()
            if step == steps[-1]:
                fused_loss, fused_grads = out.loss.detach(), grads(fused)
            fused.zero_grad()
        assert handle.calls == len(steps)
        handle.remove()
    assert torch.allclose(fused_loss, plain_loss, rtol=1e-5)
    assert plain_grads.keys() == fused_grads.keys() and len(plain_grads) > 10
    for name, g in plain_grads.items():
        assert torch.allclose(fused_grads[name], g, rtol=1e-4, atol=1e-6), name
    ref, got = stored(runs, "observe"), stored(runs, "fused")
    assert_close_series(ref, got, rel=1e-5)
    assert ref["text/conf"][-1][1] > 0.06  # far from uniform (1/48): the cap and head matter
    assert_close_samples(ref["_samples"], got["_samples"])
    # after remove() the model builds its logits again
    assert fused(**batch(1)).logits.shape == (B, T, VOCAB)


def test_num_items_in_batch_sums_like_the_model_own_loss():
    plain, fused = tiny("llama"), tiny("llama")
    data = batch(4)
    count = torch.tensor(41.0)
    want = plain(**data, num_items_in_batch=count).loss
    use_fused_loss(fused)
    got = fused(**data, num_items_in_batch=count).loss
    assert torch.allclose(got, want, rtol=1e-5)


def test_eval_mode_and_calls_without_labels_run_the_original_forward():
    model = tiny("qwen2")
    use_fused_loss(model)
    data = batch(5)
    assert model(**data).logits is None
    model.eval()
    assert model(**data).logits.shape == (B, T, VOCAB)
    model.train()
    assert model(input_ids=data["input_ids"]).logits.shape == (B, T, VOCAB)


def test_peft_wrappers_are_looked_through_and_unsupported_models_refused():
    import peft  # noqa: F401 - installed by .[dev]
    from peft import LoraConfig, get_peft_model

    base = tiny("llama")
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert find_causal_lm(model) is base
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ts.TrainspectError, match="llama, mistral"):
        use_fused_loss(gpt2)
    handle = use_fused_loss(model)
    with pytest.raises(ts.TrainspectError, match="already has the fused loss"):
        use_fused_loss(model)
    handle.remove()
