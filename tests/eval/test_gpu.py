"""On CUDA (the Triton token-statistics kernel when installed) evaluate gives the CPU's numbers."""

from __future__ import annotations

import pytest
import torch

import trainspect as ts
from tests.eval.helpers import CharTokenizer, TableModel, make_table, successor_map
from trainspect.eval import FixedEval
from trainspect.eval.evaluate import evaluate

from .test_distributed import eval_rows

pytestmark = pytest.mark.gpu


def both(em: str, model_cpu, ev, runs) -> tuple:
    model_gpu = TableModel(model_cpu.table.detach().clone()).cuda()
    with ts.init(project="gpu") as run:
        cpu = evaluate(run, model_cpu, ev, step=1, batch_size=3, em=em)
        gpu = evaluate(run, model_gpu, ev, step=2, batch_size=3, em=em)
    return cpu, gpu


@pytest.mark.parametrize("em", ["greedy", "teacher_forced"])
def test_cuda_matches_cpu(runs, em):
    ev = FixedEval(eval_rows(), tokenizer=CharTokenizer(), length_bins=(3, 6), extra_tokens=2)
    cpu, gpu = both(em, TableModel(make_table(successor_map())), ev, runs)
    for key, value in cpu.metrics.items():
        assert gpu.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
    assert [(e.em, e.output, e.tokens, e.correct_tokens) for e in gpu.examples] == [
        (e.em, e.output, e.tokens, e.correct_tokens) for e in cpu.examples]
    assert gpu.seen == cpu.seen and gpu.correct == cpu.correct


def test_peft_llama_on_cuda_decodes_as_on_cpu(runs):
    from .test_hf import PROMPTS, build

    tok, model = build()
    ev = FixedEval([{"prompt": p, "response": r} for p, r in PROMPTS], tokenizer=tok,
                   extra_tokens=2)
    torch.cuda.reset_peak_memory_stats()  # this test's peak, not an earlier test's
    with ts.init(project="gpu") as run:
        cpu = evaluate(run, model, ev, step=1, batch_size=3)
        gpu = evaluate(run, model.cuda(), ev, step=2, batch_size=3)
    assert [e.output for e in gpu.examples] == [e.output for e in cpu.examples]
    assert gpu.metrics["ce"] == pytest.approx(cpu.metrics["ce"], rel=1e-6)
    assert torch.cuda.max_memory_allocated() < 2**30
