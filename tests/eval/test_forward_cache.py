"""The KV cache goes in under the name the model declares: no deprecation warning from
transformers on any fixed eval, and still the cached path (one position per step)."""

from __future__ import annotations

import inspect
import logging
import warnings

import torch
import transformers

import trainspect as ts
from tests.eval.test_hf import PROMPTS, build
from trainspect.eval import FixedEval
from trainspect.eval.evaluate import evaluate
from trainspect.eval.forward import cache_argument


def test_greedy_eval_gives_no_deprecation_warning(runs, caplog):
    tok, model = build()
    ev = FixedEval([{"prompt": p, "response": r} for p, r in PROMPTS], tokenizer=tok,
                   extra_tokens=2)
    lengths = []  # input length of each forward: 1 after the first step means the cache
    handle = model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
        with_kwargs=True)
    with ts.init(project="hf") as run, warnings.catch_warnings(record=True) as caught, \
            caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        evaluate(run, model, ev, step=1, batch_size=5)
    handle.remove()
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "deprecated" in m or "past_key_values" in m], messages
    assert lengths[0] > 1 and lengths[1] > 1 and set(lengths[2:]) == {1}  # forced, then cached


def test_the_cache_argument_is_found_through_wrappers():
    _, model = build()
    code = inspect.unwrap(transformers.LlamaForCausalLM.forward).__code__
    declared = "cache" if "cache" in code.co_varnames[:code.co_argcount] else "past_key_values"
    assert cache_argument(model) == declared  # PEFT's own forward declares neither

    class Wrapper(torch.nn.Module):  # DDP-like: the model is `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    class Plain(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, past_key_values=None):
            return input_ids

    class Newer(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None, cache=None):
            return input_ids

    assert cache_argument(Wrapper(model)) == declared
    assert cache_argument(Wrapper(Newer())) == "cache"
    assert cache_argument(Plain()) == "past_key_values"
    assert cache_argument(Wrapper(torch.nn.Identity())) == "past_key_values"  # neither
