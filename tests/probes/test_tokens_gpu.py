"""On the GPU: observe and log never synchronise with the host between flushes, the
extra device memory stays under 2% of the logits, and values still come out right."""

from __future__ import annotations

import pytest
import torch

import trainspect as ts

pytestmark = pytest.mark.gpu


def test_observe_and_log_are_sync_free_across_flush_windows(runs):
    run = ts.init(project="p", log_every=4, samples_every=5, num_samples=2)
    g = torch.Generator(device="cuda").manual_seed(0)
    logits = torch.randn(4, 64, 3, 5000, device="cuda", generator=g, dtype=torch.bfloat16)
    labels = torch.randint(0, 5000, (4, 64, 3), device="cuda", generator=g)
    text = torch.randn(4, 65, 32000, device="cuda", generator=g, dtype=torch.bfloat16)
    text_labels = torch.randint(-1, 32000, (4, 65), device="cuda", generator=g)
    text_labels[text_labels < 0] = -100
    input_ids = torch.randint(0, 32000, (4, 65), device="cuda", generator=g)
    loss = torch.tensor(1.5, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 14):  # three window flushes happen inside these calls
            run.observe(step, text[:, :-1], text_labels[:, 1:], input_ids=input_ids)
            run.observe(step, logits, labels, stream="draft", group="pos",
                        target_logits=logits.flip(-1))
            run.log({"loss": loss * step}, step=step)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert "tokens" not in run._disabled and run.errors == {}
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("loss") == [(s, 1.5 * s) for s in range(1, 14)]
    assert [s for s, _ in view.series("draft/accept_len")] == [4, 8, 12, 13]
    # the same batch every step: the doctor rightly says so; nothing else is raised
    assert {a["rule"] for a in view.alerts()} == {"repeated_batches:text",
                                                  "repeated_batches:draft"}
    assert view.sample_steps() == [1, 5, 10]  # the first step, then every samples_every
    rows = view.samples(step=10)
    assert {(r["stream"], r["group"]) for r in rows} == {("text", 0), ("draft", 0), ("draft", 1),
                                                         ("draft", 2)}
    assert all(len(r["positions"]) == 16 for r in rows if r["stream"] == "text")


def test_peak_extra_memory_is_under_two_percent_of_the_logits(runs):
    run = ts.init(project="p")
    logits = torch.randn(8192, 32000, device="cuda", dtype=torch.bfloat16)
    labels = torch.randint(0, 32000, (8192,), device="cuda")
    run.observe(0, logits, labels)  # warm-up: compile the kernel, allocate the state
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run.observe(1, logits, labels)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= 0.02 * logits.numel() * logits.element_size(), extra
    assert torch.cuda.memory_allocated() == base  # nothing kept after the call
    run.finish()
