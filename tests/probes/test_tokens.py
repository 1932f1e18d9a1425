"""Run.observe against a float64 reference written here, through the real store.

Each test draws fresh random logits, logs them through a real run, reads the stored
metrics back and compares them with the same quantities computed in float64 from the
same (dtype-rounded) logits, pooled exactly as docs/architecture.md says: sums over the window,
then ratios.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import trainspect as ts
from tests.probes.token_reference import (
    DEVICES,
    assert_close,
    metrics,
    pooled,
    random_batch,
    reference,
    stored,
)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("vocab", [7, 1000])
def test_text_stream_matches_float64_reference(runs, device, dtype, vocab):
    logits, labels = random_batch((3, 17), vocab, dtype, device, seed=vocab)
    with ts.init(project="p") as run:
        run.observe(5, logits, labels)
    got = stored(ts.open(runs).run(run.id), "text/", 5)
    want = metrics(pooled(reference(logits, labels)))
    assert_close(got, want, rel=2e-4)
    assert got["ce_ema"] == pytest.approx(want["ce"], rel=2e-4)  # first window: EMA = CE
    assert got["empty_mask_batches"] == 0


def test_windows_pool_sums_across_batches_not_ratios(runs):
    batches = [random_batch((2, n), 50, torch.float32, "cpu", seed=n) for n in (3, 11, 5, 20)]
    with ts.init(project="p", log_every=2) as run:
        for step, (logits, labels) in enumerate(batches, start=1):
            run.observe(step, logits, labels)
    view = ts.open(runs).run(run.id)
    for window, step in ((batches[:2], 2), (batches[2:], 4)):
        want = metrics(pooled([pooled(reference(lg, lb)) for lg, lb in window]))
        assert_close(stored(view, "text/", step), want)
    assert [s for s, _ in view.series("text/acc")] == [2, 4]  # last step of each window


def bias_corrected_ema(points, span=300):
    """Hand computation in float64: Adam-style EMA of (step, ce) windows, each weighted
    by the steps it spans (the first as many as the second), divided by the weight
    gathered."""
    beta = 1 - 2 / (span + 1)
    spans = [b[0] - a[0] for a, b in zip(points, points[1:])]
    spans = spans[:1] + spans
    raw = weight = 0.0
    out = []
    for (_, ce), steps in zip(points, spans):
        decay = beta**steps
        raw = decay * raw + (1 - decay) * ce
        weight = 1 - (1 - weight) * decay
        out.append(raw / weight)
    return out


@pytest.mark.parametrize("log_every", [1, 3])
def test_ce_ema_is_bias_corrected_and_follows_the_window_ce(runs, log_every):
    batches = [random_batch((4, 8), 30, torch.float32, "cpu", seed=s) for s in range(7)]
    with ts.init(project="p", log_every=log_every) as run:
        for step, (logits, labels) in enumerate(batches, start=1):
            run.observe(step, logits, labels)
    view = ts.open(runs).run(run.id)
    ce = view.series("text/ce")
    want = bias_corrected_ema(ce)
    got = [v for _, v in view.series("text/ce_ema")]
    assert got == pytest.approx(want, rel=1e-12)
    assert got[0] == pytest.approx(ce[0][1], rel=1e-12)  # the first window is its own EMA
    # On a short run the EMA is close to the mean of the windows, not pinned to the first.
    values = [v for _, v in ce]
    assert abs(got[-1] - np.mean(values)) < 0.2 * abs(got[-1] - values[0]) + 1e-3


def test_ties_go_to_the_first_index_and_neg_inf_is_handled(runs):
    logits = torch.zeros(4, 6)
    logits[0, [1, 3]] = 5.0  # tie: argmax is 1
    labels = torch.tensor([1, 2, 0, 5])
    logits[1, 2] = -math.inf  # the label's own logit is -inf: p = 0, CE = inf
    logits[2, :3] = -math.inf
    logits[2, 4] = 2.0
    with ts.init(project="p") as run:
        run.observe(1, logits, labels)
    got = stored(ts.open(runs).run(run.id), "text/", 1)
    want = metrics(pooled(reference(logits, labels)))
    assert math.isinf(got["ce"]) and got["ce"] > 0
    del want["ce"]
    assert_close(got, want)
    assert got["acc"] == pytest.approx(1 / 4)  # only row 0's tie resolves to its label


def test_all_ignored_and_one_token_batches(runs):
    with ts.init(project="p", log_every=1) as run:
        run.observe(1, torch.randn(2, 5, 11), torch.full((2, 5), -100))
        run.observe(2, torch.randn(1, 1, 11), torch.tensor([[3]]))
    view = ts.open(runs).run(run.id)
    assert dict(view.series("text/empty_mask_batches")) == {1: 1.0, 2: 0.0}
    assert dict(view.series("text/supervised_tokens")) == {1: 0.0, 2: 1.0}
    assert 1 not in dict(view.series("text/acc"))  # no ratio from zero tokens, not a fake 0


def test_mask_instead_of_ignore_index(runs):
    logits, labels = random_batch((2, 9), 40, torch.float32, "cpu", ignore_frac=0.0, seed=3)
    mask = torch.rand(2, 9, generator=torch.Generator().manual_seed(4)) < 0.6
    with ts.init(project="p") as run:
        run.observe(1, logits, labels, mask=mask)
    want = metrics(pooled(reference(logits, torch.where(mask, labels, -100))))
    assert_close(stored(ts.open(runs).run(run.id), "text/", 1), want)


def test_shifted_causal_view_is_not_copied_and_matches(runs):
    logits, labels = random_batch((3, 12), 64, torch.bfloat16, "cpu", seed=9)
    with ts.init(project="p") as run:
        run.observe(1, logits[:, :-1], labels[:, 1:])
    want = metrics(pooled(reference(logits[:, :-1], labels[:, 1:])))
    assert_close(stored(ts.open(runs).run(run.id), "text/", 1), want, rel=2e-4)


def test_calibration_bins_are_stored_for_a_reliability_diagram(runs):
    logits, labels = random_batch((4, 25), 12, torch.float32, "cpu", seed=5)
    with ts.init(project="p") as run:
        run.observe(1, logits, labels)
    matrix = ts.open(runs).run(run.id).matrix("text/calibration")
    rows = pooled(reference(logits, labels))
    bins = torch.clamp((rows["conf"] * 10).floor().long(), max=9)
    want = [[float((bins == b).sum()), float(rows["conf"][bins == b].sum()),
             float(rows["correct"][bins == b].sum())] for b in range(10)]
    assert np.allclose(matrix["values"], want, rtol=1e-6)
    assert matrix["col_labels"] == ["count", "sum_conf", "sum_correct"]


@pytest.mark.parametrize("device", DEVICES)
def test_draft_positions_cond_acc_accept_len_and_teacher(runs, device):
    n_pos, vocab = 4, 24
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 10, n_pos, vocab, generator=g) * 2
    labels = logits.argmax(-1)  # start all correct, then break some, more at later positions
    for k in range(n_pos):
        wrong = torch.rand(3, 10, generator=g) < 0.15 * (k + 1)
        labels[..., k] = torch.where(wrong, (labels[..., k] + 1) % vocab, labels[..., k])
    labels[0, :2, 2] = -100
    teacher = logits + torch.randn(logits.shape, generator=g)
    with ts.init(project="p") as run:
        run.observe(1, logits.to(device), labels.to(device), target_logits=teacher.to(device),
                    stream="draft", group="pos")
    view = ts.open(runs).run(run.id)
    groups = reference(logits, labels, teacher, n_groups=n_pos)
    for k in range(n_pos):
        assert_close(stored(view, f"draft/pos{k}/", 1), metrics(groups[k]))
    assert_close(stored(view, "draft/", 1), metrics(pooled(groups)))
    # cond_acc and acceptance from per-token loops
    flat_y = labels.reshape(-1, n_pos)
    flat_hit = (logits.argmax(-1).reshape(-1, n_pos) == flat_y) & (flat_y != -100)
    accs = [float(groups[k]["correct"].mean()) for k in range(n_pos)]
    want_len = sum(math.prod(accs[: k + 1]) for k in range(n_pos))
    assert dict(view.series("draft/accept_len"))[1] == pytest.approx(want_len, rel=1e-9)
    lead = [0] * flat_hit.shape[0]
    for k in range(n_pos):
        base = hits = 0
        for t in range(flat_hit.shape[0]):
            prev_ok = all(flat_hit[t, :k])
            if prev_ok and flat_y[t, k] != -100:
                base += 1
                hits += bool(flat_hit[t, k])
            if all(flat_hit[t, : k + 1]):
                lead[t] += 1
        assert dict(view.series(f"draft/pos{k}/cond_acc"))[1] == pytest.approx(hits / base)
    supervised0 = int((flat_y[:, 0] != -100).sum())
    assert dict(view.series("draft/accept_len_tokens"))[1] == pytest.approx(
        sum(lead) / supervised0)


def test_audio_codebooks_per_codebook_and_pooled(runs):
    n_cb, vocab = 3, 1026
    logits, labels = random_batch((2, 7, n_cb), vocab, torch.bfloat16, "cpu", seed=21)
    with ts.init(project="p") as run:
        run.observe(1, logits, labels, stream="audio", group="cb")
    view = ts.open(runs).run(run.id)
    groups = reference(logits, labels, n_groups=n_cb)
    for k in range(n_cb):
        assert_close(stored(view, f"audio/cb{k}/", 1), metrics(groups[k]), rel=2e-4)
    assert_close(stored(view, "audio/", 1), metrics(pooled(groups)), rel=2e-4)


def test_bad_inputs_alert_once_and_never_raise(runs):
    with ts.init(project="p", log_every=1) as run:
        for step in range(3):
            run.observe(step, torch.randn(2, 5, 10), torch.zeros(2, 4, dtype=torch.long))
        run.observe(3, torch.randn(2, 5, 10), torch.tensor([[1, 2, 99, -7, -100]] * 2))
        run.observe(4, torch.randn(2, 5, 10), torch.randint(0, 10, (2, 5)).float())
        run.observe(5, "logits", torch.zeros(2))
    alerts = ts.open(runs).run(run.id).alerts()
    shape = [a for a in alerts if "does not match" in a["message"]]
    assert len(shape) == 1 and "(2, 4)" in shape[0]["message"] and "(2, 5, 10)" in shape[0][
        "message"]
    out_of_range = [a for a in alerts if a["rule"] == "labels_out_of_range"]
    assert len(out_of_range) == 1 and "4 labels" in out_of_range[0]["message"]
    assert any("integer tensor" in a["message"] for a in alerts)
    assert any("float tensor" in a["message"] for a in alerts)


def test_state_is_fixed_size_and_logits_are_not_kept(runs):
    import gc
    import weakref

    run = ts.init(project="p", log_every=1000)
    logits, labels = random_batch((2, 6), 30, torch.float32, "cpu")
    run.observe(0, logits, labels)
    probe = run.probe("tokens")
    sizes = [t.numel() for t in probe.state()]
    ref = weakref.ref(logits)
    for step in range(1, 20):
        run.observe(step, *random_batch((2, 6), 30, torch.float32, "cpu", seed=step))
    assert [t.numel() for t in probe.state()] == sizes
    del logits
    gc.collect()
    assert ref() is None  # nothing held on to the logits
    run.finish()


@pytest.mark.parametrize("cut", ["start", "end", "both"])
def test_sliced_sequences_use_one_padded_view_and_match(runs, cut):
    from trainspect.probes.token_layout import padded_rows

    logits, labels = random_batch((3, 10, 2), 33, torch.float32, "cpu", seed=13)
    teacher = torch.randn(logits.shape)
    part = {"start": slice(1, None), "end": slice(None, -1), "both": slice(2, -3)}[cut]
    view, _, _ = padded_rows(logits[:, part], teacher[:, part], 2)
    assert view.data_ptr() == logits[:, part].data_ptr()  # a view, not a copy
    with ts.init(project="p") as run:
        run.observe(1, logits[:, part], labels[:, part], target_logits=teacher[:, part],
                    stream="draft", group="pos")
    view = ts.open(runs).run(run.id)
    groups = reference(logits[:, part], labels[:, part], teacher[:, part], n_groups=2)
    for k in range(2):
        assert_close(stored(view, f"draft/pos{k}/", 1), metrics(groups[k]))


def test_logits_that_require_grad_leave_no_autograd_history(runs):
    run = ts.init(project="p", log_every=1000, samples_every=1, num_samples=1)
    weight = torch.randn(8, 30, requires_grad=True)
    for step in range(3):
        logits = torch.randn(2, 5, 8) @ weight  # part of a graph, as in training
        run.observe(step, logits, torch.randint(0, 30, (2, 5)))
    assert all(not t.requires_grad and t.grad_fn is None for t in run.probe("tokens").state())
    run.finish()


def test_expanded_logits_are_split_not_failed(runs):
    row = torch.randn(1, 1, 40)
    logits = row.expand(3, 6, 40)  # stride 0 along the leading axes
    labels = torch.randint(0, 40, (3, 6))
    with ts.init(project="p") as run:
        run.observe(1, logits, labels)
    assert "tokens" not in run._disabled
    assert_close(stored(ts.open(runs).run(run.id), "text/", 1),
                 metrics(pooled(reference(logits, labels))))
