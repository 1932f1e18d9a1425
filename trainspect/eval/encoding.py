"""Rows to token ids: the prompt the model is given and the response it must produce.

With a chat template (`tokenizer.chat_template` set), the prompt is
`apply_chat_template(prompt_messages, add_generation_prompt=True)` and the response is
what the full conversation (prompt messages plus the assistant's) adds after it,
both rendered as text and encoded with `add_special_tokens=False`, as Hugging Face
recommends for rendered templates. If the full rendering does not start with the
prompt's tokens (a template that rewrites history), the response is encoded on its
own and the end token appended.

Without a chat template the documented plain join is used:

    prompt ids   = [bos] + encode(prompt)          (bos if the tokenizer has one)
    response ids = encode(response) + [eos]        (eos if the tokenizer has one)

where a multi-message prompt is rendered as `role: content` lines. Prompt and
response are encoded apart, so the supervision boundary is exact.

The supervised target is the response ids up to and including the first end token
(eos, or an end-of-turn marker such as `<|im_end|>` or `<|eot_id|>` the tokenizer
knows): a template's trailing newline after the end of the turn is not judged. The
length bin counts the target without its end token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.eval.patterns import LengthBins

log = logging.getLogger("trainspect.eval")

# End-of-turn markers of common chat templates; used when the tokenizer knows them.
END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
               "<|end_of_text|>", "</s>", "<eos>")


@dataclass(frozen=True)
class Encoded:
    """One row as token ids."""

    prompt_ids: tuple[int, ...]
    """What the model is given (template and all)."""
    target_ids: tuple[int, ...]
    """The supervised response: through its first end token, if it has one."""
    ref_tokens: int
    """Response tokens without the end token: what the length bins count."""
    length_bin: int
    """Index into the FixedEval's length bins."""
    ends: bool
    """Whether the target ends with an end token (then greedy EM also requires stopping)."""


def stop_token_ids(tokenizer: Any) -> frozenset[int]:
    """eos and the end-of-turn markers this tokenizer has (never its unk token)."""
    ids: set[int] = set()
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    convert = getattr(tokenizer, "convert_tokens_to_ids", None)
    if callable(convert):
        unk = getattr(tokenizer, "unk_token_id", None)
        for marker in END_MARKERS:
            try:
                token_id = convert(marker)
            except (KeyError, ValueError, TypeError):
                continue
            if isinstance(token_id, int) and token_id >= 0 and token_id != unk:
                ids.add(token_id)
    return frozenset(ids)


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None)) and callable(
        getattr(tokenizer, "apply_chat_template", None))


def text_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of `text` without special tokens added, from `encode` or `__call__`."""
    if callable(getattr(tokenizer, "encode", None)):
        ids = tokenizer.encode(text, add_special_tokens=False)
    elif callable(tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        raise TrainspectError(f"expected `tokenizer` to have an `encode` method, got "
                              f"{type(tokenizer).__name__}")
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    ids = list(ids)
    if not all(isinstance(i, int) for i in ids):
        raise TrainspectError(f"expected `tokenizer.encode` to return a list of ints, "
                              f"got {ids!r:.80}")
    return ids


def encode_rows(rows: list[Any], tokenizer: Any, bins: LengthBins,
                where: Callable[[int], str]) -> list[Encoded]:
    stops = stop_token_ids(tokenizer)
    templated = has_chat_template(tokenizer)
    out = []
    for row in rows:
        try:
            if templated:
                prompt, response = _templated(tokenizer, row)
            else:
                prompt, response = _plain(tokenizer, row)
        except TrainspectError as err:
            raise TrainspectError(f"{where(row.line)}: {err}") from err
        except Exception as err:  # a tokenizer or template error, with the row that caused it
            raise TrainspectError(f"{where(row.line)}: the tokenizer failed on this row "
                                  f"({type(err).__name__}: {err})") from err
        target, ends = _cut_at_end(response, stops)
        if not target:
            raise TrainspectError(f"{where(row.line)}: the response encodes to no tokens")
        ref_tokens = len(target) - int(ends)
        out.append(Encoded(tuple(prompt), tuple(target), ref_tokens, bins.index(ref_tokens),
                           ends))
    return out


def _plain(tokenizer: Any, row: Any) -> tuple[list[int], list[int]]:
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    prompt = ([bos] if isinstance(bos, int) else []) + text_ids(tokenizer, row.prompt)
    response = text_ids(tokenizer, row.response) + ([eos] if isinstance(eos, int) else [])
    return prompt, response


def _templated(tokenizer: Any, row: Any) -> tuple[list[int], list[int]]:
    messages = [{"role": role, "content": content} for role, content in row.messages]
    prompt_text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                tokenize=False)
    full_text = tokenizer.apply_chat_template(
        messages + [{"role": "assistant", "content": row.response}], tokenize=False)
    if not isinstance(prompt_text, str) or not isinstance(full_text, str):
        raise TrainspectError("expected `apply_chat_template(..., tokenize=False)` to return text")
    prompt = text_ids(tokenizer, prompt_text)
    full = text_ids(tokenizer, full_text)
    if len(full) > len(prompt) and full[:len(prompt)] == prompt:
        return prompt, full[len(prompt):]
    log.debug("trainspect: the chat template's full rendering does not start with the "
              "prompt's tokens; encoding the response on its own")
    eos = getattr(tokenizer, "eos_token_id", None)
    return prompt, text_ids(tokenizer, row.response) + ([eos] if isinstance(eos, int) else [])


def _cut_at_end(ids: list[int], stops: frozenset[int]) -> tuple[list[int], bool]:
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1], True
    return ids, False
