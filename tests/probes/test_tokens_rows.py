"""The token probe's row entry point (`observe_rows`, behind a fused linear cross-entropy),
non-finite logits and out-of-range labels, through a real run and the store, against
the float64 reference of token_reference.py.
"""

from __future__ import annotations

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
from trainspect.probes.tokens import token_probe


def chunks(n: int, sizes: list[int]) -> list[slice]:
    out, start = [], 0
    for size in sizes:
        out.append(slice(start, min(n, start + size)))
        start += size
    return out


@pytest.mark.parametrize("device", DEVICES)
def test_chunks_pool_like_one_observe_and_return_ce_and_the_gradient(runs, device):
    logits, labels = random_batch((3, 20), 500, torch.bfloat16, device, seed=5)
    rows, y = logits.reshape(-1, 500), labels.reshape(-1)
    with ts.init(project="p", log_every=1) as run:
        run.observe(1, logits, labels)  # the reference window: one whole batch
        run.log({"x": 1.0}, step=2)  # the caller advances the step, as run.observe does
        probe = token_probe(run)
        assert probe is run.probe("tokens")
        ce, grads = [], []
        for i, part in enumerate(parts := chunks(60, [25, 25, 10])):
            grad = torch.empty(rows[part].shape, dtype=torch.float32, device=device)
            stats = probe.observe_rows("text", rows[part], y[part], grad_out=grad,
                                       last_chunk=i == len(parts) - 1)
            ce.append(stats.ce)
            grads.append(grad)
    view = ts.open(runs).run(run.id)
    want = metrics(pooled(reference(logits, labels)))
    for step in (1, 2):
        assert_close(stored(view, "text/", step), want, rel=2e-4)
    assert dict(view.series("text/empty_mask_batches")) == {1: 0.0, 2: 0.0}
    x = rows.detach().cpu().double().requires_grad_(True)
    valid = y.cpu() != -100
    loss = torch.nn.functional.cross_entropy(x, y.cpu(), reduction="none")
    loss.sum().backward()
    torch.testing.assert_close(torch.cat(ce).cpu().double()[valid], loss.detach()[valid],
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(torch.cat(grads).cpu().double(), x.grad, rtol=0, atol=2e-6)


def test_a_batch_counts_as_one_call_and_is_empty_only_if_every_chunk_is(runs):
    logits, labels = random_batch((1, 12), 50, torch.float32, "cpu", seed=2)
    labels = labels.reshape(-1)
    labels[:6] = -100  # the first chunk has no supervised row
    ignored = torch.full_like(labels, -100)
    with ts.init(project="p", log_every=1) as run:
        probe = token_probe(run)
        for step, y in ((1, labels), (2, ignored)):
            run.log({"x": 1.0}, step=step)
            probe.observe_rows("text", logits[0, :6], y[:6], last_chunk=False)
            probe.observe_rows("text", logits[0, 6:], y[6:], last_chunk=True)
    view = ts.open(runs).run(run.id)
    assert dict(view.series("text/empty_mask_batches")) == {1: 0.0, 2: 1.0}
    assert dict(view.series("text/supervised_tokens"))[1] == float((labels != -100).sum())


def test_rows_of_another_layout_raise(runs):
    with ts.init(project="p") as run:
        run.observe(1, torch.randn(2, 3, 4, 30), torch.zeros(2, 3, 4, dtype=torch.long),
                    stream="draft", group="pos")
        probe = token_probe(run)
        with pytest.raises(ValueError, match="stream of their own"):
            probe.observe_rows("draft", torch.randn(5, 30), torch.zeros(5, dtype=torch.long))
        probe.observe_rows("text", torch.randn(5, 30), torch.zeros(5, dtype=torch.long))
        with pytest.raises(ValueError, match="stream of their own"):
            probe.observe_rows("text", torch.randn(5, 31), torch.zeros(5, dtype=torch.long))


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_rows_are_left_out_counted_and_alerted_once(runs, device):
    batches = [random_batch((2, 10), 60, torch.float32, "cpu", ignore_frac=0.0, seed=s)
               for s in range(3)]
    bad_rows = [[0, 7, 13], [], [4]]  # rows with a NaN, a +inf, every logit -inf
    for (logits, _), bad in zip(batches, bad_rows):
        flat = logits.view(-1, 60)
        for k, row in enumerate(bad):
            if k == 0:
                flat[row, 3] = float("nan")
            elif k == 1:
                flat[row, 9] = float("inf")
            else:
                flat[row] = float("-inf")
    with ts.init(project="p", log_every=1) as run:
        for step, (logits, labels) in enumerate(batches, start=1):
            run.observe(step, logits.to(device), labels.to(device))
    view = ts.open(runs).run(run.id)
    assert dict(view.series("text/nonfinite_rows")) == {1: 3.0, 2: 0.0, 3: 1.0}
    for step, ((logits, labels), bad) in enumerate(zip(batches, bad_rows), start=1):
        keep = torch.ones(20, dtype=torch.bool)
        keep[bad] = False
        flat_logits, flat_labels = logits.view(-1, 60)[keep], labels.view(-1)[keep]
        want = metrics(pooled(reference(flat_logits, flat_labels)))
        assert_close(stored(view, "text/", step), want)  # the finite rows' statistics
    alerts = [a for a in view.alerts() if a["rule"] == "logits_nonfinite"]
    assert len(alerts) == 1 and alerts[0]["step"] == 1 and alerts[0]["level"] == "critical"
    assert "'text'" in alerts[0]["message"] and "3 supervised rows" in alerts[0]["message"]
    assert "step 1" in alerts[0]["message"] and alerts[0]["action"]


def test_out_of_range_labels_are_counted_every_window_and_alerted_once(runs):
    with ts.init(project="p", log_every=1) as run:
        for step, bad in ((1, [10, -3]), (2, []), (3, [99])):
            labels = torch.randint(0, 10, (1, 6))
            labels[0, : len(bad)] = torch.tensor(bad, dtype=torch.long)
            run.observe(step, torch.randn(1, 6, 10), labels)
    view = ts.open(runs).run(run.id)
    assert dict(view.series("text/out_of_range_labels")) == {1: 2.0, 2: 0.0, 3: 1.0}
    alerts = [a for a in view.alerts() if a["rule"] == "labels_out_of_range"]
    assert len(alerts) == 1 and "step 1" in alerts[0]["message"]
