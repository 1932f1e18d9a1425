"""Bad arguments skip one batch with one alert; they never switch a probe off and never
raise into the loop. Steps must be non-negative whole numbers the store can hold."""

from __future__ import annotations

import pytest
import torch

import trainspect as ts

B, T, V = 2, 5, 11


def good_batch(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, V, generator=g), torch.randint(0, V, (B, T), generator=g)


BAD_CALLS = {
    "mask as a list": lambda run, s, x, y: run.observe(s, x, y, mask=[[True] * T] * B),
    "mask of the wrong shape": lambda run, s, x, y: run.observe(
        s, x, y, mask=torch.ones(B, T + 2, dtype=torch.bool)),
    "input_ids of the wrong batch": lambda run, s, x, y: run.observe(
        s, x, y, input_ids=torch.zeros(B + 1, T, dtype=torch.long)),
    "input_ids two longer": lambda run, s, x, y: run.observe(
        s, x, y, input_ids=torch.zeros(B, T + 2, dtype=torch.long)),
    "float input_ids": lambda run, s, x, y: run.observe(s, x, y, input_ids=torch.zeros(B, T)),
    "attention_mask of the wrong shape": lambda run, s, x, y: run.observe(
        s, x, y, input_ids=torch.zeros(B, T, dtype=torch.long),
        attention_mask=torch.ones(B, T - 1, dtype=torch.long)),
    "attention_mask as a list": lambda run, s, x, y: run.observe(
        s, x, y, attention_mask=[[1] * T] * B),
    "ignore_index as text": lambda run, s, x, y: run.observe(s, x, y, ignore_index="-100"),
    "token_names as a list": lambda run, s, x, y: run.observe(s, x, y, token_names=[1, 2]),
    "step 3.7": lambda run, s, x, y: run.observe(s + 0.7, x, y),
    "step -5": lambda run, s, x, y: run.observe(-5, x, y),
    "step 2**64": lambda run, s, x, y: run.observe(2**64, x, y),
    "step as a tensor": lambda run, s, x, y: run.observe(torch.tensor(s), x, y),
}


@pytest.mark.parametrize("what", sorted(BAD_CALLS))
def test_a_bad_observe_call_skips_its_batch_with_one_alert(runs, what):
    run = ts.init(project="p", log_every=100, samples_every=1, num_samples=1)
    for step in range(1, 4):
        run.observe(step, *good_batch(step), input_ids=torch.zeros(B, T + 1, dtype=torch.long))
        BAD_CALLS[what](run, step, *good_batch(100 + step))  # raises nothing
    run.finish()
    assert "tokens" not in run._disabled and "samples" not in run._disabled, what
    assert run.errors == {} and run.rejected_values == 3
    view = ts.open(runs).run(run.id)
    alerts = view.alerts()
    assert [a["rule"] for a in alerts] == ["bad_input"], [a["message"] for a in alerts]
    assert "skipped" in alerts[0]["action"]
    # only the three good batches were counted: B * T supervised tokens each
    assert view.series("text/supervised_tokens") == [(3, 3.0 * B * T)]
    assert view.sample_steps() == [1, 2, 3]


def test_unshifted_input_ids_and_grouped_inputs_are_accepted(runs):
    run = ts.init(project="p", samples_every=1, num_samples=1)
    x, y = good_batch(0)
    run.observe(1, x, y, input_ids=torch.zeros(B, T + 1, dtype=torch.long),
                attention_mask=torch.ones(B, T + 1, dtype=torch.long))
    run.observe(1, x, y, input_ids=torch.zeros(B, T, dtype=torch.long),
                mask=torch.ones(B, T, dtype=torch.bool))
    grouped, labels = torch.randn(B, T, 3, V), torch.randint(0, V, (B, T, 3))
    run.observe(1, grouped, labels, stream="audio", group="cb",
                input_ids=torch.zeros(B, T, 3, dtype=torch.long))
    run.observe(1, x[0], y[0], stream="one", input_ids=torch.zeros(T + 1, dtype=torch.long))
    run.finish()
    assert run.rejected_values == 0 and not run._disabled
    assert ts.open(runs).run(run.id).alerts() == []


def test_steps_must_be_whole_non_negative_int64(runs):
    run = ts.init(project="p")
    for step in range(10):
        run.log({"x": float(step)}, step=step)
    run.log({"x": -1.0}, step=2**64)
    run.log({"x": -1.0}, step=-5)
    run.log({"x": -1.0}, step=3.7)
    run.log({"x": 10.0}, step=10.0)  # a whole float is a step
    run.alert("far", step=2**63)
    for step in range(11, 20):
        run.log({"x": float(step)}, step=step)
    run.finish()
    view = ts.open(runs).run(run.id)
    assert view.series("x") == [(s, float(s)) for s in range(20)]
    assert run.rejected_values == 4 and run.errors == {}
    assert [(a["step"], a["message"]) for a in view.alerts()] == [(10, "far")]
