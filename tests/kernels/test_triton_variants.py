"""The Triton kernel's launch variants (per-block or per-slot long rows, one program per
row or a persistent grid, short rows) against the float64 reference and the torch
backend, with planted ties, NaN, +inf and all -inf rows and a teacher: whichever
variant a benchmark makes the default, every one is checked. Under Triton's CPU
interpreter (CI) and compiled on CUDA.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import HAS_CUDA, INTERPRETING, assert_matches, first_argmax, reference
from trainspect.kernels import row_stats
from trainspect.probes.tokens import TokenProbe

CONFIGS = [  # block, warps, stages, programs per multiprocessor, slots
    pytest.param((128, 2, 1, -1, False), id="block-per-row"),
    pytest.param((128, 2, 2, -1, True), id="slots-per-row"),
    pytest.param((256, 1, 1, 0, True), id="slots-persistent"),
    pytest.param((64, 4, 1, 0, False), id="block64-persistent"),
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
@pytest.mark.parametrize("short", [(1, -1, 1), (2, 0, 1), (4, -1, 1), (4, 0, 8), (4, -1, 32)],
                         ids=["1w-per-row", "2w-resident", "4w-per-row", "tile8-resident",
                              "tile32-per-tile"])
def test_short_row_launches_fold_alike(where, short, monkeypatch):
    """Audio-like codebooks (V = 1026, G = 8) under each short-row launch, one row or a
    tile of rows at a time (48 rows: 6 tiles of 8 over 3 programs, or a full tile of 32
    and a partial one; tiles with a mask and a teacher): the fused state equals the
    torch fold's."""
    from trainspect.kernels import token_stats_triton
    from trainspect.kernels.token_stats_triton import TritonConfig

    monkeypatch.setattr(token_stats_triton, "SHORT_CONFIG",
                        TritonConfig(16, short[0], 1, programs_per_sm=short[1],
                                     short_rows=short[2]))
    gen = torch.Generator().manual_seed(3)
    logits = (torch.randn(2, 3, 8, 1026, generator=gen) * 3).to(torch.bfloat16)
    labels = torch.randint(0, 1026, (2, 3, 8), generator=gen)
    labels[0, 1, 4] = -100
    labels[1, 2, 0] = logits[1, 2, 0].float().argmax()
    mask = target = None
    if short[2] > 1:  # the tiles' own code; one row at a time is tested so elsewhere
        target = (logits.float() + torch.randn(2, 3, 8, 1026, generator=gen)).bfloat16()
        mask = torch.ones(2, 3, 8, dtype=torch.bool)
        mask[1, 0, 2:5] = False

    def on(device, t):
        return None if t is None else t.to(device)

    states = []
    for backend, device in (("torch", "cpu"), ("triton", where)):
        probe = TokenProbe(backend=backend)
        probe.update("a", "cb", logits.to(device), labels.to(device), on(device, mask),
                     on(device, target))
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


TILES = [pytest.param((16, 4, 1, -1, False, 4), id="tile4-per-tile"),
         pytest.param((16, 2, 1, 0, False, 16), id="tile16-resident")]


def short_rows_batch(gen, n=11, vocab=1026):
    """bf16 rows of a short vocabulary (a main piece of 1024 and a tail) with planted
    maxima: ties inside the main piece, across main and tail (the main one first), in
    the tail only; labels ignored, out of range and masked out."""
    logits = planted(gen, n, vocab)
    top = float(logits.float().max()) + 1.0
    logits[6, [1025, 3]] = top  # main piece and tail: 3
    logits[7, [1025, 1024]] = top  # the tail only: 1024
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[2], labels[5], labels[9] = -100, vocab + 4, 1025
    mask = torch.ones(n, dtype=torch.bool)
    mask[8] = False
    return logits, labels, mask


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("config", TILES)
def test_short_tiles_match_the_reference(where, config):
    """Short rows a tile at a time (11 rows: full and partial tiles) with a teacher and a
    mask: every statistic against the float64 reference, ties as torch.argmax."""
    from trainspect.kernels.token_stats_triton import TritonConfig, row_stats_triton

    gen = torch.Generator().manual_seed(5)
    logits, labels, mask = short_rows_batch(gen)
    target = planted(gen, 11, 1026).flip(0)
    got = row_stats_triton(logits.to(where), labels.to(where), mask=mask.to(where),
                           target_logits=target.to(where), config=TritonConfig(*config))
    want = reference(logits, labels, target, mask=mask)
    assert got.argmax.cpu()[6:8].tolist() == [3, 1024]
    assert_matches(got, want, where, 5)


@pytest.mark.parametrize("where", WHERE)
def test_short_tiles_equal_one_row_at_a_time(where):
    """Non-finite rows (NaN in the tail, +inf, all -inf), -inf entries and a soft cap: a
    tile of rows gives what one row at a time gives, flags and NaN included."""
    from trainspect.kernels.token_stats_triton import TritonConfig, row_stats_triton

    gen = torch.Generator().manual_seed(9)
    logits, labels, _ = short_rows_batch(gen)
    logits = logits.float()
    logits[0, 1025] = float("nan")
    logits[1, 17] = float("inf")
    logits[3] = float("-inf")
    logits[4, ::3] = float("-inf")
    target = logits.flip(0).clone()
    for cap, finite in ((None, [False, False, False, True]), (30.0, [False, True, True, True])):
        out = {rows: row_stats_triton(logits.to(where), labels.to(where),
                                      target_logits=target.to(where), logit_softcap=cap,
                                      config=TritonConfig(16, 2, 1, -1, short_rows=rows))
               for rows in (1, 8)}
        # the soft cap takes +-inf logits to +-cap (NaN stays): rows 1 and 3 are finite
        assert out[8].finite.cpu()[[0, 1, 3, 4]].tolist() == finite
        for name in ("valid", "finite", "argmax", "teacher_argmax"):
            assert torch.equal(getattr(out[8], name).cpu(), getattr(out[1], name).cpu()), name
        for name in ("conf", "label_prob", "ce", "entropy", "kl", "alpha"):
            torch.testing.assert_close(getattr(out[8], name).cpu(),
                                       getattr(out[1], name).cpu(), rtol=1e-6, atol=1e-6,
                                       equal_nan=True, msg=lambda m, name=name: f"{name}: {m}")
