"""A PEFT-wrapped tiny Llama: batched, left-padded greedy decoding with the KV cache gives
exactly what Hugging Face's `generate` gives one prompt at a time, and the model comes
back in training mode with its LoRA weights untouched."""

from __future__ import annotations

import warnings

import peft
import pytest
import torch
import transformers

import trainspect as ts  # noqa: E402
from tests.eval.helpers import VOCAB, CharTokenizer  # noqa: E402
from trainspect.eval import FixedEval  # noqa: E402
from trainspect.eval.evaluate import evaluate  # noqa: E402

PROMPTS = [  # prompts of different lengths, so a batch is left-padded
    ("what is three times four?", "twelve."),
    ("capital of peru?", "lima."),
    ("a poem about a fox", "a fox in snow."),
    ("why is the sky blue?", "scattering."),
    ("reverse: cat dog", "dog cat"),
]


@pytest.fixture(scope="module")
def setup():
    return build()


def build():
    tok = CharTokenizer()  # every token sequence of letters round-trips through it
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, attn_implementation="sdpa",
        initializer_range=0.5)  # large random weights: varied, non-repeating outputs
    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(config).double()  # float64: no near-ties to flip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = peft.get_peft_model(base, peft.LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
            task_type="CAUSAL_LM"))
    for name, param in model.named_parameters():  # LoRA B starts at 0: make it matter
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)
    return tok, model


def reference_outputs(model, tok, ev, extra):
    """Greedy continuations with HF generate, one unpadded prompt at a time."""
    outs = []
    for encoded in ev.encode(tok):
        ids = torch.tensor([encoded.prompt_ids])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=len(encoded.target_ids) + extra, do_sample=False,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        new = gen[0, ids.shape[1]:].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id)]
        outs.append(tok.decode(new, skip_special_tokens=True))
    return outs


def test_batched_cached_greedy_equals_generate(runs, setup):
    tok, model = setup
    ev = FixedEval([{"prompt": p, "response": r} for p, r in PROMPTS], tokenizer=tok,
                   extra_tokens=2)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora" in n}
    with ts.init(project="hf") as run:
        result = evaluate(run, model, ev, step=1, batch_size=3)  # 2 batches, mixed lengths
    assert model.training
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if "lora" in n)
    model.eval()
    with torch.no_grad():
        expected = reference_outputs(model, tok, ev, extra=2)
    assert [e.output for e in result.examples] == expected
    assert not any(e.em for e in result.examples)  # a random model says none of them


def test_an_answer_the_model_gives_and_ends_is_an_exact_match(runs, setup):
    """Make the model stop (eos takes the place of a token it says), then use what it says
    as the reference: EM is 1 there, and 0 for a reference one token longer."""
    import copy

    tok, model = setup
    model = copy.deepcopy(model).eval()
    found = None
    with torch.no_grad():
        for prompt, _ in PROMPTS:  # a prompt whose answer starts with letters, then a new one
            probe = FixedEval([{"prompt": prompt, "response": "x"}], tokenizer=tok)
            ids = torch.tensor([probe.encode(tok)[0].prompt_ids])
            said = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=8, do_sample=False, eos_token_id=None,
                                  pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
            cut = next((k for k in range(2, len(said)) if all(t > 2 for t in said[:k + 1])
                        and said[k] not in said[:k]), None)
            if cut is not None:
                found = (prompt, ids, said, cut)
                break
        if found is None:
            pytest.skip("the random model says no plain letters")
        prompt, ids, said, cut = found
        head = model.get_output_embeddings().weight
        # eos gets the row of the token said at `cut`: on the tie, argmax picks eos (the
        # lower id) exactly where the model would have said that token
        head[tok.eos_token_id] = head[said[cut]]
        ended = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                               max_new_tokens=20, do_sample=False, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)[0, ids.shape[1]:].tolist()
    assert ended == said[:cut] + [tok.eos_token_id]
    answer = tok.decode(said[:cut])
    ev = FixedEval([{"prompt": prompt, "response": answer},
                    {"prompt": prompt + " ", "response": answer},
                    {"prompt": PROMPTS[1][0], "response": PROMPTS[1][1]}], tokenizer=tok)
    with ts.init(project="hf") as run:
        greedy = evaluate(run, model, ev, step=1, batch_size=3)
        forced = evaluate(run, model, ev, step=2, batch_size=3, em="teacher_forced")
    assert greedy.examples[0].em and greedy.examples[0].output == answer
    assert forced.examples[0].em
    assert not greedy.examples[2].em and not forced.examples[2].em
    assert greedy.examples[1].em == (greedy.examples[1].output == answer)
