"""Pattern rules, their overrides, and length bins."""

from __future__ import annotations

import pytest

from trainspect.errors import TrainspectError
from trainspect.eval import DEFAULT_PATTERNS, FixedEval, LengthBins
from trainspect.eval.patterns import default_rules


@pytest.mark.parametrize(("prompt", "expected"), [
    ("Write a Python function that reverses a list.", "coding"),  # coding before reasoning
    ("Fix this SQL query: SELECT * FORM t", "coding"),
    ("What is 12 times 6?", "math"),
    ("Compute 3 + 4", "math"),
    ("Count from 25 to 95.", "math"),
    ("Write a short poem about a silver river.", "creative"),
    ("Tell a story about a fox.", "creative"),
    ("Why does ice float?", "reasoning"),
    ("Ada is taller than Dan. Dan is taller than Eve. Who is the tallest?", "reasoning"),
    ("Eve has 14 apples and gives 6 to Tara. How many are left?", "reasoning"),
    ("Which is larger, 36 or 64?", "reasoning"),
    ("What is the capital of France?", "factual"),
    ("How many legs does a spider have?", "factual"),
    ("Name the largest ocean.", "factual"),
])
def test_default_keyword_rules(prompt, expected):
    assert default_rules()(prompt, "") == expected


def test_default_rules_agree_with_the_demo_labels_mostly():
    """The demo's 80 hand-labelled rows: the documented rules get nearly all of them."""
    from trainspect.demo.data import fixed_eval_examples

    rows = fixed_eval_examples()
    rules = default_rules()
    agree = sum(rules(r.prompt, r.response) == r.pattern for r in rows)
    assert agree / len(rows) >= 0.95


def test_the_row_field_wins_over_the_rules_and_a_callable_wins_over_both():
    rows = [{"prompt": "What is 2 + 2?", "response": "4", "pattern": "quiz"},
            {"prompt": "What is 2 + 3?", "response": "5"}]
    ev = FixedEval(rows)
    assert [r.pattern for r in ev] == ["quiz", "math"]
    assert ev.patterns == [*DEFAULT_PATTERNS, "quiz"]  # rule names first, in their order
    ev = FixedEval(rows, patterns=lambda prompt, response: f"len{len(response)}")
    assert [r.pattern for r in ev] == ["len1", "len1"] and ev.patterns == ["len1"]


def test_a_mapping_replaces_the_rules_and_unmatched_rows_are_other():
    ev = FixedEval([{"prompt": "translate cat", "response": "chat"},
                    {"prompt": "hello", "response": "hi"}],
                   patterns={"translation": [r"\btranslate\b"], "chat": [r"\bgreet"]})
    assert [r.pattern for r in ev] == ["translation", "other"]
    assert ev.patterns == ["translation", "chat", "other"]


def test_bad_patterns_are_named():
    with pytest.raises(TrainspectError, match="bad regular expression"):
        FixedEval([{"prompt": "a", "response": "b"}], patterns={"x": ["("]})
    with pytest.raises(TrainspectError, match=r"rows\[0\]: `patterns` returned a bad name"):
        FixedEval([{"prompt": "a", "response": "b"}], patterns=lambda p, r: "")


def test_length_bins():
    bins = LengthBins()
    assert bins.labels == ["0-100", "100-300", "300-500", "500-1000", "1000-2000", "2000+"]
    assert [bins.index(n) for n in (0, 99, 100, 299, 300, 999, 1000, 1999, 2000, 10**6)] == [
        0, 0, 1, 1, 2, 3, 4, 4, 5, 5]
    assert LengthBins((10,)).labels == ["0-10", "10+"]
    for bad in ((), (0, 5), (5, 5), (5.0,), (True,)):
        with pytest.raises(TrainspectError, match="`length_bins`"):
            LengthBins(bad)
