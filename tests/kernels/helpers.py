"""Shared helpers of the kernel tests: backends, random inputs, the float64 reference.

Every backend runs the same parametrised tests: the torch path on the CPU (always), the
torch and Triton paths on CUDA (marked ``gpu``, skipped without CUDA), and the Triton
kernel under Triton's CPU interpreter. Triton decides at import time whether its own
library functions are interpreted, so TRITON_INTERPRET=1 must be set before triton is
first imported: the interpreter cases run in a child pytest started with that variable
(tests/kernels/test_triton_interpreter.py); run them directly with
``TRITON_INTERPRET=1 pytest tests/kernels tests/probes -k interpret``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from trainspect.kernels import RowStats, row_stats

NEG_INF = float("-inf")
HAS_CUDA = torch.cuda.is_available()
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"  # set before triton was imported
FLOAT_FIELDS = ("conf", "label_prob", "ce", "entropy")
TEACHER_FLOAT_FIELDS = ("kl", "alpha")
# fp32 maths against float64 on the same (already rounded) input values.
RTOL, ATOL = 1e-5, 1e-5

gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")]
interpret = pytest.mark.skipif(
    not INTERPRETING, reason="runs in the TRITON_INTERPRET=1 child (test_triton_interpreter.py)")
compiled_triton = pytest.mark.skipif(INTERPRETING, reason="TRITON_INTERPRET=1 is set")
BACKENDS = [
    pytest.param(("torch", "cpu"), id="torch-cpu"),
    pytest.param(("triton", "interpret"), id="triton-interpret", marks=interpret),
    pytest.param(("torch", "cuda"), id="torch-cuda", marks=gpu),
    pytest.param(("triton", "cuda"), id="triton-cuda", marks=[*gpu, compiled_triton]),
]
# The interpreter runs numpy op by op: keep its inputs to a few rows, and its long rows
# just over the short-row limit (4096): several blocks and a ragged tail.
INTERPRET_MAX_ROWS = 4
INTERPRET_MAX_VOCAB = 4099


def n_rows(backend: tuple[str, str], n: int) -> int:
    """Fewer rows under the interpreter, so its tests stay fast."""
    return min(n, INTERPRET_MAX_ROWS) if backend == ("triton", "cpu") else n


def vocab_for(backend: tuple[str, str], v: int) -> int:
    """A shorter vocabulary under the interpreter (still a long row past 4096)."""
    return min(v, INTERPRET_MAX_VOCAB) if backend == ("triton", "cpu") else v


def random_logits(gen, n, v, dtype, scale=3.0) -> torch.Tensor:
    """(n, v) logits of spread-out magnitude, rounded to ``dtype``, on the CPU."""
    return (torch.randn(n, v, generator=gen) * scale).to(dtype)


def random_labels(gen, n, v, ignore_frac=0.2, ignore_index=-100) -> torch.Tensor:
    labels = torch.randint(0, v, (n,), generator=gen)
    ignored = torch.rand(n, generator=gen) < ignore_frac
    return torch.where(ignored, torch.full_like(labels, ignore_index), labels)


def first_argmax(x: torch.Tensor) -> torch.Tensor:
    """First index of the row maximum, through numpy (independent of torch.argmax)."""
    return torch.from_numpy(np.argmax(x.double().numpy(), axis=1)).to(torch.int64)


def reference(logits, labels, target=None, ignore_index=-100, mask=None) -> dict:
    """Float64 statistics on the same input values; zeros where not valid."""
    x = logits.detach().cpu().double()  # (N, V): the bf16/fp16 values, exactly
    labels = labels.detach().cpu().long()
    n, v = x.shape
    valid = (labels != ignore_index) & (labels >= 0) & (labels < v)
    if mask is not None:
        valid &= mask.cpu()
    logp = torch.log_softmax(x, dim=-1)
    p = logp.exp()
    label_logp = logp.gather(1, labels.clamp(0, v - 1)[:, None]).squeeze(1)
    ref = {
        "valid": valid,
        "argmax": first_argmax(x),
        "conf": p.max(dim=-1).values,
        "label_prob": label_logp.exp(),
        "ce": -label_logp,
        "entropy": -torch.where(p > 0, p * logp, 0.0).sum(-1),
        "teacher_argmax": None, "kl": None, "alpha": None,
    }
    if target is not None:
        t = target.detach().cpu().double()
        logq = torch.log_softmax(t, dim=-1)
        q = logq.exp()
        ref["teacher_argmax"] = first_argmax(t)
        ref["kl"] = torch.where(q > 0, q * (logq - logp), 0.0).sum(-1)
        ref["alpha"] = torch.minimum(p, q).sum(-1)
    for name, value in ref.items():
        if name != "valid" and value is not None:
            ref[name] = torch.where(valid, value, torch.zeros_like(value))
    return ref


def assert_matches(got: RowStats, ref: dict, device: str, seed: int, rtol=RTOL, atol=ATOL):
    """Every field of ``got`` against the float64 reference, with dtype and device checks."""
    msg = f"(seed {seed})"
    assert torch.equal(got.valid.cpu(), ref["valid"]), msg
    assert got.valid.dtype == torch.bool
    for name in ("argmax", "teacher_argmax"):
        value = getattr(got, name)
        if ref[name] is None:
            assert value is None, name
            continue
        assert value.dtype == torch.int64 and value.device.type == device, name
        assert torch.equal(value.cpu(), ref[name]), f"{name} {msg}"
    for name in FLOAT_FIELDS + TEACHER_FLOAT_FIELDS:
        value = getattr(got, name)
        if ref[name] is None:
            assert value is None, name
            continue
        assert value.dtype == torch.float32 and value.device.type == device, name
        torch.testing.assert_close(value.cpu().double(), ref[name], rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{name} {msg}: {m}")


def run(backend, logits, labels, **kwargs) -> RowStats:
    name, device = backend
    to = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    return row_stats(logits.to(device), labels.to(device), backend=name, **to)
