"""The demo data: deterministic, all five patterns, varied lengths, a disjoint fixed eval."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from trainspect.demo.data import (
    Example,
    fixed_eval_examples,
    fixed_eval_path,
    read_jsonl,
    to_jsonl,
    train_examples,
    write_fixed_eval,
)
from trainspect.demo.patterns import PATTERNS
from trainspect.demo.tokenizer import prompt_text
from trainspect.errors import TrainspectError


def test_same_seed_same_rows_other_seed_other_rows():
    assert train_examples(500, seed=3) == train_examples(500, seed=3)
    assert train_examples(500, seed=3) != train_examples(500, seed=4)
    assert fixed_eval_examples() == fixed_eval_examples()


def test_all_five_patterns_balanced(rows):
    assert set(PATTERNS) == {"factual", "reasoning", "creative", "coding", "math"}
    counts = Counter(r.pattern for r in rows)
    assert counts == {p: len(rows) // 5 for p in PATTERNS}
    assert Counter(r.pattern for r in fixed_eval_examples()) == {p: 16 for p in PATTERNS}


def test_lengths_run_from_short_to_a_few_hundred_tokens(rows, tokenizer):
    by_pattern: dict[str, list[int]] = {}
    for r in rows:
        n = len(tokenizer.encode(prompt_text(r.prompt) + r.response)) + 1  # + <eos>
        by_pattern.setdefault(r.pattern, []).append(n)
    lengths = [n for ns in by_pattern.values() for n in ns]
    assert min(lengths) < 20
    assert max(lengths) > 300
    short = sum(n <= 64 for n in lengths) / len(lengths)
    long = sum(n > 128 for n in lengths) / len(lengths)
    assert 0.4 < short < 0.8 and 0.05 < long < 0.25, (short, long)
    for pattern, ns in by_pattern.items():  # every pattern has short and long rows
        assert min(ns) < 40 and max(ns) > 140, (pattern, min(ns), max(ns))


def test_ids_unique_and_disjoint_prompts_held_out(rows):
    evals = fixed_eval_examples()
    assert len({r.id for r in rows}) == len(rows)
    assert len({r.id for r in evals}) == len(evals) == 80
    assert not {r.id for r in rows} & {r.id for r in evals}
    assert not {r.prompt for r in rows} & {r.prompt for r in evals}


def test_responses_are_functions_of_prompts(rows):
    answers: dict[str, str] = {}
    for r in rows + fixed_eval_examples():
        assert answers.setdefault(r.prompt, r.response) == r.response


def test_known_answers():
    from trainspect.demo import patterns

    class Fixed:  # a stand-in rng that always takes the first choice / the low end
        def choice(self, seq):
            return seq[0]

        def randint(self, a, b):
            return a

        def sample(self, seq, k):
            return list(seq)[:k]

    assert patterns._add(Fixed()) == ("What is 0 + 0?", "0 + 0 = 0.")
    assert patterns._reverse(Fixed()) == ("Reverse the list: apple apple apple",
                                          "apple apple apple")
    prompt, response = patterns._capital(Fixed())
    assert (prompt, response) == ("What is the capital of Austria?",
                                  "The capital of Austria is Vienna.")


def test_shipped_fixed_eval_matches_generator(tmp_path):
    shipped = fixed_eval_path()
    assert shipped.read_text(encoding="utf-8") == to_jsonl(fixed_eval_examples())
    for line in shipped.read_text(encoding="utf-8").splitlines():
        assert set(json.loads(line)) == {"id", "prompt", "response", "pattern"}
    written = write_fixed_eval(tmp_path / "fe.jsonl")
    assert read_jsonl(written) == fixed_eval_examples()


def test_read_jsonl_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = to_jsonl([Example("a", "p", "r", "math")])
    path.write_text(good + '{"id": "b", "prompt": "p"}\n', encoding="utf-8")
    with pytest.raises(TrainspectError, match=r"bad.jsonl:2: expected a JSON object"):
        read_jsonl(path)


def test_train_size_must_be_positive():
    with pytest.raises(TrainspectError, match="expected `n` to be a positive int, got 0"):
        train_examples(0)
