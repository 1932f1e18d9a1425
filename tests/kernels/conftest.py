"""Fixtures of the kernel tests: the backend to run on and a freshly seeded generator."""

from __future__ import annotations

import secrets

import pytest
import torch

from tests.kernels.helpers import BACKENDS


@pytest.fixture(params=BACKENDS)
def backend(request) -> tuple[str, str]:
    """(backend name, device) to run on; the interpreter runs on CPU tensors."""
    name, where = request.param
    return (name, "cpu") if where == "interpret" else (name, where)


@pytest.fixture
def gen() -> torch.Generator:
    """A CPU generator with a fresh seed; failure messages name ``gen.initial_seed()``."""
    return torch.Generator().manual_seed(secrets.randbits(31))
