"""Memory does not grow with the eval set: logits are dropped batch by batch, never kept.

With a 32k vocabulary one batch of logits is ~36 MB; the 4x eval set's logits would
be ~290 MB if they were accumulated. The peak resident memory of the process (Linux
VmHWM, reset through /proc/self/clear_refs) is measured around evaluations of the
2x and 4x sets, and every logits tensor the model hands out is tracked with a weak
reference to show none outlives its batch.
"""

from __future__ import annotations

import re
import weakref
from pathlib import Path

import pytest
import torch

import trainspect as ts
from tests.eval.helpers import CharTokenizer
from trainspect.eval import FixedEval
from trainspect.eval.evaluate import evaluate

VOCAB = 32_768
BATCH = 8
ROW_CHARS = 30  # ~34 tokens per row with bos, prompt and eos


class BigVocabModel(torch.nn.Module):
    """Logits (B, T, 32768) favouring the next letter; counts logits still alive at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.alive: list[weakref.ref] = []
        self.most_alive_at_a_call = 0
        self.logits_bytes = 0

    def forward(self, input_ids, attention_mask=None):
        self.alive = [r for r in self.alive if r() is not None]
        self.most_alive_at_a_call = max(self.most_alive_at_a_call, len(self.alive))
        logits = torch.zeros(*input_ids.shape, VOCAB)  # (B, T, V) fp32, fresh memory
        logits.scatter_(2, (input_ids + 1).clamp_max(VOCAB - 1)[..., None], 5.0)
        self.alive.append(weakref.ref(logits))
        self.logits_bytes = logits.numel() * 4
        return logits


def rows(n: int) -> list[dict]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [{"id": str(i), "prompt": (letters * 2)[i % 26: i % 26 + 8] + letters[i // 26] * 2,
             "response": (letters * 4)[i % 26: i % 26 + ROW_CHARS - 10]} for i in range(n)]


def peak_rss_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def can_reset_peak() -> bool:
    try:
        reset_peak()
        peak_rss_kib()
    except (OSError, AttributeError):
        return False
    return True


def test_no_logits_tensor_outlives_its_batch_teacher_forced_and_greedy(runs):
    model = BigVocabModel()
    ev = FixedEval(rows(20), tokenizer=CharTokenizer(), extra_tokens=0)
    with ts.init(project="mem") as run:
        evaluate(run, model, ev, step=0, batch_size=BATCH, em="teacher_forced")
        assert model.most_alive_at_a_call == 0
        small = FixedEval(rows(3), tokenizer=CharTokenizer(), extra_tokens=0)
        evaluate(run, model, small, step=1, batch_size=3, em="greedy")
    assert model.most_alive_at_a_call == 0


@pytest.mark.skipif(not can_reset_peak(), reason="needs Linux /proc/self/clear_refs")
def test_peak_memory_is_flat_from_2x_to_4x_the_eval_set(runs):
    model = BigVocabModel()
    tok = CharTokenizer()
    sets = {k: FixedEval(rows(k * 2 * BATCH), tokenizer=tok) for k in (1, 2, 4)}
    peaks = {}
    with ts.init(project="mem") as run:
        evaluate(run, model, sets[1], step=0, batch_size=BATCH, em="teacher_forced")  # warm-up
        for k in (2, 4):
            reset_peak()
            before = peak_rss_kib()
            evaluate(run, model, sets[k], step=k, batch_size=BATCH, em="teacher_forced")
            peaks[k] = (peak_rss_kib() - before) * 1024
    batch_bytes = model.logits_bytes
    accumulated_4x = batch_bytes * 4 * 2  # 8 batches of logits
    assert accumulated_4x > 250e6  # what keeping the logits would cost
    # Twice the examples (4 more batches, 134 MB if kept): the peak grows by less than
    # 1.5 batches (allocator and store noise), and stays under 4 batches in all.
    assert peaks[4] - peaks[2] < 1.5 * batch_bytes, (peaks, batch_bytes)
    assert peaks[4] < 4 * batch_bytes, (peaks, batch_bytes)
