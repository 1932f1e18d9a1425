"""Turn examples into padded, labelled tensors for a causal LM.

`labels` has the same shape as `input_ids` and copies it on response tokens
(the answer and its `<eos>`); prompt tokens (`<bos>`, the prompt, `<sep>`) and
padding are -100, the ignore index of PyTorch and Hugging Face. The causal shift
is left to the loop (`logits[:, :-1]` against `labels[:, 1:]`), which is the
alignment `run.observe` expects from a caller.

Rows longer than `max_len` are cut at the right, as SFT trainers do: a long
answer is then supervised on its first tokens only.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast

from trainspect.demo.data import Example
from trainspect.demo.tokenizer import prompt_text

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """One example as token ids: the prompt part and the response part."""

    prompt_ids: list[int]
    """`<bos>{prompt}<sep>`: conditioning only, never supervised."""
    response_ids: list[int]
    """`{response}<eos>`: the supervised tokens."""


@dataclass(frozen=True)
class Batch:
    """A padded batch; token counts are host ints so logging them costs no sync."""

    input_ids: torch.Tensor
    """(B, T) int64, right-padded with the pad id."""
    attention_mask: torch.Tensor
    """(B, T) int64, 1 on real tokens."""
    labels: torch.Tensor
    """(B, T) int64, the token on response positions, -100 on prompt and padding."""
    num_tokens: int
    """Real (non-pad) tokens in the batch."""
    num_supervised: int
    """Positions with a label; after the causal shift every one of them is predicted."""
    ids: tuple[str, ...]
    """Example ids, row by row."""


def encode(example: Example, tokenizer: PreTrainedTokenizerFast) -> Encoded:
    """Tokenize prompt and response apart, so the supervision boundary is exact."""
    prompt_ids = tokenizer.encode(prompt_text(example.prompt), add_special_tokens=False)
    response_ids = tokenizer.encode(example.response, add_special_tokens=False)
    return Encoded(prompt_ids, response_ids + [tokenizer.eos_token_id])


def collate(rows: Sequence[tuple[str, Encoded]], pad_id: int, max_len: int) -> Batch:
    """Pad `(id, encoded)` rows to the longest (at most `max_len`) and build labels."""
    seqs = [(e.prompt_ids + e.response_ids)[:max_len] for _, e in rows]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)  # (B, T)
    supervised = 0
    for row, ((_, enc), seq) in enumerate(zip(rows, seqs)):
        n_prompt = min(len(enc.prompt_ids), len(seq))
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention_mask[row, : len(seq)] = 1
        labels[row, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:], dtype=torch.long)
        supervised += len(seq) - n_prompt
    return Batch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        num_tokens=sum(len(s) for s in seqs),
        num_supervised=supervised,
        ids=tuple(i for i, _ in rows),
    )


def batches(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerFast,
    *,
    batch_size: int,
    max_len: int,
    seed: int,
) -> Iterator[Batch]:
    """Endless shuffled batches: a fresh permutation per epoch, drawn from `seed`."""
    encoded = [(ex.id, encode(ex, tokenizer)) for ex in examples]
    rng = random.Random(seed)
    while True:
        order = list(range(len(encoded)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):  # drop the ragged tail
            rows = [encoded[i] for i in order[start : start + batch_size]]
            yield collate(rows, tokenizer.pad_token_id, max_len)
