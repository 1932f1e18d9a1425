"""The row-statistics core against an independent float64 reference, on every backend
(tests/kernels/helpers.py says which and how). Inputs are fresh random draws each run;
the seed is in every failure message.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.helpers import (
    FLOAT_FIELDS,
    HAS_CUDA,
    NEG_INF,
    TEACHER_FLOAT_FIELDS,
    assert_matches,
    gpu,
    interpret,
    n_rows,
    random_labels,
    random_logits,
    reference,
    run,
    vocab_for,
)
from trainspect.kernels import row_stats
from trainspect.kernels.token_stats_torch import rows_per_chunk


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [1000, 32001])
def test_matches_float64_reference(backend, gen, dtype, vocab):
    n, vocab = n_rows(backend, 24), vocab_for(backend, vocab)
    logits = random_logits(gen, n, vocab, dtype)
    labels = random_labels(gen, n, vocab)
    got = run(backend, logits, labels)
    assert_matches(got, reference(logits, labels), backend[1], gen.initial_seed())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_teacher_kl_alpha_agreement(backend, gen, dtype):
    n, vocab = n_rows(backend, 16), 1000
    logits = random_logits(gen, n, vocab, dtype)
    target = random_logits(gen, n, vocab, dtype, scale=2.0)
    target[0] = logits[0]  # identical teacher: kl 0, alpha 1, same argmax
    target[1] = logits[1] + 5.0  # shifted logits: the same distribution
    labels = random_labels(gen, n, vocab, ignore_frac=0.0)
    labels[-1] = -100
    got = run(backend, logits, labels, target_logits=target)
    ref = reference(logits, labels, target)
    assert_matches(got, ref, backend[1], gen.initial_seed())
    assert got.teacher_argmax[0] == got.argmax[0]
    assert abs(float(got.kl[0])) < 1e-5 and abs(float(got.alpha[0]) - 1) < 1e-5
    if dtype == torch.float32:  # in bf16 the shift itself rounds the logits
        assert abs(float(got.alpha[1]) - 1) < 1e-4 and abs(float(got.kl[1])) < 1e-4


def test_planted_ties_pick_first_index(backend, gen):
    n, vocab = n_rows(backend, 6), vocab_for(backend, 32001)
    logits = random_logits(gen, n, vocab, torch.bfloat16)
    top = logits.float().max().item() + 1.0
    # Ties within one block, across blocks in the same lane (a multiple of 2048 and of
    # 128 apart) and across lanes; the first occurrence is not always the smallest lane.
    plants = [[7, 7 + 2048, vocab - 50], [vocab // 3, 904, 904 + 128], [vocab - 2, vocab - 1],
              [0, 1], [511, 512], [vocab - 1, 100]]
    for row, cols in enumerate(plants[:n]):
        logits[row, cols] = top
    labels = torch.tensor([c[0] for c in plants[:n]])
    got = run(backend, logits, labels)
    assert got.argmax.cpu().tolist() == [min(c) for c in plants[:n]]
    assert_matches(got, reference(logits, labels), backend[1], gen.initial_seed())


def test_neg_inf_logits(backend, gen):
    n, vocab = n_rows(backend, 6), 1000
    logits = random_logits(gen, n, vocab, torch.float32)
    target = random_logits(gen, n, vocab, torch.float32)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    holes = torch.rand(n, vocab, generator=gen) < 0.3
    logits[holes] = NEG_INF  # some entries of every row
    target[holes & (torch.rand(n, vocab, generator=gen) < 0.5)] = NEG_INF  # teacher too
    logits[0, labels[0]] = NEG_INF  # the label's logit: ce +inf, label_prob 0
    logits[1] = NEG_INF  # all but one entry: conf 1, entropy 0
    logits[1, 3] = 1.0
    labels[1] = 3
    logits[2, : vocab - 1] = NEG_INF  # the only finite entry is the last one
    logits[2, vocab - 1] = 2.0
    labels[2] = vocab - 1
    if n > 3:
        logits[3, :500] = NEG_INF  # a whole first half, so whole blocks are -inf
    got = run(backend, logits, labels, target_logits=target)
    ref = reference(logits, labels, target)
    assert_matches(got, ref, backend[1], gen.initial_seed())
    assert float(got.ce[0]) == float("inf") and float(got.label_prob[0]) == 0.0
    assert got.argmax[1] == 3 and float(got.conf[1]) == 1.0 and float(got.entropy[1]) == 0.0
    assert got.argmax[2] == vocab - 1
    for name in FLOAT_FIELDS + TEACHER_FLOAT_FIELDS:
        assert not torch.isnan(getattr(got, name)).any(), name


def test_all_ignored_batch(backend, gen):
    logits = random_logits(gen, n_rows(backend, 8), 1000, torch.bfloat16)
    labels = torch.full((logits.shape[0],), -100)
    got = run(backend, logits, labels, target_logits=logits)
    assert not got.valid.any()
    for name in ("argmax", "teacher_argmax") + FLOAT_FIELDS + TEACHER_FLOAT_FIELDS:
        assert not getattr(got, name).any(), name


def test_one_token_and_empty_batch(backend, gen):
    logits = random_logits(gen, 1, vocab_for(backend, 32001), torch.bfloat16)
    labels = torch.tensor([17])
    got = run(backend, logits, labels)
    assert_matches(got, reference(logits, labels), backend[1], gen.initial_seed())
    empty = run(backend, logits[:0], labels[:0], target_logits=logits[:0])
    assert empty.argmax.shape == (0,) and empty.kl.shape == (0,)


def test_out_of_range_labels_are_not_valid(backend, gen):
    vocab = 1000
    labels = torch.tensor([vocab, vocab + 100, -1, -5, 2**40, 999, 0, -100], dtype=torch.int64)
    n = n_rows(backend, len(labels))
    labels = labels[:n]
    logits = random_logits(gen, n, vocab, torch.float16)
    got = run(backend, logits, labels)
    assert got.valid.cpu().tolist() == [0 <= int(x) < vocab for x in labels]
    assert_matches(got, reference(logits, labels), backend[1], gen.initial_seed())
    got32 = run(backend, logits, labels.clamp(-2**31, 2**31 - 1).to(torch.int32))
    assert torch.equal(got32.valid.cpu(), got.valid.cpu())


def test_mask_and_custom_ignore_index(backend, gen):
    n, vocab = n_rows(backend, 6), 1000
    logits = random_logits(gen, n, vocab, torch.float32)
    labels = torch.randint(0, vocab, (n,), generator=gen)
    labels[0] = 5
    mask = torch.ones(n, dtype=torch.bool)
    mask[1] = False
    got = run(backend, logits, labels, mask=mask, ignore_index=5)
    ref = reference(logits, labels, ignore_index=5, mask=mask)
    assert not got.valid[0] and not got.valid[1]
    assert_matches(got, ref, backend[1], gen.initial_seed())


def test_strided_logits_read_in_place(backend, gen):
    n, vocab = n_rows(backend, 6), 1000
    wide = random_logits(gen, n, vocab + 24, torch.bfloat16)
    labels = random_labels(gen, n, vocab, ignore_frac=0.0)
    name, device = backend
    sliced = wide.to(device)[:, :vocab]  # row stride V + 24
    transposed = wide[:, :vocab].t().contiguous().to(device).t()  # column stride N
    for logits in (sliced, transposed):
        got = row_stats(logits, labels.to(device), target_logits=logits, backend=name)
        ref = reference(logits, labels, logits)
        assert_matches(got, ref, device, gen.initial_seed())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_torch_chunking_invariance(gen, device):
    n, vocab = 40, 1000
    logits = random_logits(gen, n, vocab, torch.bfloat16).to(device)
    target = random_logits(gen, n, vocab, torch.bfloat16).to(device)
    labels = random_labels(gen, n, vocab).to(device)
    assert rows_per_chunk(vocab, True, 1) == 1  # a tiny workspace means one row a chunk
    small = row_stats(logits, labels, target_logits=target, backend="torch",
                      max_workspace_bytes=1)
    large = row_stats(logits, labels, target_logits=target, backend="torch",
                      max_workspace_bytes=2**30)
    for name in ("valid", "argmax", "teacher_argmax") + FLOAT_FIELDS + TEACHER_FLOAT_FIELDS:
        torch.testing.assert_close(getattr(small, name), getattr(large, name),
                                   rtol=1e-6, atol=1e-7)
    assert_matches(small, reference(logits, labels, target), device, gen.initial_seed())


@interpret
@pytest.mark.parametrize("config", [(16, 1, 1), (128, 4, 1), (256, 2, 3)])
def test_interpret_long_rows_of_several_block_configs(gen, config, monkeypatch):
    """Long rows (forced at V = 1000) in blocks with a ragged tail, with a teacher, a
    soft cap and the gradient, for several block configurations."""
    from trainspect.kernels import token_stats_triton
    from trainspect.kernels.token_stats_triton import TritonConfig, row_stats_triton

    monkeypatch.setattr(token_stats_triton, "SHORT_MAX_VOCAB", 0)
    n, vocab = 4, 1000
    logits = random_logits(gen, n, vocab, torch.bfloat16)
    target = random_logits(gen, n, vocab, torch.bfloat16)
    logits[0, [3, 3 + config[0], 700]] = 40.0  # ties in one lane across blocks
    labels = random_labels(gen, n, vocab)
    grad = torch.empty(n, vocab)
    got = row_stats_triton(logits, labels, target_logits=target, grad_out=grad,
                           logit_softcap=50.0, config=TritonConfig(*config))
    want = row_stats(logits, labels, target_logits=target, grad_out=(ref := torch.empty(
        n, vocab)), logit_softcap=50.0, backend="torch")
    for name in ("valid", "finite", "argmax", "teacher_argmax", "conf", "ce", "entropy", "kl",
                 "alpha", "label_prob"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-5,
                                   atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    torch.testing.assert_close(grad, ref, rtol=0, atol=2e-6)


def test_bad_arguments_raise_clear_errors():
    logits = torch.zeros(4, 10)
    labels = torch.zeros(4, dtype=torch.int64)
    with pytest.raises(ValueError, match="2-D"):
        row_stats(logits[0], labels)
    with pytest.raises(ValueError, match="labels"):
        row_stats(logits, labels[:3])
    with pytest.raises(TypeError, match="integer"):
        row_stats(logits, labels.float())
    with pytest.raises(TypeError, match="float"):
        row_stats(logits.long(), labels)
    with pytest.raises(ValueError, match="target_logits"):
        row_stats(logits, labels, target_logits=torch.zeros(4, 11))
    with pytest.raises(ValueError, match="backend"):
        row_stats(logits, labels, backend="cuda")
    with pytest.raises(ValueError, match="max_workspace_bytes"):
        row_stats(logits, labels, max_workspace_bytes=0)
    with pytest.raises(ValueError, match="mask"):
        row_stats(logits, labels, mask=torch.ones(3, dtype=torch.bool))


def test_auto_backend_on_cpu_is_torch(monkeypatch):
    from trainspect.kernels.token_stats import resolve_backend

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("name", ["torch", "triton"])
def test_no_host_sync_on_cuda(gen, name):
    n, vocab = 64, 32000
    logits = random_logits(gen, n, vocab, torch.bfloat16).cuda()
    labels = random_labels(gen, n, vocab).cuda()
    labels[0] = vocab + 3  # out of range: no device assert, no sync
    row_stats(logits, labels, target_logits=logits, backend=name)  # compile/warm up first
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = row_stats(logits, labels, target_logits=logits, backend=name,
                        max_workspace_bytes=2**20)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_matches(got, reference(logits, labels, logits), "cuda", gen.initial_seed())


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("teacher", [False, True])
def test_cuda_extra_memory_is_bounded(gen, teacher):
    n, vocab = 4096, 32000
    logits = random_logits(gen, n, vocab, torch.bfloat16).cuda()
    target = logits.flip(0) if teacher else None
    labels = random_labels(gen, n, vocab).cuda()
    logits_bytes = logits.numel() * logits.element_size()
    workspace = 8 * 2**20
    for name, bound in (("triton", 0.02 * logits_bytes), ("torch", 2.5 * workspace)):
        row_stats(logits, labels, target_logits=target, backend=name,
                  max_workspace_bytes=workspace)  # warm-up: compile outside the measure
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        row_stats(logits, labels, target_logits=target, backend=name,
                  max_workspace_bytes=workspace)
        torch.cuda.synchronize()
        extra = torch.cuda.max_memory_allocated() - base
        assert extra <= bound, f"{name}: {extra} bytes extra, bound {bound:.0f}"
