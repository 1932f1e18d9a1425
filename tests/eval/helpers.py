"""Test doubles for the fixed eval: a character tokenizer and a table-lookup language model.

`TableModel` returns, at every position, the row of a fixed (V, V) logits table picked
by the current input token: its argmax continuation is known in advance, so exact
match is hand-computable, and its logits are known exactly, so CE and ECE can be
checked against a float64 reference computed from the same table.
"""

from __future__ import annotations

import torch

PAD, BOS, EOS = 0, 1, 2
ALPHABET = "abcdefghijklmnopqrstuvwxyz .?:\n"  # ids 3 ... 33
VOCAB = 3 + len(ALPHABET)


class CharTokenizer:
    """One token per character; no chat template, so FixedEval uses the plain join."""

    pad_token_id, bos_token_id, eos_token_id = PAD, BOS, EOS

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [3 + ALPHABET.index(c) for c in text]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(ALPHABET[i - 3] for i in ids if i >= 3)


def tid(char: str) -> int:
    return 3 + ALPHABET.index(char)


def successor_map() -> dict[int, int]:
    """The continuation TableModel favours: a->b ... y->z, z->'.', '.'->eos, ' '->a, '?'->' '."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    nxt = {tid(a): tid(b) for a, b in zip(letters, letters[1:])}
    nxt.update({tid("z"): tid("."), tid("."): EOS, tid(" "): tid("a"), tid("?"): tid(" "),
                BOS: tid("a"), EOS: EOS, PAD: PAD})
    return nxt


def make_table(nxt: dict[int, int], vocab: int = VOCAB, bump: float = 6.0, noise: float = 0.5,
               seed: int = 0) -> torch.Tensor:
    """(V, V) float32 logits: random noise plus `bump` on the favoured next token."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(vocab, vocab, generator=gen) * noise
    for token, target in nxt.items():
        table[token, target] += bump
    return table


class TableModel(torch.nn.Module):
    """logits[b, t] = table[input_ids[b, t]]; records whether grad was on when called."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table.clone())
        self.inner = torch.nn.Linear(1, 1)  # a submodule, to check modes are restored
        self.grad_seen: list[bool] = []
        self.calls = 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> torch.Tensor:
        self.calls += 1
        self.grad_seen.append(torch.is_grad_enabled())
        return self.table[input_ids]  # (B, T, V)


def rows_for_hand_check() -> list[dict]:
    """Five rows whose greedy and teacher-forced exact match under successor_map are known."""
    return [
        {"id": "r1", "prompt": "wx", "response": "yz.", "pattern": "math"},  # match
        {"id": "r2", "prompt": "uv", "response": "wxyz.", "pattern": "math"},  # match
        {"id": "r3", "prompt": "ab", "response": "cdx.", "pattern": "reasoning"},  # 'x' != 'e'
        {"id": "r4", "prompt": "?", "response": " abc", "pattern": "creative"},  # never stops
        {"id": "r5", "prompt": "xy", "response": "z.", "pattern": "math"},  # match
    ]
