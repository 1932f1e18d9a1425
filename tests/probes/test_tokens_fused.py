"""The fused fold (the Triton kernel adds every row to the stream's float64 state itself)
against the torch fold, the reference, on every layout `observe` takes: text, a causal
slice, draft positions with chains, audio codebooks (short rows), masks, teachers,
non-finite rows, out-of-range labels, expanded logits, and chunks of `observe_rows`.

The Triton backend runs under Triton's interpreter in CI (tests/kernels/
test_triton_interpreter.py starts a TRITON_INTERPRET=1 child for the cases named
``interpret``) and compiled on CUDA (marked ``gpu``).
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import HAS_CUDA, INTERPRETING, compiled_triton, gpu, interpret
from trainspect.probes.tokens import TokenProbe

WHERE = [
    pytest.param("cpu", id="interpret", marks=interpret),
    pytest.param("cuda", id="cuda", marks=[*gpu, compiled_triton]),
]


def batch(shape, vocab, dtype=torch.bfloat16, seed=0, ignore=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(*shape, vocab, generator=g) * 3).to(dtype)
    labels = torch.randint(0, vocab, shape, generator=g)
    labels[torch.rand(shape, generator=g) < ignore] = -100
    easy = torch.rand(shape, generator=g) < 0.4  # some correct argmaxes, so chains grow
    return logits, torch.where(easy & (labels != -100), logits.float().argmax(-1), labels)


def folded(backend, device, calls, group=None):
    """The stream state after `calls` (each a dict of update's arguments)."""
    probe = TokenProbe(backend=backend)
    for c in calls:
        to = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in c.items()}
        probe.update("s", group, to["logits"], to["labels"], to.get("mask"),
                     to.get("target"), to.get("ignore_index", -100))
    s = probe.streams["s"]
    return [t.cpu() for t in (s.sums, s.calibration, s.counters, s.scratch)]


def assert_same_state(device, calls, group=None):
    want = folded("torch", "cpu", calls, group)
    got = folded("triton", device, calls, group)
    for name, a, b in zip(("sums", "calibration", "counters", "scratch"), got, want):
        # counts are exact; float sums differ by summation order only
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
    assert torch.equal(got[2], want[2]) and not got[3].any()


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("vocab", [7, 1026, 4099])
def test_text_stream(where, vocab):
    logits, labels = batch((2, 3), vocab, seed=vocab)
    labels[0, 1] = vocab + 4  # out of range
    logits[1, 2, 3] = float("nan")  # a non-finite row
    logits[1, 0] = float("-inf")  # and one with no finite logit
    assert_same_state(where, [dict(logits=logits, labels=labels)] * 2)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("vocab", [1026, 4099])
def test_causal_slice_mask_and_teacher(where, vocab):
    logits, labels = batch((2, 4), vocab, seed=1)
    teacher, _ = batch((2, 4), vocab, dtype=torch.float32, seed=2)
    mask = torch.rand(2, 4, generator=torch.Generator().manual_seed(3)) < 0.7
    calls = [dict(logits=logits[:, :-1], labels=labels[:, 1:], mask=mask[:, 1:],
                  target=teacher[:, :-1]),
             dict(logits=logits, labels=labels, ignore_index=5)]
    assert_same_state(where, calls)


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize(("group", "n", "vocab"), [("pos", 4, 301), ("pos", 3, 4099),
                                                   ("cb", 8, 1026)])
def test_grouped_streams_and_chains(where, group, n, vocab):
    logits, labels = batch((2, 2, n), vocab, seed=n)
    teacher, _ = batch((2, 2, n), vocab, seed=n + 1)
    logits[0, 1, 2, 5] = float("inf")
    labels[1, 0, 1] = -7
    calls = [dict(logits=logits, labels=labels, target=teacher),
             dict(logits=logits[:, 1:], labels=labels[:, 1:])]
    assert_same_state(where, calls, group=group)


@pytest.mark.parametrize("where", WHERE)
def test_expanded_and_transposed_logits(where):
    row = torch.randn(1, 1, 700)
    labels = torch.randint(0, 700, (3, 2))
    wide = torch.randn(2, 3, 700).transpose(0, 1)  # leading axes not mergeable
    calls = [dict(logits=row.expand(3, 2, 700), labels=labels),
             dict(logits=wide, labels=labels)]
    assert_same_state(where, calls)


@pytest.mark.parametrize("where", WHERE)
def test_all_ignored_batch_counts_as_empty(where):
    logits, labels = batch((2, 2), 300)
    calls = [dict(logits=logits, labels=torch.full_like(labels, -100)),
             dict(logits=logits, labels=labels)]
    assert_same_state(where, calls)
    state = folded("triton", where, calls)
    assert state[2][1] == 1  # empty_calls


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("vocab", [1000, 4099])
def test_observe_rows_chunks_fold_in_the_same_launch(where, vocab):
    logits, labels = batch((8,), vocab, dtype=torch.float32, seed=4)
    labels[:3] = -100  # the first chunk is empty, the batch is not
    logits[6, 3] = float("nan")
    states = {}
    for backend, device in (("torch", "cpu"), ("triton", where)):
        probe = TokenProbe(backend=backend)
        x, y = logits.to(device), labels.to(device)
        grad = torch.zeros_like(x)
        ce = []
        for part, last in ((slice(0, 3), False), (slice(3, 8), True)):
            stats = probe.observe_rows("t", x[part], y[part], grad_out=grad[part],
                                       logit_softcap=20.0, last_chunk=last)
            ce.append(stats.ce.cpu())
        s = probe.streams["t"]
        states[backend] = ([t.cpu() for t in (s.sums, s.calibration, s.counters, s.scratch)],
                           torch.cat(ce), grad.cpu())
    (want, ce_want, g_want), (got, ce_got, g_got) = states["torch"], states["triton"]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)
    assert want[2][0] == 1 and want[2][1] == 0  # one call, not empty
    torch.testing.assert_close(ce_got, ce_want, rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(g_got, g_want, rtol=0, atol=2e-6, equal_nan=True)


@pytest.mark.skipif(INTERPRETING or not HAS_CUDA, reason="needs CUDA")
@pytest.mark.gpu
def test_one_launch_per_observe_whatever_the_grouping():
    from torch.profiler import ProfilerActivity, profile

    logits, labels = batch((4, 16, 8), 1026)
    logits, labels = logits.cuda(), labels.cuda()
    probe = TokenProbe()
    probe.update("a", "cb", logits, labels, None, None)  # compile, allocate the state
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        probe.update("a", "cb", logits, labels, None, None)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    assert len(kernels) == 1, [e.name for e in kernels]
