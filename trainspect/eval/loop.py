"""One pass over the fixed eval: batches through the model, sums, exact match per example.

Per batch: one teacher-forced forward, whose logits go once through the fused
token-statistics pass (`kernels.token_stats.row_stats`) into fixed-size float64
sums and are dropped before the next batch (memory does not grow with the eval
set); then, for `em="greedy"`, greedy decoding of the batch's prompts. Examples are
taken longest first, so the largest batch comes first and an out-of-memory error
shows at once.

Exact match:

- greedy: the continuation, cut at its first stop token, equals the target. When the
  target ends with an end token, the model must produce the reference's tokens and
  then stop (any stop token: eos or an end-of-turn marker); without one, the first
  len(target) tokens must equal it.
- teacher_forced: the argmax is right at every target token (the end token included).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from trainspect.errors import TrainspectError
from trainspect.eval.dataset import FixedEval
from trainspect.eval.distributed import (
    gather_lists,
    max_across_ranks,
    rank_and_world,
    shard,
    sum_across_ranks,
)
from trainspect.eval.encoding import Encoded, stop_token_ids
from trainspect.eval.forward import forward_logits, greedy, model_device, teacher_forced_inputs
from trainspect.eval.results import ExampleResult
from trainspect.eval.sums import Pooled, TokenSums, example_sums
from trainspect.kernels.token_stats import row_stats

log = logging.getLogger("trainspect.eval")

MAX_OUTPUT_CHARS = 4000  # stored output text per example, at most

Progress = Callable[[int, int], Any]


def run_pass(model: Any, ev: FixedEval, encoded: list[Encoded], tokenizer: Any,
             batch_size: int, em: str, progress: Progress | None
             ) -> tuple[Pooled, list[ExampleResult]]:
    """Pooled sums (over ranks too) and every example's result, in row order."""
    rank, world = rank_and_world()
    device = model_device(model)
    order = sorted(range(len(encoded)),
                   key=lambda i: -(len(encoded[i].prompt_ids) + len(encoded[i].target_ids)))
    mine = shard(order, rank, world)
    stops = stop_token_ids(tokenizer) | _generation_stops(model)
    pad_id = _pad_id(tokenizer)
    labels_of_bins = ev.length_bins.labels
    sums = TokenSums(device)
    examples: list[ExampleResult] = []
    total = sum(i is not None for i in mine)
    _check_vocab(encoded, _input_vocab(model), "input embedding")
    checked_vocab = False
    for start in range(0, len(mine), batch_size):
        chunk = mine[start:start + batch_size]
        keep = [i is not None for i in chunk]
        index = [i if i is not None else order[0] for i in chunk]
        rows = [encoded[i] for i in index]
        ids, mask, labels = teacher_forced_inputs(rows, keep, pad_id, device)
        logits = forward_logits(model, ids, mask)  # (B, T, V)
        batch, length, vocab = logits.shape
        if not checked_vocab:
            _check_vocab(encoded, vocab, "output")
            checked_vocab = True
        stats = row_stats(logits.reshape(batch * length, vocab), labels.reshape(-1))
        del logits  # the only copy: nothing of it outlives this batch
        per_example = sums.add(stats, labels.reshape(-1), batch, length).cpu().tolist()
        if em == "greedy":
            steps = None
            if world > 1:  # every rank decodes as many steps (a forward may communicate)
                steps = max_across_ranks(max(map(len, (r.target_ids for r in rows)))
                                         + ev.extra_tokens, device)
            matches, texts = _greedy_match(model, rows, ev.extra_tokens, stops, pad_id,
                                           device, steps, tokenizer)
        else:
            matches, texts = _teacher_forced_match(rows, per_example,
                                                   stats.argmax.view(batch, length), tokenizer)
        for b, i in enumerate(chunk):
            if i is None:
                continue
            tokens, correct, ce_sum = per_example[b]
            r = encoded[i]
            examples.append(ExampleResult(
                index=i, id=ev.rows[i].id, pattern=ev.rows[i].pattern,
                length_bin_index=r.length_bin, length_bin=labels_of_bins[r.length_bin],
                ref_tokens=r.ref_tokens, tokens=int(tokens), correct_tokens=int(correct),
                ce=ce_sum / tokens if tokens else float("nan"), em=bool(matches[b]),
                output=texts[b][:MAX_OUTPUT_CHARS],
            ))
        if progress is not None and not _report(progress, len(examples), total):
            progress = None
    host = torch.from_numpy(example_sums(examples, ev.patterns, len(labels_of_bins)))
    flat = sum_across_ranks(torch.cat([sums.flat(), host.to(device)]))
    pooled = Pooled.unpack(flat.cpu().numpy(), len(ev.patterns), len(labels_of_bins))
    return pooled, sorted(gather_lists(examples), key=lambda e: e.index)


def _greedy_match(model: Any, rows: list[Encoded], extra: int, stops: frozenset[int],
                  pad_id: int, device: Any, steps: int | None, tokenizer: Any
                  ) -> tuple[list[bool], list[str]]:
    """Exact match and output text of a batch by greedy decoding."""
    limits = [len(r.target_ids) + extra for r in rows]
    outputs = greedy(model, [r.prompt_ids for r in rows], limits, stops, pad_id, device, steps)
    matches = [greedy_match(out, r, stops) for out, r in zip(outputs, rows)]
    texts = [_decode(tokenizer, out[:-1] if out and out[-1] in stops else out)
             for out in outputs]
    return matches, texts


def _teacher_forced_match(rows: list[Encoded], per_example: list[list[float]], argmax: Any,
                          tokenizer: Any) -> tuple[list[bool], list[str]]:
    """Exact match (every target token's argmax right) and the argmax text of a batch."""
    argmax = argmax.cpu()  # (B, T)
    matches, texts = [], []
    for b, r in enumerate(rows):
        begin = len(r.prompt_ids) - 1  # logits at the prompt's last token predict target[0]
        texts.append(_decode(tokenizer, argmax[b, begin:begin + len(r.target_ids)].tolist()))
        tokens, correct = per_example[b][0], per_example[b][1]
        matches.append(tokens > 0 and correct == tokens)
    return matches, texts


def greedy_match(output: list[int], row: Encoded, stops: frozenset[int]) -> bool:
    target = list(row.target_ids)
    if row.ends:
        return (len(output) == len(target) and output[:-1] == target[:-1]
                and output[-1] in stops)
    return output[:len(target)] == target


def _check_vocab(encoded: list[Encoded], vocab: int | None, what: str) -> None:
    if vocab is None:
        return
    top = max(max(r.prompt_ids + r.target_ids) for r in encoded)
    if top >= vocab:
        raise TrainspectError(f"the tokenizer gives token id {top}, outside the model's {what} "
                              f"vocabulary of {vocab}: are the tokenizer and model a pair?")


def _input_vocab(model: Any) -> int | None:
    """Rows of a Hugging Face model's input embedding (checked before any forward)."""
    get = getattr(model, "get_input_embeddings", None)
    if not callable(get):
        return None
    try:
        embedding = get()
    except (NotImplementedError, AttributeError):
        return None
    rows = getattr(embedding, "num_embeddings", None)
    return rows if isinstance(rows, int) else None


def _generation_stops(model: Any) -> frozenset[int]:
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if isinstance(eos, int):
        return frozenset([eos])
    if isinstance(eos, (list, tuple)):
        return frozenset(e for e in eos if isinstance(e, int))
    return frozenset()


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if isinstance(value, int):
            return value
    return 0


def _decode(tokenizer: Any, ids: list[int]) -> str:
    decode = getattr(tokenizer, "decode", None)
    if not callable(decode):
        return ""
    return str(decode(ids, skip_special_tokens=True))


def _report(progress: Progress, done: int, total: int) -> bool:
    """Call the user's progress callback; one that fails is logged and not called again."""
    try:
        progress(done, total)
    except Exception as err:
        log.warning("trainspect: the eval progress callback failed (%s: %s); the eval goes "
                    "on without it", type(err).__name__, err)
        return False
    return True
