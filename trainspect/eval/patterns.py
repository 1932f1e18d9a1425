"""Pattern and length buckets of the fixed eval: which kind of prompt, how long an answer.

A pattern comes, per row, from the first of:

1. the `patterns=` callable given to `FixedEval`, called as `fn(prompt, response) -> str`;
2. the row's own `pattern` field;
3. keyword rules over the prompt: `DEFAULT_RULES` (or a mapping given as `patterns=`).

The default rules are deliberately plain, so anyone can predict them. They look at
the lower-cased prompt text and the first pattern with a matching regular
expression wins, in this order:

- coding: a language or code word (python, sql, function, class, implement, ...), or a
  code fence / `def f(` in the prompt;
- math: digits around an operator (`3 + 4`), or calculate, solve, times, plus, minus,
  divided by, percent, even or odd, count from, ...;
- creative: poem, story, haiku, lyrics, slogan, essay, imagine, ...;
- reasoning: why, explain, because, step by step, deduce, compare, reverse,
  "which is larger", "how many ... left", a comparative ("taller than"), if ... then;
- factual: everything else (what, who, when, where, name, list, define...).

A mapping `{name: [regex, ...]}` replaces the rules (same first-match order); rows
that match none of its patterns are "other".

Length bins count the reference response in tokens (without the end-of-turn token):
by default 0-100, 100-300, 300-500, 500-1000, 1000-2000 and 2000+; a bin holds
lengths `lo <= n < hi`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from trainspect.errors import TrainspectError

PatternFn = Callable[[str, str], str]

DEFAULT_PATTERNS: tuple[str, ...] = ("factual", "reasoning", "creative", "coding", "math")
FALLBACK = "factual"  # the default rules' answer when nothing matches
OTHER = "other"  # a user mapping's answer when nothing matches

# (pattern, regexes), tried in this order; the first match wins.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("coding", (
        r"\b(python|javascript|typescript|java|rust|golang|c\+\+|sql|bash|html|css|regex)\b",
        r"\b(functions?|class|methods?|code|program|script|snippet|implement|compile|debug"
        r"|refactor|algorithm|api)\b",
        r"```", r"\bdef \w+\(",
    )),
    ("math", (
        r"\d\s*[-+*/x\u00d7\u00f7^%]\s*\d",
        r"\b(calculate|compute|solve|equation|integral|derivative|sum of|product of|plus"
        r"|minus|times|divided by|multiply|percent|square root|even or odd|prime number"
        r"|count from)\b",
    )),
    ("creative", (
        r"\b(poem|poems|story|stories|haiku|limerick|lyrics|song|slogan|essay|fiction"
        r"|imagine|creative|metaphor)\b",
    )),
    ("reasoning", (
        r"\b(why|explain|because|therefore|deduce|infer|step by step|logic|puzzle|compare"
        r"|reverse)\b",
        r"\bwhich is (larger|smaller|bigger|greater|better|heavier|older)\b",
        r"\bhow many\b.*\bleft\b",
        r"\b\w+er than\b",
        r"\bif\b.*\bthen\b",
    )),
)


class KeywordRules:
    """First-match keyword rules over the lower-cased prompt."""

    def __init__(self, rules: Sequence[tuple[str, Sequence[str]]], fallback: str) -> None:
        self.names = [name for name, _ in rules]
        if fallback not in self.names:
            self.names.append(fallback)
        self.fallback = fallback
        self._compiled = [(name, [re.compile(r, re.IGNORECASE | re.DOTALL) for r in regexes])
                          for name, regexes in rules]

    def __call__(self, prompt: str, response: str = "") -> str:
        for name, regexes in self._compiled:
            if any(r.search(prompt) for r in regexes):
                return name
        return self.fallback


def default_rules() -> KeywordRules:
    rules = KeywordRules(DEFAULT_RULES, FALLBACK)
    rules.names = list(DEFAULT_PATTERNS)  # the documented row order of the heatmap
    return rules


def make_classifier(patterns: None | Mapping[str, Sequence[str]] | PatternFn
                    ) -> tuple[PatternFn, list[str], bool]:
    """(classify, names known in advance, whether it overrides rows' `pattern` field)."""
    if patterns is None:
        rules = default_rules()
        return rules, list(rules.names), False
    if callable(patterns):
        return patterns, [], True
    if isinstance(patterns, Mapping):
        rules_list = []
        for name, regexes in patterns.items():
            check_pattern_name(name, "`patterns` key")
            if isinstance(regexes, str) or not isinstance(regexes, Sequence) or not all(
                    isinstance(r, str) for r in regexes):
                raise TrainspectError(f"expected `patterns[{name!r}]` to be a list of regular "
                                      f"expressions, got {regexes!r}")
            for r in regexes:
                try:
                    re.compile(r)
                except re.error as err:
                    raise TrainspectError(
                        f"`patterns[{name!r}]`: bad regular expression {r!r}: {err}") from err
            rules_list.append((name, tuple(regexes)))
        rules = KeywordRules(rules_list, OTHER)
        return rules, list(rules.names), False
    raise TrainspectError("expected `patterns` to be None, a mapping {name: [regex, ...]} or a "
                          f"callable (prompt, response) -> name, got {type(patterns).__name__}")


def check_pattern_name(name: object, what: str) -> str:
    """Pattern names become metric-name parts (`eval/<pattern>/em`): no '/' and not empty."""
    if not isinstance(name, str) or not name.strip() or "/" in name:
        raise TrainspectError(f"expected {what} to be a non-empty string without '/', "
                              f"got {name!r}")
    return name


@dataclass(frozen=True)
class LengthBins:
    """Reference-length bins: [0, e1), [e1, e2), ..., [ek, inf), labelled '0-100' ... 'ek+'."""

    edges: tuple[int, ...] = (100, 300, 500, 1000, 2000)

    def __post_init__(self) -> None:
        edges = self.edges
        if (not isinstance(edges, tuple) or not edges
                or not all(isinstance(e, int) and not isinstance(e, bool) for e in edges)
                or edges[0] <= 0 or any(b <= a for a, b in zip(edges, edges[1:]))):
            raise TrainspectError("expected `length_bins` to be increasing positive ints "
                                  f"(the upper edges, e.g. (100, 300, 500)), got {edges!r}")

    @property
    def labels(self) -> list[str]:
        lows = (0, *self.edges)
        return [f"{lo}-{hi}" for lo, hi in zip(lows, self.edges)] + [f"{self.edges[-1]}+"]

    def index(self, n_tokens: int) -> int:
        for i, edge in enumerate(self.edges):
            if n_tokens < edge:
                return i
        return len(self.edges)


def make_length_bins(length_bins: None | Sequence[int] | LengthBins) -> LengthBins:
    if length_bins is None:
        return LengthBins()
    if isinstance(length_bins, LengthBins):
        return length_bins
    if isinstance(length_bins, (str, bytes)) or not isinstance(length_bins, Sequence):
        raise TrainspectError(f"expected `length_bins` to be a sequence of ints, "
                              f"got {length_bins!r}")
    return LengthBins(tuple(length_bins))
