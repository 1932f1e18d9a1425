"""Labels: -100 on prompt and padding, the response (and <eos>) supervised, shift-aligned."""

from __future__ import annotations

import torch

from trainspect.demo.batching import IGNORE_INDEX, batches, collate, encode
from trainspect.demo.data import Example


def _rows(tokenizer):
    examples = [
        Example("a", "What is 3 + 4?", "3 + 4 = 7.", "math"),
        Example("b", "Reverse the list: cup key star moon", "moon star key cup", "reasoning"),
        Example("c", "Count from 1 to 40.", ", ".join(str(i) for i in range(1, 41)), "math"),
    ]
    return [(ex.id, encode(ex, tokenizer)) for ex in examples]


def test_labels_mask_exactly_prompt_and_padding(tokenizer):
    rows = _rows(tokenizer)
    batch = collate(rows, tokenizer.pad_token_id, max_len=512)
    width = max(len(e.prompt_ids) + len(e.response_ids) for _, e in rows)
    assert batch.input_ids.shape == batch.labels.shape == (3, width)
    for row, (_, enc) in enumerate(rows):
        n_prompt, n_resp = len(enc.prompt_ids), len(enc.response_ids)
        n = n_prompt + n_resp
        labels = batch.labels[row].tolist()
        assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
        assert labels[n_prompt:n] == enc.response_ids
        assert labels[n:] == [IGNORE_INDEX] * (width - n)
        assert batch.input_ids[row, n:].eq(tokenizer.pad_token_id).all()
        assert batch.attention_mask[row].tolist() == [1] * n + [0] * (width - n)
        assert enc.response_ids[-1] == tokenizer.eos_token_id
    assert batch.num_tokens == int(batch.attention_mask.sum())
    assert batch.num_supervised == int((batch.labels != IGNORE_INDEX).sum())


def test_response_decodes_back_and_sep_ends_the_prompt(tokenizer):
    (_, enc), *_ = _rows(tokenizer)
    assert tokenizer.convert_ids_to_tokens(enc.prompt_ids[-1]) == "<sep>"
    assert tokenizer.decode(enc.response_ids, skip_special_tokens=True) == "3 + 4 = 7."


def test_shifted_labels_are_the_next_input_token(tokenizer):
    batch = collate(_rows(tokenizer), tokenizer.pad_token_id, max_len=512)
    inputs_next, labels = batch.input_ids[:, 1:], batch.labels[:, 1:]  # as the loop aligns them
    supervised = labels != IGNORE_INDEX
    assert torch.equal(labels[supervised], inputs_next[supervised])
    assert int(supervised.sum()) == batch.num_supervised  # position 0 is never supervised


def test_long_rows_are_cut_at_max_len(tokenizer):
    rows = _rows(tokenizer)
    batch = collate(rows, tokenizer.pad_token_id, max_len=24)
    assert batch.input_ids.shape == (3, 24)
    _, long = rows[2]
    assert batch.labels[2, len(long.prompt_ids):].tolist() == long.response_ids[
        : 24 - len(long.prompt_ids)]


def test_batches_are_deterministic_and_full(rows, tokenizer):
    first = [b.ids for b, _ in zip(batches(rows[:100], tokenizer, batch_size=16, max_len=128,
                                           seed=1), range(8))]
    again = [b.ids for b, _ in zip(batches(rows[:100], tokenizer, batch_size=16, max_len=128,
                                           seed=1), range(8))]
    assert first == again
    assert all(len(ids) == 16 for ids in first)
    assert len(set(first[0] + first[1] + first[2] + first[3] + first[4] + first[5])) == 96
