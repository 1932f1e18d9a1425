"""`FixedEval`: a held-out set of prompts with one correct response each, checked on load.

Rows come from a JSONL file or a list of dicts (or dataclasses, such as the demo's
examples). Each row is either

    {"prompt": "...", "response": "..."}                       or
    {"messages": [{"role": "user", "content": "..."}, ..., {"role": "assistant", ...}]}

with optional `"id"` (string or int) and `"pattern"` (string). In a `messages` row
the last message must be the assistant's: it is the response, and the messages
before it are the prompt. Everything is validated here, at construction: a bad row
is one `TrainspectError` naming the file, the line and what is wrong, long before
the first evaluation. Rows that repeat an earlier row (same id, or same prompt and
response) are kept out and reported in one warning with their line numbers.

Rows without an id get a stable one: the first 12 hex digits of the SHA-256 of the
prompt messages and response, so results stay comparable across evaluations, runs
and machines. Tokenization waits until a tokenizer is known (`encode`), because
the training loop's tokenizer may only be handed to the run; when one is given here,
the rows are encoded at once, so a row it cannot take fails here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainspect.errors import TrainspectError
from trainspect.eval.patterns import (
    LengthBins,
    PatternFn,
    check_pattern_name,
    make_classifier,
    make_length_bins,
)

log = logging.getLogger("trainspect.eval")

MAX_REPORTED_ERRORS = 5  # bad rows listed in one error; the rest are counted


@dataclass(frozen=True)
class EvalRow:
    """One validated example."""

    id: str
    """From the row's `id`, else a hash of its prompt and response."""
    messages: tuple[tuple[str, str], ...]
    """The prompt as (role, content) messages; a `prompt` row is one user message."""
    response: str
    """The reference response."""
    pattern: str
    """Its pattern bucket (see patterns.py for where it comes from)."""
    line: int
    """1-based line in the file, or 0-based index in the rows list."""

    @property
    def prompt(self) -> str:
        """The prompt as text: the content of a lone user message, else `role: content` lines."""
        if len(self.messages) == 1 and self.messages[0][0] == "user":
            return self.messages[0][1]
        return "\n".join(f"{role}: {content}" for role, content in self.messages)


class FixedEval:
    """A fixed evaluation set: `FixedEval("fixed_eval.jsonl", tokenizer=tok, max_samples=2000)`.

    Args:
        source: path of a JSONL file, or a list of row dicts (or dataclass instances).
        tokenizer: a Hugging Face tokenizer (or anything with `encode`/`decode`); if None,
            `evaluate` uses the run's tokenizer.
        max_samples: keep the first N distinct rows (the set must not move between evals).
        patterns: None (keyword rules), a mapping {name: [regex, ...]} replacing the rules,
            or a callable (prompt, response) -> name applied to every row.
        length_bins: upper edges of the reference-length bins in tokens (default
            100, 300, 500, 1000, 2000: six bins, the last open).
        name: metric prefix (`eval/em`); give a second set another name.
        extra_tokens: greedy decoding runs up to the reference length plus this many tokens,
            so a wrong answer shows what the model said after the point it went off.
    """

    def __init__(
        self,
        source: str | os.PathLike | Sequence[Any],
        tokenizer: Any = None,
        *,
        max_samples: int | None = None,
        patterns: None | Mapping[str, Sequence[str]] | PatternFn = None,
        length_bins: None | Sequence[int] | LengthBins = None,
        name: str = "eval",
        extra_tokens: int = 16,
    ) -> None:
        if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(
                max_samples, int) or max_samples < 1):
            raise TrainspectError(f"expected `max_samples` to be a positive int or None, "
                                  f"got {max_samples!r}")
        if isinstance(extra_tokens, bool) or not isinstance(extra_tokens, int) or extra_tokens < 0:
            raise TrainspectError(f"expected `extra_tokens` to be a non-negative int, "
                                  f"got {extra_tokens!r}")
        check_pattern_name(name, "`name`")
        self.name = name
        self.tokenizer = tokenizer
        self.extra_tokens = extra_tokens
        self.length_bins = make_length_bins(length_bins)
        classify, known, overrides = make_classifier(patterns)
        if isinstance(source, (str, os.PathLike)):
            self.path: Path | None = Path(source)
            self.source = str(source)
            raw = list(_read_jsonl(self.path))
        elif isinstance(source, Sequence) and not isinstance(source, (bytes, bytearray)):
            self.path = None
            self.source = "rows"
            raw = [(i, _as_dict(row)) for i, row in enumerate(source)]
        else:
            raise TrainspectError("expected `source` to be a JSONL path or a list of rows, "
                                  f"got {type(source).__name__}")
        self.rows, self.duplicates = _build_rows(raw, self._where, classify, overrides)
        if max_samples is not None:
            self.rows = self.rows[:max_samples]
        if not self.rows:
            raise TrainspectError(f"{self.source}: no examples (expected JSONL rows with "
                                  "`prompt` and `response`, or `messages`)")
        seen = [row.pattern for row in self.rows]
        self.patterns: list[str] = known + [p for p in dict.fromkeys(seen) if p not in known]
        self._encoded: dict[int, tuple[Any, list[Any]]] = {}
        if tokenizer is not None:
            self.encode()  # a row the tokenizer cannot take is reported now, not mid-training

    def _where(self, line: int) -> str:
        return f"{self.path}, line {line}" if self.path is not None else f"rows[{line}]"

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[EvalRow]:
        return iter(self.rows)

    def __repr__(self) -> str:
        return f"FixedEval({self.source!r}, {len(self.rows)} examples, name={self.name!r})"

    def encode(self, tokenizer: Any = None) -> list[Any]:
        """Token ids of every row for `tokenizer` (default: the one given at construction).

        Cached per tokenizer object. Raises TrainspectError naming the row that fails.
        """
        from trainspect.eval.encoding import encode_rows

        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise TrainspectError(
                "FixedEval needs a tokenizer: pass `tokenizer=` to FixedEval or to ts.init")
        cached = self._encoded.get(id(tokenizer))
        if cached is not None and cached[0] is tokenizer:
            return cached[1]
        encoded = encode_rows(self.rows, tokenizer, self.length_bins, self._where)
        self._encoded[id(tokenizer)] = (tokenizer, encoded)
        return encoded


def _as_dict(row: Any) -> Any:
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.asdict(row)
    return row


def _read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) per non-blank line; bad JSON names the line."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise TrainspectError(f"cannot read the fixed eval file {path}: {err}") from err
    errors = []
    rows = []
    for number, raw in enumerate(data.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            rows.append((number, json.loads(raw.decode("utf-8"))))
        except UnicodeDecodeError as err:
            errors.append(f"{path}, line {number}: not UTF-8 text ({err.reason})")
        except json.JSONDecodeError as err:
            errors.append(f"{path}, line {number}: bad JSON ({err.msg} at column {err.colno})")
    _raise_if(errors)
    return iter(rows)


def _raise_if(errors: list[str]) -> None:
    if not errors:
        return
    shown = errors[:MAX_REPORTED_ERRORS]
    more = len(errors) - len(shown)
    tail = f"\n  ... and {more} more bad rows" if more else ""
    raise TrainspectError("bad fixed eval rows:\n  " + "\n  ".join(shown) + tail)


def _build_rows(raw: list[tuple[int, Any]], where: Any, classify: PatternFn, overrides: bool
                ) -> tuple[list[EvalRow], list[tuple[int, int, str]]]:
    """Validate every row; drop repeats. Returns rows and (line, first line, why) repeats."""
    rows: list[EvalRow] = []
    errors: list[str] = []
    by_id: dict[str, int] = {}
    by_text: dict[tuple, int] = {}
    duplicates: list[tuple[int, int, str]] = []
    for line, value in raw:
        try:
            messages, response, row_id, pattern = _parse_row(value)
        except _RowError as err:
            errors.append(f"{where(line)}: {err}")
            continue
        text_key = (messages, response)
        if row_id is None:
            row_id = _hash_id(messages, response)
        if row_id in by_id:
            duplicates.append((line, by_id[row_id], f"same id {row_id!r}"))
            continue
        if text_key in by_text:
            duplicates.append((line, by_text[text_key], "same prompt and response"))
            continue
        by_id[row_id] = line
        by_text[text_key] = line
        row = EvalRow(row_id, messages, response, "", line)
        if overrides or pattern is None:
            try:
                pattern = check_pattern_name(classify(row.prompt, response), "the pattern")
            except TrainspectError as err:
                errors.append(f"{where(line)}: `patterns` returned a bad name: {err}")
                continue
        rows.append(dataclasses.replace(row, pattern=pattern))
    _raise_if(errors)
    if duplicates:
        log.warning(
            "trainspect: fixed eval: %d duplicate rows kept out: %s", len(duplicates),
            "; ".join(f"{where(line)} repeats {where(first)} ({why})"
                      for line, first, why in duplicates[:20])
            + (" ..." if len(duplicates) > 20 else ""),
        )
    return rows, duplicates


class _RowError(ValueError):
    pass


def _parse_row(value: Any) -> tuple[tuple[tuple[str, str], ...], str, str | None, str | None]:
    if not isinstance(value, Mapping):
        raise _RowError(f"expected a JSON object, got {type(value).__name__}")
    has_messages = "messages" in value
    if has_messages and ("prompt" in value or "response" in value):
        raise _RowError("has both `messages` and `prompt`/`response`: give one form")
    if has_messages:
        messages, response = _parse_messages(value["messages"])
    else:
        missing = [k for k in ("prompt", "response") if k not in value]
        if missing:
            raise _RowError(f"missing {' and '.join(f'`{k}`' for k in missing)} (expected "
                            "`prompt` and `response`, or `messages`)")
        prompt, response = value["prompt"], value["response"]
        if not isinstance(prompt, str):
            raise _RowError(f"expected `prompt` to be a string, got {_kind(prompt)}")
        messages = (("user", prompt),)
    if not isinstance(response, str):
        raise _RowError(f"expected `response` to be a string, got {_kind(response)}")
    if not response:
        raise _RowError("`response` is empty: exact match needs a reference answer")
    row_id = value.get("id")
    if row_id is not None:
        if isinstance(row_id, bool) or not isinstance(row_id, (str, int)) or row_id == "":
            raise _RowError(f"expected `id` to be a non-empty string or an int, "
                            f"got {_kind(row_id)}")
        row_id = str(row_id)
    pattern = value.get("pattern")
    if pattern is not None:
        try:
            check_pattern_name(pattern, "`pattern`")
        except TrainspectError as err:
            raise _RowError(str(err)) from err
    return messages, response, row_id, pattern


def _parse_messages(messages: Any) -> tuple[tuple[tuple[str, str], ...], Any]:
    if not isinstance(messages, list) or len(messages) < 2:
        raise _RowError("expected `messages` to be a list of at least two "
                        f"{{role, content}} objects, got {_kind(messages)}")
    parsed = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise _RowError(f"`messages[{i}]`: expected an object, got {_kind(message)}")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise _RowError(f"`messages[{i}].role`: expected a string, got {_kind(role)}")
        if not isinstance(content, str):
            raise _RowError(f"`messages[{i}].content`: expected a string, got {_kind(content)}")
        parsed.append((role, content))
    if parsed[-1][0] != "assistant":
        raise _RowError(f"the last message must be the assistant's (the response), "
                        f"got role {parsed[-1][0]!r}")
    return tuple(parsed[:-1]), parsed[-1][1]


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    text = json.dumps(value, default=repr) if not isinstance(value, str) else repr(value)
    return f"{type(value).__name__} {text[:40]}"


def _hash_id(messages: tuple[tuple[str, str], ...], response: str) -> str:
    blob = json.dumps([list(map(list, messages)), response], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def as_fixed_eval(value: Any, tokenizer: Any = None) -> FixedEval | None:
    """What the integrations take as `fixed_eval=`: a FixedEval, a JSONL path, rows, or None.

    A FixedEval without a tokenizer gets `tokenizer`; a path or rows are loaded with it.
    """
    if value is None:
        return None
    if isinstance(value, FixedEval):
        if value.tokenizer is None and tokenizer is not None:
            value.tokenizer = tokenizer
        return value
    return FixedEval(value, tokenizer=tokenizer)
