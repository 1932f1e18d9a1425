"""Greedy answers from the demo model, to show what it learned in words, not numbers."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerFast

from trainspect.demo.tokenizer import prompt_text


@torch.no_grad()
def greedy_answer(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    prompt: str,
    max_new_tokens: int = 64,
) -> str:
    """The model's greedy continuation of `<bos>{prompt}<sep>`, up to `<eos>`, decoded."""
    ids = tokenizer.encode(prompt_text(prompt), add_special_tokens=False, return_tensors="pt")
    was_training = model.training
    model.eval()
    try:
        out = model.generate(
            input_ids=ids,  # (1, T)
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    finally:
        model.train(was_training)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
