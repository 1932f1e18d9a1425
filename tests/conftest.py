"""Shared fixtures: a fresh runs directory per test, and the GPU skip."""

from __future__ import annotations

import pytest


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A runs directory of the test's own, also set as $TRAINSPECT_DIR."""
    root = tmp_path / "runs"
    monkeypatch.setenv("TRAINSPECT_DIR", str(root))
    # Tests compare what runs stored; timed system samples would make that depend on how
    # long a test took. The tests of the sampler switch it on with system_metrics=.
    monkeypatch.setenv("TRAINSPECT_SYSTEM_METRICS", "off")
    return root


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
