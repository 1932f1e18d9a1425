"""Fixtures for the demo tests: the training rows and the tokenizer, built once."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def rows():
    from trainspect.demo.data import train_examples

    return train_examples()


@pytest.fixture(scope="session")
def tokenizer(rows):
    from trainspect.demo.tokenizer import build_tokenizer

    return build_tokenizer(f"{r.prompt}\n{r.response}" for r in rows)

