"""Prediction samples: for a few sequences of a batch, what the model predicted at each
supervised position, against the label, with probabilities and alternatives.

Only on sample steps, only for the chosen sequences (never a softmax over the batch):
one fused pass and one top-5 over those rows, on the device. The results leave the
device in the run's next flush copy (non-blocking, like every probe), and the writer
thread turns them into `SampleRow`s, decoding tokens with the run's tokenizer there,
off the training thread.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from trainspect.probes.token_text import TokenNamer
from trainspect.records import SampleRow

TOP_K = 5
CONFIDENT = 0.5
FIELDS = ("label", "valid", "argmax", "conf", "label_prob", "entropy")


class SampleTaker:
    """Chooses sample steps and turns the chosen rows into a flush part."""

    def __init__(self, tokenizer: Any, num_samples: int, samples_every: int, head: int = 8,
                 tail: int = 8, context_chars: int = 300) -> None:
        self.tokenizer = tokenizer
        self.num_samples = num_samples
        self.samples_every = samples_every
        self.head, self.tail = head, tail
        self.context_chars = context_chars
        self._taken: dict[str, int] = {}
        self._namers: dict[str, TokenNamer] = {}

    def due(self, stream: str, step: int) -> bool:
        """True once per stream at its first observed step (so a run shorter than
        `samples_every` still shows what the model predicts from the first flush on),
        then on each `samples_every`-th step."""
        if self.num_samples <= 0 or self.samples_every <= 0:
            return False
        last = self._taken.get(stream)
        if last == step or (last is not None and step % self.samples_every):
            return False
        self._taken[stream] = step
        return True

    def take(self, step: int, stream: str, group: str | None, logits: Any, labels: Any,
             mask: Any, input_ids: Any, attention_mask: Any, token_names: dict | None,
             ignore_index: int, on_rows: Callable[[list[SampleRow]], None] | None = None,
             ) -> tuple[list[Any], Callable[[list[np.ndarray]], list[Any]]]:
        """Device tensors for the first `num_samples` sequences, and what builds the rows."""
        import torch

        from trainspect.kernels.token_stats import row_stats

        if logits.dim() == 2:  # (N, V): one sequence of N positions
            logits, labels = logits[None], labels[None]
            mask = None if mask is None else mask[None]
            input_ids = None if input_ids is None else input_ids.reshape(1, -1)
        k = min(self.num_samples, logits.shape[0])
        vocab = logits.shape[-1]
        n_groups = logits.shape[-2] if group else 1
        per_field: dict[str, list[Any]] = {f: [] for f in FIELDS + ("top_ids", "top_probs")}
        for b in range(k):
            rows = logits[b].reshape(-1, vocab)  # a view unless the sequence itself is strided
            y = labels[b].reshape(-1).to(torch.int64)
            stats = row_stats(rows, y, mask=None if mask is None else mask[b].reshape(-1),
                              ignore_index=ignore_index)
            top = torch.topk(rows, TOP_K, dim=-1)
            top_logits = top.values.float()
            # p(top_j) = exp(z_j - z_max) * p(top_1), and p(top_1) is the fused pass's conf
            top_probs = torch.exp(top_logits - top_logits[:, :1]) * stats.conf[:, None]
            for name, value in (("label", y), ("valid", stats.valid), ("argmax", stats.argmax),
                                ("conf", stats.conf), ("label_prob", stats.label_prob),
                                ("entropy", stats.entropy), ("top_ids", top.indices),
                                ("top_probs", top_probs)):
                per_field[name].append(value)
        tensors = [torch.stack(per_field[f]) for f in FIELDS + ("top_ids", "top_probs")]
        ids = None
        if input_ids is not None:
            ids = input_ids[:k].reshape(k, -1)
            if attention_mask is not None and attention_mask.shape == input_ids.shape:
                keep = attention_mask[:k].reshape(k, -1).to(torch.bool)
                ids = torch.where(keep, ids, torch.full_like(ids, -1))
            tensors.append(ids)
        n_positions = tensors[0].shape[1]
        id_len = None if ids is None else ids.shape[1]
        namer = self._namer(stream, token_names)

        def build(arrays: list[np.ndarray]) -> list[Any]:
            cols = {f: a.reshape(k, n_positions) for f, a in zip(FIELDS, arrays)}
            top_ids = arrays[len(FIELDS)].reshape(k, n_positions, TOP_K)
            top_probs = arrays[len(FIELDS) + 1].reshape(k, n_positions, TOP_K)
            seq_ids = arrays[-1].reshape(k, id_len) if id_len is not None else None
            wall_time = time.time()
            out = []
            for b in range(k):
                row_ids = None if seq_ids is None else [int(t) for t in seq_ids[b]]  # -1: pad
                context = self._context(namer, row_ids, cols["valid"][b], n_positions,
                                        n_groups)
                sample_id = _sample_id(None if row_ids is None else [t for t in row_ids
                                                                     if t >= 0],
                                       cols["label"][b])
                for g in range(n_groups):
                    where = np.arange(g, n_positions, n_groups)
                    positions = self._positions(namer, {f: c[b, where] for f, c in cols.items()},
                                                top_ids[b, where], top_probs[b, where],
                                                where // n_groups)
                    out.append(SampleRow(step=step, stream=stream, group=g, sample_id=sample_id,
                                         context=context, positions=positions,
                                         wall_time=wall_time))
            if on_rows is not None:
                on_rows(out)
            return out

        return tensors, build

    def _namer(self, stream: str, token_names: dict | None) -> TokenNamer:
        namer = self._namers.get(stream)
        if namer is None or (token_names and namer.names != token_names):
            namer = self._namers[stream] = TokenNamer(self.tokenizer, token_names)
        return namer

    def _context(self, namer: TokenNamer, ids: list[int] | None, valid: np.ndarray,
                 n_positions: int, n_groups: int) -> str:
        """The input before the first supervised position (the prompt), decoded; `ids`
        still hold -1 where the attention mask said padding, so positions line up."""
        if ids is None:
            return ""
        supervised = np.flatnonzero(valid > 0)
        cut = len(ids) if supervised.size == 0 else int(supervised[0]) // n_groups
        if len(ids) == n_positions // n_groups + 1:  # input_ids one longer: labels are shifted
            cut += 1
        return namer.text([t for t in ids[:cut] if t >= 0], self.context_chars)

    def _positions(self, namer: TokenNamer, cols: dict[str, np.ndarray], top_ids: np.ndarray,
                   top_probs: np.ndarray, times: np.ndarray) -> list[dict[str, Any]]:
        supervised = np.flatnonzero(cols["valid"] > 0)
        if supervised.size > self.head + self.tail:
            supervised = np.concatenate([supervised[: self.head],
                                         supervised[supervised.size - self.tail:]])
        out = []
        for i in supervised.tolist():
            pred, label = int(cols["argmax"][i]), int(cols["label"][i])
            conf = float(cols["conf"][i])
            out.append({
                "t": int(times[i]), "pred": namer.token(pred), "pred_id": pred,
                "label": namer.token(label), "label_id": label, "pred_prob": conf,
                "label_prob": float(cols["label_prob"][i]), "match": pred == label,
                "entropy": float(cols["entropy"][i]),
                "confident_wrong": pred != label and conf > CONFIDENT,
                "top": [[namer.token(int(t)), float(p)] for t, p in zip(top_ids[i], top_probs[i])],
            })
        return out


def _sample_id(input_ids: list[int] | None, labels: np.ndarray) -> str:
    """A stable id for one example: a hash of its input ids (else of its labels)."""
    source = np.asarray(input_ids if input_ids is not None else labels, dtype="<i8")
    return hashlib.sha1(source.tobytes()).hexdigest()[:12]
