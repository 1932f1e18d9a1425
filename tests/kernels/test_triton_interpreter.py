"""The Triton kernels on the CPU, through Triton's interpreter, in CI.

Triton decides at import time whether its own library functions are interpreted, so
the cases marked for the interpreter (the ``triton-interpret`` backend of every kernel
and probe test, and the tests marked ``interpret`` there) run in a child pytest started
with TRITON_INTERPRET=1. `triton` is in the `dev` extra (its CPU wheel does not pull a
CUDA torch), so this test fails, never skips, when it is missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kernels.helpers import INTERPRETING

REPO = Path(__file__).resolve().parents[2]
# Every file with interpreter cases; the child runs only those (-k interpret).
FILES = ["tests/kernels", "tests/probes/test_tokens_fused.py"]


@pytest.mark.skipif(INTERPRETING, reason="this process already interprets")
def test_triton_interpreter_cases_in_subprocess():
    import triton  # noqa: F401  (in the dev extra: a missing triton fails here)

    env = dict(os.environ, TRITON_INTERPRET="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
           "-W", "ignore::RuntimeWarning",  # numpy evaluates both sides of tl.where
           *FILES, "-k", "interpret and not subprocess"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout, proc.stdout[-3000:]
