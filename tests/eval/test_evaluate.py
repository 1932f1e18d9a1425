"""evaluate(): metrics against a float64 reference, hand-checked exact match, the store."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import trainspect as ts
from tests.eval.helpers import (
    CharTokenizer,
    TableModel,
    make_table,
    rows_for_hand_check,
    successor_map,
    tid,
)
from trainspect.errors import TrainspectError
from trainspect.eval import FixedEval
from trainspect.eval.evaluate import evaluate


def reference_metrics(table: np.ndarray, encoded) -> dict[str, float]:
    """Token-pooled CE, accuracy, entropy, confidence and 10-bin ECE in float64 numpy."""
    ce, correct, entropy, conf = [], [], [], []
    for row in encoded:
        seq = list(row.prompt_ids) + list(row.target_ids)
        for j in range(len(row.prompt_ids) - 1, len(seq) - 1):
            logits = table[seq[j]].astype(np.float64)
            logp = logits - logits.max()
            logp = logp - np.log(np.exp(logp).sum())
            p = np.exp(logp)
            ce.append(-logp[seq[j + 1]])
            correct.append(float(np.argmax(logits) == seq[j + 1]))
            entropy.append(-(p * logp).sum())
            conf.append(p.max())
    ce, correct, entropy, conf = map(np.array, (ce, correct, entropy, conf))
    bins = np.minimum((conf * 10).astype(int), 9)
    ece = sum(abs(correct[bins == b].sum() - conf[bins == b].sum()) for b in range(10))
    return {"ce": ce.mean(), "acc": correct.mean(), "entropy": entropy.mean(),
            "conf": conf.mean(), "ece": ece / len(ce), "tokens": float(len(ce))}


@pytest.fixture
def model():
    return TableModel(make_table(successor_map()))


@pytest.fixture
def ev():
    return FixedEval(rows_for_hand_check(), tokenizer=CharTokenizer(), length_bins=(3, 5),
                     extra_tokens=3)


def test_ce_acc_entropy_ece_match_a_float64_reference(runs, model, ev):
    with ts.init(project="ev") as run:
        result = evaluate(run, model, ev, step=10, batch_size=2)
    ref = reference_metrics(model.table.detach().numpy(), ev.encode())
    for key, value in ref.items():
        assert result.metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
    # per-example CE: the mean over that example's target tokens
    first = ev.encode()[0]
    table = model.table.detach().double()
    seq = list(first.prompt_ids) + list(first.target_ids)
    ces = [-torch.log_softmax(table[seq[j]], 0)[seq[j + 1]].item()
           for j in range(len(first.prompt_ids) - 1, len(seq) - 1)]
    assert result.examples[0].ce == pytest.approx(sum(ces) / len(ces), rel=1e-5)


def test_greedy_exact_match_is_the_hand_computed_one(runs, model, ev):
    with ts.init(project="ev") as run:
        result = evaluate(run, model, ev, step=1, batch_size=3)
    by_id = {e.id: e for e in result.examples}
    assert {i: e.em for i, e in by_id.items()} == {
        "r1": True, "r2": True, "r3": False, "r4": False, "r5": True}
    assert result.em == pytest.approx(3 / 5)
    # r3: the model continues the alphabet; r4 never stops and is cut at 4 + 1 + 3 tokens
    assert by_id["r3"].output == "cdefghij"
    assert by_id["r4"].output == " abcdefg"
    assert by_id["r1"].output == "yz."  # the stop token is not part of the text
    assert [e.id for e in result.examples] == ["r1", "r2", "r3", "r4", "r5"]  # row order


def test_teacher_forced_exact_match_needs_every_token_right(runs, model, ev):
    with ts.init(project="ev") as run:
        result = evaluate(run, model, ev, step=1, em="teacher_forced")
    by_id = {e.id: e for e in result.examples}
    assert {i: e.em for i, e in by_id.items()} == {
        "r1": True, "r2": True, "r3": False, "r4": False, "r5": True}
    # r3 "cdx." + eos: c, d right, x wrong ('e' predicted), '.' after x wrong, eos right
    assert (by_id["r3"].tokens, by_id["r3"].correct_tokens) == (5, 3)
    # r4 " abc" + eos: four right, then 'd' predicted where eos was due
    assert (by_id["r4"].tokens, by_id["r4"].correct_tokens) == (5, 4)
    assert by_id["r4"].output == " abcd"


def test_a_model_that_never_stops_fails_where_the_reference_stops(runs):
    table = make_table({**successor_map(), tid("."): tid("a")})
    ev = FixedEval([{"prompt": "xy", "response": "z."}], tokenizer=CharTokenizer())
    with ts.init(project="ev") as run:
        result = evaluate(run, TableModel(table), ev, step=1)
    assert result.examples[0].output.startswith("z.a") and not result.examples[0].em


def test_pattern_by_length_cells_and_their_store_records(runs, model, ev):
    with ts.init(project="ev") as run:
        result = evaluate(run, model, ev, step=7)
    # ref tokens: r1 3 (3-5), r2 5 (5+), r3 4 (3-5), r4 4 (3-5), r5 2 (0-3)
    assert result.length_bins == ["0-3", "3-5", "5+"]
    assert result.patterns == ["factual", "reasoning", "creative", "coding", "math"]
    assert result.seen == [[0, 0, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0], [1, 1, 1]]
    assert result.correct == [[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0], [1, 1, 1]]
    view = ts.open().run(run.id)
    assert view.latest("eval/em") == (7, pytest.approx(0.6))
    assert view.latest("eval/math/em") == (7, 1.0)
    assert view.latest("eval/reasoning/3-5/em") == (7, 0.0)
    assert view.latest("eval/factual/em") is None  # no example: no number, not a zero
    matrix = view.matrix("eval/pattern_length")
    assert matrix["row_labels"] == result.patterns and matrix["col_labels"] == ["0-3", "3-5", "5+"]
    assert matrix["values"][4] == [1.0, 1.0, 1.0] and math.isnan(matrix["values"][0][0])
    assert view.matrix("eval/pattern_length_seen")["values"] == result.seen
    assert view.matrix("eval/pattern_length_correct")["values"] == result.correct
    calibration = np.array(view.matrix("eval/calibration")["values"])
    assert calibration.shape == (10, 3) and calibration[:, 0].sum() == result.metrics["tokens"]
    assert view.latest("eval/n") == (7, 5.0)
    assert view.meta["eval/summary"]["checkpoints"] == {}


def test_the_model_comes_back_in_its_own_mode_and_no_grad_is_used(runs, model, ev):
    model.train()
    model.inner.eval()  # a submodule the user froze in eval mode stays so
    with ts.init(project="ev") as run:
        evaluate(run, model, ev, step=1)
    assert model.training and not model.inner.training
    assert model.grad_seen and not any(model.grad_seen)
    assert model.table.grad is None


def test_progress_is_called_after_every_batch(runs, model, ev):
    calls = []
    with ts.init(project="ev") as run:
        evaluate(run, model, ev, step=1, batch_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_a_failing_progress_callback_does_not_stop_the_eval(runs, model, ev, caplog):
    def bad(done, total):
        raise RuntimeError("terminal gone")

    with ts.init(project="ev") as run:
        assert evaluate(run, model, ev, step=1, batch_size=2, progress=bad) is not None
    assert caplog.text.count("progress callback failed") == 1


def test_bad_arguments_raise_before_the_model_runs(runs, model, ev):
    with ts.init(project="ev") as run:
        for kwargs, needle in [({"step": -1}, "`step`"), ({"batch_size": 0}, "`batch_size`"),
                               ({"em": "sampled"}, "`em`"), ({"progress": 3}, "`progress`"),
                               ({"best_by": "loss"}, "`best_by`")]:
            args = {"step": 1, **kwargs}
            with pytest.raises(TrainspectError, match=needle):
                evaluate(run, model, ev, **args)
        with pytest.raises(TrainspectError, match="`ev` to be a FixedEval"):
            evaluate(run, model, [{"prompt": "a"}], step=1)
        with pytest.raises(TrainspectError, match="needs a tokenizer"):
            evaluate(run, model, FixedEval(rows_for_hand_check()), step=1)
    assert model.calls == 0


def test_the_run_tokenizer_is_used_when_the_eval_has_none(runs, model):
    with ts.init(project="ev", tokenizer=CharTokenizer()) as run:
        result = evaluate(run, model, FixedEval(rows_for_hand_check()), step=1)
    assert result.em == pytest.approx(0.6)


def test_a_vocabulary_mismatch_is_a_clear_error(runs):
    small = TableModel(make_table({})[:, :10])  # a head of 10 tokens; targets go up to 33
    with ts.init(project="ev") as run, pytest.raises(TrainspectError, match="outside the model"):
        evaluate(run, small, FixedEval(rows_for_hand_check(), tokenizer=CharTokenizer()), step=1)


def test_a_failure_inside_the_eval_is_an_alert_not_an_exception(runs, ev):
    class Broken(TableModel):
        def forward(self, input_ids, attention_mask=None):
            raise RuntimeError("CUDA out of memory (pretend)")

    model = Broken(make_table(successor_map()))
    model.train()
    with ts.init(project="ev") as run:
        assert evaluate(run, model, ev, step=3) is None
    assert model.training
    (alert,) = ts.open().run(run.id).alerts()
    assert alert["rule"] == "eval_failed" and "out of memory" in alert["message"]
    assert "batch_size" in alert["action"]


def test_greedy_accepts_any_stop_token_teacher_forcing_wants_the_exact_one(runs):
    class EndOfTurn(CharTokenizer):
        def convert_tokens_to_ids(self, token):  # '?' plays an end-of-turn marker
            return tid("?") if token == "<|im_end|>" else None

    model = TableModel(make_table({**successor_map(), tid("."): tid("?")}))
    ev = FixedEval([{"prompt": "xy", "response": "z."}], tokenizer=EndOfTurn())
    with ts.init(project="ev") as run:
        assert evaluate(run, model, ev, step=1).em == 1.0  # z . <end-of-turn>
        assert evaluate(run, model, ev, step=2, em="teacher_forced").em == 0.0  # eos was due
