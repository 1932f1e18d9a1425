"""The demo's instruction data: a seeded training set and a held-out fixed-eval set.

Both are generated in code from `patterns.py`, so the demo needs no downloads and
the same seed always gives the same rows. The fixed eval is drawn with its own seed
and its prompts are excluded from the training set: a capital asked in one phrasing
in the eval is only ever seen in other phrasings in training, so eval exact match
measures learning, not recall of the same string. Row ids are disjoint too
(`train-NNNNN` vs `eval-NNNN`).

The fixed eval also ships as `fixed_eval.jsonl` beside this module (rows
`{"id", "prompt", "response", "pattern"}`), for `ts.FixedEval` and for users who
want to look at it; `tests/demo` checks that the file matches the generator.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from trainspect.demo.patterns import PATTERNS, generate
from trainspect.errors import TrainspectError

FIXED_EVAL_SEED = 20_251_112  # independent of the training seed, so the eval never moves
FIXED_EVAL_PER_PATTERN = 16  # 5 patterns x 16 = 80 rows
FIXED_EVAL_FILE = "fixed_eval.jsonl"
DEFAULT_TRAIN_SIZE = 4000  # 250 batches of 16: the default demo sees each row about twice


@dataclass(frozen=True)
class Example:
    """One instruction row, as the fixed-eval JSONL stores it."""

    id: str
    """Unique within its split: `train-00042`, `eval-0007`."""
    prompt: str
    """The user's instruction, without any chat markup."""
    response: str
    """The one correct answer: a deterministic function of the prompt."""
    pattern: str
    """One of `patterns.PATTERNS`: factual, reasoning, creative, coding, math."""


def _draw(rng: random.Random, index: int, exclude: frozenset[str]) -> tuple[str, str, str]:
    """Draw the row at `index`: patterns cycle so every one is equally represented."""
    pattern = PATTERNS[index % len(PATTERNS)]
    while True:  # a handful of redraws at most: the eval holds out ~1% of prompts
        prompt, response = generate(pattern, rng)
        if prompt not in exclude:
            return pattern, prompt, response


def fixed_eval_examples() -> list[Example]:
    """The held-out fixed-eval rows (80: 16 per pattern), identical on every call."""
    rng = random.Random(FIXED_EVAL_SEED)
    rows: list[Example] = []
    seen: set[str] = set()
    index = 0
    while len(rows) < FIXED_EVAL_PER_PATTERN * len(PATTERNS):
        pattern, prompt, response = _draw(rng, index, frozenset(seen))
        index += 1
        seen.add(prompt)
        rows.append(Example(f"eval-{len(rows):04d}", prompt, response, pattern))
    return rows


def train_examples(n: int = DEFAULT_TRAIN_SIZE, seed: int = 0) -> list[Example]:
    """`n` training rows for `seed`, none of which repeats a fixed-eval prompt."""
    if not isinstance(n, int) or n <= 0:
        raise TrainspectError(f"expected `n` to be a positive int, got {n!r}")
    held_out = frozenset(row.prompt for row in fixed_eval_examples())
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        pattern, prompt, response = _draw(rng, i, held_out)
        rows.append(Example(f"train-{i:05d}", prompt, response, pattern))
    return rows


def to_jsonl(rows: list[Example]) -> str:
    """Rows as JSON lines with keys id, prompt, response, pattern (one row a line)."""
    return "".join(json.dumps(asdict(row), ensure_ascii=False) + "\n" for row in rows)


def write_fixed_eval(path: str | os.PathLike) -> Path:
    """Write the fixed-eval rows to `path` as JSONL and return the path."""
    out = Path(path)
    out.write_text(to_jsonl(fixed_eval_examples()), encoding="utf-8")
    return out


def read_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read rows written by `to_jsonl`; a malformed line is named in the error."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                fields = json.loads(line)
                rows.append(Example(*(fields[k] for k in ("id", "prompt", "response", "pattern"))))
            except (ValueError, KeyError, TypeError) as err:
                raise TrainspectError(
                    f"{path}:{number}: expected a JSON object with id, prompt, response and "
                    f"pattern, got {line.strip()[:80]!r}"
                ) from err
    return rows


def fixed_eval_path() -> Path:
    """The fixed-eval JSONL shipped with the package (regenerate it with `write_fixed_eval`)."""
    return Path(str(resources.files("trainspect.demo").joinpath(FIXED_EVAL_FILE)))
