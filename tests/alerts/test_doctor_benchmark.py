"""A slice of the doctor benchmark (benchmarks/doctor) in CI: the real tiny Llama + LoRA
trained on CPU, shortened to 40 steps; a healthy run raises nothing at warning or above,
and faults planted from the first step are found by their rule, with the doctor's first
finding naming the cause. The full suite and its scores: `python benchmarks/doctor/run.py`.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

import trainspect as ts
from benchmarks.doctor.faults import BY_ID
from benchmarks.doctor.score import score_run, totals
from benchmarks.doctor.trainer import tokenizer_for, train

SLICE = ("healthy_small", "labels_not_shifted", "prompt_supervised",
         "optimizer_without_adapters", "tokenizer_mismatch")


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizer_for(0)


@pytest.mark.slow
def test_a_slice_of_the_doctor_benchmark(runs, tokenizer):
    import torch

    torch.set_num_threads(1)
    rows = []
    for case_id in SLICE:
        case = BY_ID[case_id]
        setup = replace(case.setup, steps=40, eval_every=20)
        with ts.init(project="slice", name=case.id, tokenizer=tokenizer,
                     config={"warmup_steps": setup.warmup, **case.config},
                     log_every=setup.log_every) as run:
            train(run, setup, case.make(), tokenizer)
        rows.append(score_run(case, ts.open().run(run.id), setup.steps))
    by_id = {r["id"]: r for r in rows}
    assert by_id["healthy_small"]["false_alarms"] == []
    for case_id in SLICE[1:]:
        row = by_id[case_id]
        assert row["detected"], row
        assert row["lead_windows"] <= 5, row  # data faults: within 5 flush windows
        assert row["doctor_right"], (row["doctor_rule"], row["doctor_text"])
    t = totals(rows)
    assert (t["recall"], t["false_alarms"], t["doctor_right"]) == (1.0, 0, 1.0)
