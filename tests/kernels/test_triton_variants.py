"""The Triton kernel's launch variants (per-block or per-slot long rows, one program per
row or a persistent grid, short rows) against the float64 reference and the torch
backend, with planted ties, NaN, +inf and all -inf rows and a teacher: whichever
variant a benchmark makes the default, every one is checked. Under Triton's CPU
interpreter (CI) and compiled on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import HAS_CUDA, INTERPRETING, first_argmax, reference
from trainspect.kernels import row_stats
from trainspect.probes.tokens import TokenProbe

CONFIGS = [  # block, warps, stages, programs per multiprocessor, slots
    pytest.param((128, 2, 1, -1, False), id="block-per-row"),
    pytest.param((128, 2, 2, -1, True), id="slots-per-row"),
    pytest.param((256, 1, 1, 0, True), id="slots-persistent"),
    pytest.param((16, 4, 1, 0, False), id="block16-persistent"),
]
WHERE = [
    pytest.param("cpu", id="interpret",
                 marks=pytest.mark.skipif(not INTERPRETING, reason="TRITON_INTERPRET=1 child")),
    pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        INTERPRETING or not HAS_CUDA, reason="needs CUDA")]),
]
# Planted maxima per row: within one slot (3 before 5), across slots of a block, across
# blocks in the same slot (128 and 256 apart), in the ragged tail, at both ends.
PLANTS = [[5, 3, 900], [9, 130, 259], [999, 998], [0, 997], [300, 172, 44], [968, 970]]


def planted(gen, n, vocab, dtype=torch.bfloat16):
    logits = (torch.randn(n, vocab, generator=gen) * 3).to(dtype)
    top = float(logits.float().max()) + 1.0
    for row, cols in enumerate(PLANTS[:n]):
        logits[row, cols] = top
    return logits


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("config", CONFIGS)
def test_long_row_variants_match_the_reference(where, config, monkeypatch):
    from trainspect.kernels import token_stats_triton
    from trainspect.kernels.token_stats_triton import TritonConfig, row_stats_triton

    monkeypatch.setattr(token_stats_triton, "SHORT_MAX_VOCAB", 0)  # V = 1000 as long rows
    gen = torch.Generator().manual_seed(sum(config[:2]))
    n, vocab = 8, 1000
    logits = planted(gen, n, vocab)
    target = planted(gen, n, vocab).flip(0)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[6] = -100
    got = row_stats_triton(logits.to(where), labels.to(where), target_logits=target.to(where),
                           config=TritonConfig(*config))
    assert got.argmax.cpu().tolist()[:6] == [min(c) for c in PLANTS]
    assert torch.equal(got.teacher_argmax.cpu()[:6], first_argmax(target)[:6])
    want = reference(logits, labels, target)
    for name in ("conf", "label_prob", "ce", "entropy", "kl", "alpha"):
        torch.testing.assert_close(getattr(got, name).cpu().double(), want[name], rtol=1e-5,
                                   atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("config", CONFIGS)
def test_nonfinite_rows_in_every_variant(where, config, monkeypatch):
    from trainspect.kernels import token_stats_triton
    from trainspect.kernels.token_stats_triton import TritonConfig, row_stats_triton

    monkeypatch.setattr(token_stats_triton, "SHORT_MAX_VOCAB", 0)
    gen = torch.Generator().manual_seed(7)
    logits = torch.randn(5, 700, generator=gen)
    logits[0, 650] = float("nan")  # in the tail
    logits[1, 3] = float("inf")
    logits[2] = float("-inf")
    logits[3, ::2] = float("-inf")  # finite, with -inf entries in every slot
    labels = torch.tensor([1, 2, 3, 5, 6])
    got = row_stats_triton(logits.to(where), labels.to(where), config=TritonConfig(*config))
    want = row_stats(logits, labels, backend="torch")
    assert got.finite.cpu().tolist() == [False, False, False, True, True]
    assert torch.equal(got.finite.cpu(), want.finite)
    for name in ("conf", "label_prob", "ce", "entropy"):
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name), rtol=1e-5,
                                   atol=1e-5, equal_nan=True)
    assert torch.equal(got.argmax.cpu()[3:], want.argmax[3:])


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("short", [(1, -1), (2, 0), (4, -1)], ids=["1w-per-row", "2w-resident",
                                                                   "4w-per-row"])
def test_short_row_launches_fold_alike(where, short, monkeypatch):
    """Audio-like codebooks (V = 1026, G = 8) under each short-row launch: the fused state
    equals the torch fold's."""
    from trainspect.kernels import token_stats_triton
    from trainspect.kernels.token_stats_triton import TritonConfig

    monkeypatch.setattr(token_stats_triton, "SHORT_CONFIG",
                        TritonConfig(16, short[0], 1, programs_per_sm=short[1]))
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 3, 8, 1026, generator=gen) * 3).to(torch.bfloat16)
    labels = torch.randint(0, 1026, (2, 3, 8), generator=gen)
    labels[0, 1, 4] = -100
    labels[1, 2, 0] = logits[1, 2, 0].float().argmax()
    states = []
    for backend, device in (("torch", "cpu"), ("triton", where)):
        probe = TokenProbe(backend=backend)
        probe.update("a", "cb", logits.to(device), labels.to(device), None, None)
        s = probe.streams["a"]
        states.append([t.cpu() for t in (s.sums, s.calibration, s.counters, s.scratch)])
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("where", WHERE)
def test_fold_of_many_tiles_and_programs(where, monkeypatch):
    """More tokens than one tile of the fold (tiles of 16 here: 5) over several programs
    (3 here: a program takes several tiles) with a teacher: the fused state equals the
    torch fold's."""
    from trainspect.kernels import token_stats_triton

    monkeypatch.setattr(token_stats_triton, "FOLD_TILE", 16)
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(70, 40, generator=gen) * 2).to(torch.float32)
    target = logits + torch.randn(70, 40, generator=gen)
    labels = torch.randint(0, 40, (70,), generator=gen)
    labels[::7] = -100
    labels[5] = 77  # out of range
    states = []
    for backend, device in (("torch", "cpu"), ("triton", where)):
        probe = TokenProbe(backend=backend)
        probe.update("t", None, logits.to(device), labels.to(device), None, target.to(device))
        s = probe.streams["t"]
        states.append([t.cpu() for t in (s.sums, s.calibration, s.counters, s.scratch)])
    for a, b in zip(*states):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)
    assert states[1][2][2] == 1  # the one out-of-range label
