"""The five instruction patterns of the demo: word lists and prompt/response templates.

Every generator takes a seeded `random.Random` and returns `(prompt, response)`. The
response is a deterministic function of the prompt (a facts table, arithmetic, a
copy or reversal of prompt words, a fixed template filled with prompt words), so a
tiny model can learn it and exact match means something. Each pattern has short
kinds and one "long" kind whose size the generator draws, so lengths run from a
dozen tokens to a few hundred: the fixed eval's pattern x length buckets then
have something to show.
"""

from __future__ import annotations

import random
from collections.abc import Callable

PATTERNS: tuple[str, ...] = ("factual", "reasoning", "creative", "coding", "math")

Generator = Callable[[random.Random], tuple[str, str]]

CAPITALS: dict[str, str] = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Poland": "Warsaw", "Austria": "Vienna", "Greece": "Athens", "Ireland": "Dublin",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Japan": "Tokyo", "China": "Beijing",
    "India": "New Delhi", "Peru": "Lima", "Chile": "Santiago", "Cuba": "Havana",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Turkey": "Ankara",
}
LEGS: dict[str, int] = {
    "spider": 8, "ant": 6, "bee": 6, "dog": 4, "cat": 4, "horse": 4, "bird": 2,
    "duck": 2, "crab": 10, "snake": 0, "frog": 4, "octopus": 8,
}
COLORS_OF: dict[str, str] = {
    "the sky": "blue", "grass": "green", "snow": "white", "coal": "black",
    "a banana": "yellow", "a tomato": "red", "a carrot": "orange", "milk": "white",
    "a lemon": "yellow", "a strawberry": "red", "the sea": "blue", "a leaf": "green",
}
NAMES: tuple[str, ...] = (
    "Ada", "Ben", "Cleo", "Dan", "Eve", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai",
    "Lena", "Max", "Nora", "Otto", "Pia", "Quinn", "Rosa", "Sam", "Tara",
)
NOUNS: tuple[str, ...] = (
    "river", "lamp", "fox", "garden", "robot", "storm", "violin", "castle", "whale",
    "kettle", "forest", "comet", "train", "owl", "bridge", "candle",
)
ADJECTIVES: tuple[str, ...] = (
    "quiet", "bright", "old", "tiny", "brave", "lonely", "golden", "silver", "happy",
    "sleepy", "wild", "gentle",
)
PLACES: tuple[str, ...] = (
    "valley", "city", "desert", "harbor", "village", "mountain", "meadow", "attic",
)
WORDS: tuple[str, ...] = (
    "apple", "stone", "cloud", "pen", "door", "fish", "moon", "salt", "rope", "leaf",
    "bell", "coin", "rain", "sand", "key", "milk", "wolf", "star", "tree", "cup",
)
# (what the prompt says, the expression in the function body)
BINARY_OPS: tuple[tuple[str, str], ...] = (
    ("adds", "{a} + {b}"), ("subtracts", "{a} - {b}"), ("multiplies", "{a} * {b}"),
    ("divides", "{a} / {b}"), ("returns the larger of", "max({a}, {b})"),
    ("returns the smaller of", "min({a}, {b})"),
)
LIST_OPS: tuple[tuple[str, str], ...] = (
    ("sum", "sum(items)"), ("length", "len(items)"), ("maximum", "max(items)"),
    ("minimum", "min(items)"), ("sorted copy", "sorted(items)"), ("reverse", "items[::-1]"),
)
ARG_PAIRS: tuple[tuple[str, str], ...] = (("a", "b"), ("x", "y"), ("left", "right"), ("m", "n"))
VERBS: tuple[str, ...] = ("get", "compute", "make", "find", "calc", "combine", "merge", "load")
FIELDS: tuple[str, ...] = (
    "name", "age", "email", "score", "city", "price", "count", "title", "level",
    "color", "weight", "height", "owner", "status",
)
# The long story: the first n sentences, filled with the prompt's name and noun.
STORY: tuple[str, ...] = (
    "{name} found a {noun} by the road.",
    "The {noun} was small and very old.",
    "{name} carried the {noun} home.",
    "That night the {noun} began to glow.",
    "{name} watched it until morning.",
    "In the morning the {noun} could talk.",
    "It told {name} about a faraway land.",
    "{name} packed a bag and left with the {noun}.",
    "They walked for seven days.",
    "On the last day they saw the sea.",
    "The {noun} said thank you and flew away.",
    "{name} went home and told everyone.",
)


def _capital(rng: random.Random) -> tuple[str, str]:
    country = rng.choice(sorted(CAPITALS))
    phrasing = rng.choice((
        "What is the capital of {c}?",
        "Name the capital city of {c}.",
        "Which city is the capital of {c}?",
    ))
    return phrasing.format(c=country), f"The capital of {country} is {CAPITALS[country]}."


def _legs(rng: random.Random) -> tuple[str, str]:
    animal = rng.choice(sorted(LEGS))
    return f"How many legs does a {animal} have?", f"A {animal} has {LEGS[animal]} legs."


def _color(rng: random.Random) -> tuple[str, str]:
    thing = rng.choice(sorted(COLORS_OF))
    return f"What color is {thing}?", f"{thing[0].upper()}{thing[1:]} is {COLORS_OF[thing]}."


def _capital_list(rng: random.Random) -> tuple[str, str]:
    countries = rng.sample(sorted(CAPITALS), rng.randint(4, 20))
    prompt = "List the capitals of " + ", ".join(countries[:-1]) + f" and {countries[-1]}."
    lines = [f"- {c}: {CAPITALS[c]}" for c in countries]
    return prompt, "Here are the capitals:\n" + "\n".join(lines)


def _tallest(rng: random.Random, n: int) -> tuple[str, str]:
    names = rng.sample(NAMES, n)
    facts = [f"{a} is taller than {b}." for a, b in zip(names, names[1:])]
    prompt = " ".join(facts) + " Who is the tallest?"
    if n == 3:
        return prompt, (
            f"{names[0]} is taller than {names[1]} and {names[1]} is taller than "
            f"{names[2]}, so {names[0]} is the tallest."
        )
    steps = [f"Step {i + 1}: {fact}" for i, fact in enumerate(facts)]
    return prompt, "\n".join(steps) + f"\nSo {names[0]} is the tallest."


def _reverse(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 7))]
    return "Reverse the list: " + " ".join(words), " ".join(reversed(words))


def _apples(rng: random.Random) -> tuple[str, str]:
    giver, taker = rng.sample(NAMES, 2)
    have = rng.randint(2, 20)
    give = rng.randint(1, have)
    prompt = f"{giver} has {have} apples and gives {give} to {taker}. How many are left?"
    return prompt, f"{giver} had {have} and gave away {give}, so {have - give} are left."


def _larger(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(100), 2)
    return f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger than {min(a, b)}."


def _poem(rng: random.Random) -> tuple[str, str]:
    adj, noun, place = rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(PLACES)
    prompt = f"Write a short poem about a {adj} {noun} in the {place}."
    return prompt, (
        f"In the {place} there lives a {noun},\n"
        f"a {adj} {noun}, so {adj} and free.\n"
        f"The {place} is still, the {noun} is {adj},\n"
        "and that is all it needs to be."
    )


def _slogan(rng: random.Random) -> tuple[str, str]:
    adj, noun = rng.choice(ADJECTIVES), rng.choice(NOUNS)
    return (
        f"Write a slogan for a {adj} {noun}.",
        f"One {adj} {noun} a day keeps the boring away!",
    )


def _story(rng: random.Random) -> tuple[str, str]:
    name, noun, n = rng.choice(NAMES), rng.choice(NOUNS), rng.randint(3, len(STORY))
    prompt = f"Tell a story about {name} and the {noun} in {n} sentences."
    return prompt, " ".join(s.format(name=name, noun=noun) for s in STORY[:n])


def _function_name(rng: random.Random) -> str:
    return f"{rng.choice(VERBS)}_{rng.choice(FIELDS)}"


def _binary_function(rng: random.Random) -> tuple[str, str]:
    (desc, expr), (a, b) = rng.choice(BINARY_OPS), rng.choice(ARG_PAIRS)
    name = _function_name(rng)
    prompt = f"Write a Python function {name} that {desc} {a} and {b}."
    return prompt, f"def {name}({a}, {b}):\n    return {expr.format(a=a, b=b)}"


def _list_function(rng: random.Random) -> tuple[str, str]:
    desc, expr = rng.choice(LIST_OPS)
    name = _function_name(rng)
    prompt = f"Write a Python function {name} that returns the {desc} of a list."
    return prompt, f"def {name}(items):\n    return {expr}"


def _class(rng: random.Random) -> tuple[str, str]:
    cls = rng.choice(NOUNS).capitalize() + rng.choice(("Record", "Info", "Item", "Entry"))
    fields = rng.sample(FIELDS, rng.randint(2, 10))
    prompt = f"Write a Python class {cls} with the fields " + ", ".join(fields) + "."
    body = [f"class {cls}:", f"    def __init__(self, {', '.join(fields)}):"]
    body += [f"        self.{f} = {f}" for f in fields]
    body += ["", "    def to_dict(self):", "        return {"]
    body += [f'            "{f}": self.{f},' for f in fields]
    body += ["        }"]
    return prompt, "\n".join(body)


def _add(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"What is {a} + {b}?", f"{a} + {b} = {a + b}."


def _times(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"What is {a} times {b}?", f"{a} times {b} is {a * b}."


def _parity(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(0, 999)
    return f"Is {n} even or odd?", f"{n} is {'even' if n % 2 == 0 else 'odd'}."


def _count(rng: random.Random) -> tuple[str, str]:
    start = rng.randint(1, 60)
    stop = start + rng.randint(3, 70)
    return f"Count from {start} to {stop}.", ", ".join(str(i) for i in range(start, stop + 1))


# pattern -> (generator, weight). The long kinds (capital lists, reasoning chains,
# stories, classes, counting) carry about a quarter of each pattern's weight.
GENERATORS: dict[str, tuple[tuple[Generator, float], ...]] = {
    "factual": ((_capital, 3.0), (_legs, 1.0), (_color, 1.0), (_capital_list, 1.5)),
    "reasoning": (
        (lambda rng: _tallest(rng, 3), 1.5), (_reverse, 1.5), (_apples, 1.0), (_larger, 1.0),
        (lambda rng: _tallest(rng, rng.randint(4, len(NAMES))), 1.5),
    ),
    "creative": ((_poem, 2.0), (_slogan, 1.0), (_story, 1.5)),
    "coding": ((_binary_function, 2.0), (_list_function, 1.5), (_class, 1.5)),
    "math": ((_add, 1.5), (_times, 1.5), (_parity, 1.0), (_count, 1.5)),
}


def generate(pattern: str, rng: random.Random) -> tuple[str, str]:
    """One `(prompt, response)` of `pattern`, drawn with `rng`."""
    kinds = GENERATORS[pattern]
    (make,) = rng.choices([g for g, _ in kinds], weights=[w for _, w in kinds])
    return make(rng)
